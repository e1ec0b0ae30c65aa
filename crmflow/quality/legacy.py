"""The target against the legacy database it is kept in step with (`crmflow parallel-run`): every legacy row read
again through the source's reader and mapped with the processor's own code, compared with the target's rows."""

from __future__ import annotations

from typing import Any

from crmflow.config import MigrationConfig
from crmflow.connections import PostgresConnection
from crmflow.entities import business_fields, id_field
from crmflow.quality.expected import Recomputer, expected_records, scoped_specs
from crmflow.quality.target import normalise
from sinks.postgres.migrate import check_schema
from sinks.postgres.tables import TABLES

__all__ = ["compare_with_legacy"]


def compare_with_legacy(
    cfg: MigrationConfig, dsn: PostgresConnection, schema: str, *, listed: int = 5
) -> dict[str, Any]:
    """The target against every legacy row recomputed through the processor's mapping, field by field.

    Not differences: a row whose source's current version fails a rule (the change was dead-lettered; the target
    keeps the last good version: ``stale``), and a child whose account is not in the target (an orphan, dead-lettered
    by the sink). Differences: ``missing`` (a mapped row not in the target), ``extra`` (a target row whose source
    row is gone) and ``wrong`` (a field differs). Values are never listed, only entity, id and field.
    """
    class AnyRun(Recomputer):
        """Every source row in full (no run's scope), mapped with a run id as the contract requires one."""

        def map(self, entity: str, source: str, rec: Any, run_id: str | None) -> Any:
            return super().map(entity, source, rec, run_id or "parallel-run")

    schema = check_schema(schema)
    mapped: dict[str, dict[str, dict[str, Any]]] = {e: {} for e in cfg.entities}
    rejected: dict[str, set[str]] = {e: set() for e in cfg.entities}
    for e in expected_records(cfg, AnyRun(cfg), scoped_specs(cfg, None)):
        if e.outcome == "mapped" and e.record is not None:
            mapped[e.entity][str(e.record[id_field(e.entity)])] = e.record
        else:
            rejected.setdefault(e.entity, set()).add(e.key)
    out: dict[str, Any] = {"compared": 0, "missing": 0, "extra": 0, "wrong": 0, "stale": 0, "orphans": 0,
                           "differences": []}  # fmt: skip
    with dsn.connect() as conn:
        accounts = {str(r[0]) for r in conn.execute(f"select external_id from {schema}.accounts "
                                                    "where deleted_at is null").fetchall()}  # fmt: skip
        for entity, expected in mapped.items():
            table = TABLES[entity]
            fields = [f for f in business_fields(entity) if f != id_field(entity)] + ["quality_flags"]
            cur = conn.cursor()
            cur.execute(f"select external_id, {', '.join(fields)} from {schema}.{table.table} "
                        "where deleted_at is null")  # fmt: skip
            rows = {str(r[0]): dict(zip(fields, r[1:], strict=True)) for r in cur.fetchall()}

            def differ(kind: str, ident: str, field: str | None = None, entity: str = entity) -> None:
                out[kind] += 1
                if len(out["differences"]) < listed:
                    out["differences"].append({"kind": kind, "entity": entity, "id": ident, "field": field})

            for ident, record in expected.items():
                if table.parent_field and str(record.get(table.parent_field)) not in accounts:
                    out["orphans"] += 1
                    continue
                row = rows.pop(ident, None)
                if row is None:
                    differ("missing", ident)
                    continue
                out["compared"] += 1
                bad = [f for f in fields if normalise(record.get(f)) != normalise(row[f])]
                if bad:
                    differ("wrong", ident, bad[0])
            for ident in rows:
                if ident in rejected.get(entity, ()):
                    out["stale"] += 1
                else:
                    differ("extra", ident)
    return out
