-- What each run delivered: one row per (run, source record), whatever the delivery did to the target.
-- A re-delivery within the run (after a crash) adds nothing; a re-run of unchanged data adds its rows as
-- 'unchanged' and leaves the target rows and their cross-references untouched. `crmflow migrate`
-- reconciles a run against these rows, so a row's run_id can keep meaning "the run that last changed it".
create table crm.deliveries (
    run_id       text not null,
    entity       text not null check (entity in ('account', 'contact', 'sale', 'case')),
    source       text not null,
    source_id    text not null,
    outcome      text not null check (outcome in ('inserted', 'updated', 'unchanged')),
    delivered_at timestamptz not null default now(),
    primary key (run_id, entity, source, source_id)
);
