"""``crmflow rollback``: remove what one run wrote to the target, and only that, in one transaction.

What a run changed is in the target itself: ``crm.row_versions`` (migration 0007) holds, per entity row the
run inserted or changed, the row as it was before (null: inserted), recorded by the sink's upsert in the
same transaction as the change; ``crm.deliveries`` says which cross-references the run created. Rolling back:

1. entity rows, children first: a row the run inserted is deleted; a row an earlier run delivered goes back
   to that run's values (every column but the CRM's own id);
2. the cross-references the run created are deleted;
3. the run's parked children, its golden-merge log entries, its deliveries, audit rows and row versions are
   deleted; its run id is taken off the dead-letter ledger (a letter only this run wrote goes).

A run that a later run changed the same rows after cannot be rolled back alone (the later one first).
Not undone: a golden merge itself (the absorbed cluster's row stays merged; its log entry goes), and a
cross-reference an earlier run created that this run re-pointed (dedupe only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from crmflow.exceptions import CrmflowError
from sinks.postgres.migrate import check_schema, in_schema
from sinks.postgres.tables import TABLES

ORDER = ("contact", "sale", "case", "account")  # children before their accounts (foreign keys)


class RollbackError(CrmflowError):
    """A run that cannot be rolled back (unknown, or changed again by a later run)."""


@dataclass
class EntityRollback:
    deleted: int = 0
    restored: int = 0
    xref_deleted: int = 0
    parked_deleted: int = 0

    def to_json(self) -> dict[str, int]:
        return {"deleted": self.deleted, "restored": self.restored, "xref_deleted": self.xref_deleted,
                "parked_deleted": self.parked_deleted}


@dataclass
class RollbackSummary:
    run_id: str
    dry_run: bool
    entities: dict[str, EntityRollback] = field(default_factory=dict)
    golden_merges: int = 0
    deliveries: int = 0
    audit_rows: int = 0
    dead_letters: int = 0

    @property
    def empty(self) -> bool:
        return not self.deliveries and not any(
            e.deleted or e.restored or e.xref_deleted or e.parked_deleted for e in self.entities.values())

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "dry_run": self.dry_run,
                "entities": {e: c.to_json() for e, c in self.entities.items()}, "golden_merges": self.golden_merges,
                "deliveries": self.deliveries, "audit_rows": self.audit_rows, "dead_letters": self.dead_letters}


class Rollback:
    """The rollback of ``run_id`` in ``schema``, on a connection the caller owns."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, run_id: str) -> None:
        self.conn = conn
        self.schema = check_schema(schema)
        self.run_id = run_id

    def _q(self, sql: str) -> bytes:
        return in_schema(sql, self.schema).encode()

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        row = self.conn.execute(self._q(sql), params or (self.run_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _columns(self, table: str) -> list[str]:
        rows = self.conn.execute(
            "select column_name from information_schema.columns where table_schema = %s and table_name = %s "
            "and column_name <> 'id' order by ordinal_position", (self.schema, table)).fetchall()  # fmt: skip
        return [str(r[0]) for r in rows]

    def check(self) -> None:
        known = self._one("select count(*) from crm.deliveries where run_id = %s")
        versions = self._one("select count(*) from crm.row_versions where run_id = %s")
        if not known and not versions:
            raise RollbackError(f"the target holds nothing delivered by run {self.run_id!r} (see `crmflow runs`)")
        later = self.conn.execute(self._q(
            "select b.run_id from crm.row_versions a join crm.row_versions b on b.entity = a.entity "
            "and b.external_id = a.external_id and b.run_id <> a.run_id and b.recorded_at > a.recorded_at "
            "where a.run_id = %s limit 1"), (self.run_id,)).fetchone()  # fmt: skip
        if later:
            raise RollbackError(f"run {later[0]} changed rows of run {self.run_id} after it: roll back "
                                f"{later[0]} first")  # fmt: skip

    def run(self, *, dry_run: bool) -> RollbackSummary:
        """Count (``dry_run``) or do the rollback, in one transaction."""
        self.check()
        summary = RollbackSummary(self.run_id, dry_run)
        with self.conn.transaction():
            for entity in ORDER:
                summary.entities[entity] = self._entity(entity, dry_run)
            if dry_run:
                summary.golden_merges = self._one("select count(*) from crm.golden_merges where run_id = %s")
                summary.deliveries = self._one("select count(*) from crm.deliveries where run_id = %s")
                summary.audit_rows = self._one("select count(*) from crm.migration_audit where run_id = %s")
                summary.dead_letters = self._one("select count(*) from crm.dead_letters where %s = any(run_ids)")
                return summary
            summary.golden_merges = self._count("delete from crm.golden_merges where run_id = %s")
            summary.deliveries = self._count("delete from crm.deliveries where run_id = %s")
            summary.audit_rows = self._count("delete from crm.migration_audit where run_id = %s")
            summary.dead_letters = self._count(
                "update crm.dead_letters set run_ids = array_remove(run_ids, %s) where %s = any(run_ids)",
                (self.run_id, self.run_id))
            self._count("delete from crm.dead_letters where run_ids = '{}'", ())
            self._count("delete from crm.row_versions where run_id = %s")
        return summary

    def _count(self, sql: str, params: tuple[Any, ...] | None = None) -> int:
        cur = self.conn.execute(self._q(sql), (self.run_id,) if params is None else params)
        return cur.rowcount

    def _entity(self, entity: str, dry_run: bool) -> EntityRollback:
        table = TABLES[entity].table
        out = EntityRollback()
        versions = "crm.row_versions v where v.run_id = %s and v.entity = '" + entity + "'"
        new_xref = (f"crm.deliveries d where d.run_id = %s and d.entity = '{entity}' and d.outcome = 'inserted'")
        parked = f"crm.parked p where p.run_id = %s and p.entity = '{entity}'" if TABLES[entity].is_child else None
        if dry_run:
            out.deleted = self._one(f"select count(*) from {versions} and v.previous is null")
            out.restored = self._one(f"select count(*) from {versions} and v.previous is not null")
            out.xref_deleted = self._one(
                f"select count(*) from {new_xref} and exists (select 1 from crm.xref x where x.entity = d.entity "
                "and x.source = d.source and x.source_id = d.source_id)")
            out.parked_deleted = self._one(f"select count(*) from {parked}") if parked else 0
            return out
        if parked:
            out.parked_deleted = self._count(f"delete from crm.parked where id in (select p.id from {parked})")
        out.xref_deleted = self._count(
            f"delete from crm.xref x using {new_xref} and x.entity = d.entity and x.source = d.source "
            "and x.source_id = d.source_id")
        out.deleted = self._count(
            f"delete from crm.{table} t using {versions} and v.previous is null and t.external_id = v.external_id")
        cols = self._columns(table)
        sets = ", ".join(cols)
        values = ", ".join(f"r.{c}" for c in cols)
        out.restored = self._count(
            f"update crm.{table} t set ({sets}) = ({values}) from crm.row_versions v "
            f"cross join lateral jsonb_populate_record(null::crm.{table}, v.previous) r "
            f"where v.run_id = %s and v.entity = '{entity}' and v.previous is not null "
            "and t.external_id = v.external_id")
        return out
