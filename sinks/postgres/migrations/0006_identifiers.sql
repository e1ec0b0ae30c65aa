-- Optional identifiers a CRM carries (issue 13): the matcher can compare and block on them. National and
-- tax ids are personal data: the processor masks them by default outside the production profile.
alter table crm.accounts add column national_id text;
alter table crm.accounts add column tax_id text;
alter table crm.accounts add column legacy_account_number text;
alter table crm.accounts add column company_registration_number text;
alter table crm.contacts add column national_id text;
alter table crm.contacts add column tax_id text;
