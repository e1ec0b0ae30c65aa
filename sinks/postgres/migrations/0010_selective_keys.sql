-- Keys that lead with the column that tells entries apart. Every record the sink writes probes and inserts
-- an entry in each of these keys, and a btree compares keys column by column: with the entity, the source or
-- the run first (the same few values in every entry), each comparison walked three or four equal text
-- columns before reaching the one that differs. With the id first it stops at the first column. Measured
-- on 200,000 inserts of one run's deliveries, with on conflict do nothing: 5.9 µs an entry with the run
-- first, 3.7 µs with the source id first.
--
-- crm.xref: the key serves both lookups, by (entity, source, source_id) and by (entity, source_id) in
-- source order (a child's parent account, the first source of its id), so the second index goes.
alter table crm.xref drop constraint xref_pkey;
drop index crm.xref_entity_source_id_idx;
alter table crm.xref add primary key (source_id, entity, source);
drop index crm.xref_target_idx;
create index xref_target_idx on crm.xref (target_id, entity);

-- crm.deliveries and crm.row_versions are read by run (reports, rollback): a BRIN index on the run id
-- finds a run's rows, which are appended together, for a fraction of a btree's cost per insert.
alter table crm.deliveries drop constraint deliveries_pkey;
alter table crm.deliveries add primary key (source_id, entity, source, run_id);
create index deliveries_run_idx on crm.deliveries using brin (run_id) with (autosummarize = on);

alter table crm.row_versions drop constraint row_versions_pkey;
alter table crm.row_versions add primary key (external_id, entity, run_id);
create index row_versions_run_idx on crm.row_versions using brin (run_id) with (autosummarize = on);

alter table crm.deletions drop constraint deletions_pkey;
alter table crm.deletions add primary key (external_id, entity);
