"""What the CDC e2e tests share: a fresh legacy database with its slot dropped after, and the two sides they compare
(the legacy tables through the processor's own mappers, and the target's rows)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import psycopg

from crmflow.config import MigrationConfig
from processors.exceptions import RecordRejected
from processors.mapping import build_mappers
from tests.helpers import wait_until

__all__ = ["Entity", "expected_target", "legacy_database", "target_now"]

TARGET_TABLES = {"account": "accounts", "contact": "contacts", "case": "cases", "sale": "sales"}

# entity -> (legacy table, key column, columns read as text for the expected target, target fields compared)
Entity = tuple[str, str, list[str], list[str]]


def legacy_database(pg_dsn_factory: Callable[[], str], set_env: Callable[[str, str], None], schema: Iterable[str],
                    prefix: str) -> Iterator[tuple[str, str, str]]:  # fmt: skip
    """(DSN, env var holding it, slot/publication name) of a fresh legacy database made by ``schema``; the slot is
    dropped after (once no process streams from it)."""
    dsn = pg_dsn_factory()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in schema:
            conn.execute(statement)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    env = "CRMFLOW_E2E_LEGACY_" + name.upper()
    set_env(env, dsn)
    yield dsn, env, name
    with psycopg.connect(dsn, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
        wait_until(lambda: conn.execute("select active_pid is null from pg_replication_slots where slot_name = %s",
                                        (name,)).fetchone() in (None, (True,)), 15, what="the slot released")
        conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
                     (name,))  # fmt: skip


def expected_target(cfg: MigrationConfig, legacy_dsn: str, entities: Mapping[str, Entity], *,
                    rejects: bool = False) -> dict[str, dict[str, dict[str, Any]]]:  # fmt: skip
    """The source after mapping: every legacy row read as text (as the snapshot reader does) through the
    processor's mappers. A row the mapping rejects is a dead letter, not a row, with ``rejects``; else a failure."""
    mappers = build_mappers(cfg)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    with psycopg.connect(legacy_dsn) as conn:
        for entity, (table, key, cols, fields) in entities.items():
            out[entity] = {}
            select = ", ".join(f"{c}::text" for c in cols)
            for row in conn.execute(f"select {select} from legacy.{table}").fetchall():
                raw = dict(zip(cols, row, strict=True))
                try:
                    mapped = mappers[entity](raw, {"run_id": "r", "source": table, "source_position": "p"})
                except RecordRejected as exc:
                    if rejects:
                        continue
                    raise AssertionError(f"{table} {raw[key]}: rejected by the mapping: {exc}") from exc
                out[entity][str(raw[key])] = {f: mapped.get(f) for f in fields}
    return out


def target_now(dsn: str, entities: Mapping[str, Entity]) -> dict[str, dict[str, dict[str, Any]]]:
    """The target's rows of each entity, by external id: the fields ``entities`` compares."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        for entity, (_, _, _, fields) in entities.items():
            rows = conn.execute(
                f"select external_id, {', '.join(fields)} from crm.{TARGET_TABLES[entity]}").fetchall()
            out[entity] = {r[0]: dict(zip(fields, r[1:], strict=True)) for r in rows}
    return out
