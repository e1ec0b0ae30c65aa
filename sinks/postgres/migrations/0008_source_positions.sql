-- Change data capture (crmflow cdc → process → sink): each entity row stores the source position it came
-- from, the LSN of the legacy database's change (null for file and snapshot reads). The sink's upsert never
-- lets a change with an older LSN overwrite a row with a newer one, so a stale or replayed event changes
-- nothing. ``deleted_at`` is set by a soft delete (target.deletes: soft), and cleared when the source row
-- comes back (a newer insert of the same key).
alter table crm.accounts add column source_lsn bigint;
alter table crm.accounts add column deleted_at timestamptz;
alter table crm.contacts add column source_lsn bigint;
alter table crm.contacts add column deleted_at timestamptz;
alter table crm.sales add column source_lsn bigint;
alter table crm.sales add column deleted_at timestamptz;
alter table crm.cases add column source_lsn bigint;
alter table crm.cases add column deleted_at timestamptz;

-- What a hard delete (target.deletes: hard) leaves behind: the LSN of the last delete of each external id,
-- so a stale insert or update replayed after the delete does not bring the row back.
create table crm.deletions (
    entity      text not null check (entity in ('account', 'contact', 'sale', 'case')),
    external_id text not null,
    source_lsn  bigint not null,
    system      text,
    deleted_at  timestamptz not null default now(),
    primary key (entity, external_id)
);
