-- Separate source systems in one schema. `system` is the system that owns a row: the run name of the
-- config that first wrote it (the source it came from is in `source`). A write of the same external id
-- from another system is refused by the sink (dead letter rule owned_by_other_source) and the row stays
-- as it is; a child is never attached to an account of another system. Null: written before owners were
-- recorded; the next write that changes the row claims it.
alter table crm.accounts add column system text;
alter table crm.contacts add column system text;
alter table crm.sales add column system text;
alter table crm.cases add column system text;
alter table crm.xref add column system text;
alter table crm.parked add column system text;
alter table crm.golden_merges add column system text;
