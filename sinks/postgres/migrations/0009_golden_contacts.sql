-- Golden contacts (dedupe.contacts): with contacts deduplicated in the stream, crm.contacts holds one row per
-- golden contact (external_id = contact_golden_id = the golden contact id, the smallest contact id of its
-- cluster), attached to the golden record's parent account, and crm.xref maps every source contact to it
-- (golden_id = the golden contact id, with its evidence). golden_id of the row stays the parent account's
-- golden id. Null when contacts are not deduplicated: one row per source contact, as before.
alter table crm.contacts add column contact_golden_id text;

-- The merge log holds absorbed golden contacts too: it names the entity of each absorbed golden id (account
-- and contact golden ids are ids of different sources, which may look alike).
alter table crm.golden_merges add column entity text not null default 'account';
alter table crm.golden_merges add constraint golden_merges_entity_check check (entity in ('account', 'contact'));
alter table crm.golden_merges drop constraint golden_merges_pkey;
alter table crm.golden_merges add primary key (entity, absorbed_golden_id);
