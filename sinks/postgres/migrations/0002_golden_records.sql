-- Golden records (deduplication): crm.accounts holds one row per golden id (external_id = golden id),
-- and crm.xref maps every source record of a cluster to it.

-- Why a source record joined its golden record: the deduplication decisions it caused (rule, score,
-- matched record id, golden id, decision, veto), as the processor emitted them; no personal data.
alter table crm.xref add column evidence jsonb;

-- Children find their account by the parent's source id (contact.customer_id -> account xref), and
-- parked children are released when an xref row for their parent exists. source comes last so that
-- "the first source of that id" (order by source limit 1) is read straight off this index: with it
-- the planner never walks the primary key (entity, source, source_id) in source order instead.
create index xref_entity_source_id_idx on crm.xref (entity, source_id, source);

-- One row per absorbed golden id: the cluster whose golden record was merged into another one. Its
-- account row is gone; its children and xref rows were re-pointed to the survivor's row.
-- survivor_golden_id is the golden id the bridging record carried (follow the chain of absorbed ids to
-- find today's row); record_id is the source record whose arrival bridged the two clusters.
create table crm.golden_merges (
    absorbed_golden_id text primary key,
    survivor_golden_id text not null,
    record_id          text,
    run_id             text,
    evidence           jsonb,
    merged_at          timestamptz not null default now()
);
create index golden_merges_survivor_idx on crm.golden_merges (survivor_golden_id);
