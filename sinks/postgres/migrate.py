"""Versioned SQL migrations of the target CRM schema.

Files ``migrations/NNNN_<name>.sql`` are applied in version order, each once, recorded in
``crm.schema_migrations`` with a checksum. Applying is idempotent and safe to run from several sink
processes at once (a transaction-level advisory lock serialises them); an already applied file that has
changed since is an error, because the database no longer matches the code that would use it. Each
migration runs in its own transaction (PostgreSQL DDL is transactional), so a failing one leaves the
schema at the previous version.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from sinks.exceptions import MigrationError

logger = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# pg_advisory_xact_lock key: any constant the rest of the database does not use.
_LOCK_KEY = 0x63726D666C6F77  # "crmflow"

_BOOTSTRAP = """
create schema if not exists crm;
create table if not exists crm.schema_migrations (
    version    integer primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files of ``directory`` (default: the package's ``migrations/``), by version."""
    root = resources.files("sinks.postgres") / "migrations" if directory is None else directory
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migration files have version {version:04d} in {root}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no NNNN_<name>.sql migration files in {root}")
    return [found[v] for v in sorted(found)]


def apply_migrations(
    conninfo: str | psycopg.Connection[TupleRow], migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply the migrations not yet recorded; return those applied now (empty when up to date)."""
    todo = load_migrations() if migrations is None else migrations
    if isinstance(conninfo, str):
        with psycopg.connect(conninfo) as conn:
            return _apply(conn, todo)
    return _apply(conninfo, todo)


def _apply(conn: psycopg.Connection[TupleRow], migrations: list[Migration]) -> list[Migration]:
    applied_now: list[Migration] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_BOOTSTRAP)
        rows = conn.execute("select version, name, checksum from crm.schema_migrations").fetchall()
    done: dict[int, tuple[str, str]] = {int(v): (n, c) for v, n, c in rows}
    for m in migrations:
        recorded = done.get(m.version)
        if recorded is not None:
            if recorded[1] != m.checksum:
                raise MigrationError(
                    f"migration {m.version:04d}_{recorded[0]} was applied with different contents than the "
                    f"file {m.version:04d}_{m.name}.sql has now; add a new migration instead of editing it"
                )
            continue
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            # Another process may have applied it while we waited for the lock.
            if conn.execute("select 1 from crm.schema_migrations where version = %s", (m.version,)).fetchone():
                continue
            try:
                conn.execute(m.sql.encode())
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name}.sql failed ({type(exc).__name__}, SQLSTATE "
                    f"{exc.sqlstate}): {exc.diag.message_primary}"
                ) from exc
            conn.execute(
                "insert into crm.schema_migrations (version, name, checksum) values (%s, %s, %s)",
                (m.version, m.name, m.checksum),
            )
        logger.info("applied migration %04d_%s", m.version, m.name, extra={"stage": "sink"})
        applied_now.append(m)
    return applied_now
