-- What each run's delivery replaced (crmflow rollback): one row per (run, entity table row) the run changed,
-- holding the row as it was before the run's FIRST change of it (null: the run inserted the row). Written by
-- the sink's upsert statement in the same transaction as the change, so a committed change always has its
-- previous version. Rolling a run back restores these versions (or deletes the rows it inserted). Holds
-- the target's values as they were, so the same personal data as the entity tables themselves.
create table crm.row_versions (
    run_id      text not null,
    entity      text not null check (entity in ('account', 'contact', 'sale', 'case')),
    external_id text not null,
    previous    jsonb,
    recorded_at timestamptz not null default now(),
    primary key (run_id, entity, external_id)
);
