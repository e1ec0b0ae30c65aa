"""Versioned SQL migrations of the target CRM schema.

Files ``migrations/NNNN_<name>.sql`` are applied in version order, each once, recorded in
``<schema>.schema_migrations`` with a checksum. The files are written for the schema ``crm``; applied to
another schema (``target.schema``), every ``crm.`` qualifier and the ``create schema`` line name that
schema instead, and the checksum stays the file's, so each schema tracks its own migrations. Applying is
idempotent and safe to run from several sink processes at once (a transaction-level advisory lock
serialises them); an already applied file that has changed since is an error, because the database no
longer matches the code that would use it. Each migration runs in its own transaction (PostgreSQL DDL is
transactional), so a failing one leaves the schema at the previous version.
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

from crmflow.connections import PostgresConnection, as_postgres
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

#: The schema the migration files (and the SQL of :mod:`sinks.postgres.tables`) are written for.
TEMPLATE_SCHEMA = "crm"
# A schema name crmflow accepts (as ``target.schema`` does): lower case, no quoting needed.
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_QUALIFIED = re.compile(r"\bcrm\.")
_CREATE = re.compile(r"(create schema if not exists )crm\b")


def check_schema(schema: str) -> str:
    """``schema`` when it is a plain lower-case identifier (safe to splice into SQL), else MigrationError."""
    if not isinstance(schema, str) or not _SCHEMA.match(schema):
        raise MigrationError(
            f"target schema {schema!r}: use lower-case letters, digits and '_' (at most 63, not starting "
            "with a digit)"
        )
    return schema


def in_schema(sql: str, schema: str) -> str:
    """``sql`` written for the schema ``crm`` with every ``crm.`` qualifier naming ``schema`` instead."""
    check_schema(schema)
    if schema == TEMPLATE_SCHEMA:
        return sql
    return _QUALIFIED.sub(f"{schema}.", _CREATE.sub(rf"\g<1>{schema}", sql))


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
    conninfo: PostgresConnection | str | psycopg.Connection[TupleRow],
    migrations: list[Migration] | None = None,
    *,
    schema: str = TEMPLATE_SCHEMA,
) -> list[Migration]:
    """Apply the migrations not yet recorded in ``schema``; return those applied now (empty when up to
    date)."""
    check_schema(schema)
    todo = load_migrations() if migrations is None else migrations
    if isinstance(conninfo, PostgresConnection | str):
        with as_postgres(conninfo).connect() as conn:
            return _apply(conn, todo, schema)
    return _apply(conninfo, todo, schema)


def _apply(conn: psycopg.Connection[TupleRow], migrations: list[Migration], schema: str) -> list[Migration]:
    applied_now: list[Migration] = []
    table = f"{schema}.schema_migrations"
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(in_schema(_BOOTSTRAP, schema).encode())
        rows = conn.execute(f"select version, name, checksum from {table}".encode()).fetchall()
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
            if conn.execute(f"select 1 from {table} where version = %s".encode(), (m.version,)).fetchone():
                continue
            try:
                conn.execute(in_schema(m.sql, schema).encode())
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name}.sql failed in schema {schema} ({type(exc).__name__}, "
                    f"SQLSTATE {exc.sqlstate}): {exc.diag.message_primary}"
                ) from exc
            conn.execute(
                f"insert into {table} (version, name, checksum) values (%s, %s, %s)".encode(),
                (m.version, m.name, m.checksum),
            )
        logger.info("applied migration %04d_%s to schema %s", m.version, m.name, schema, extra={"stage": "sink"})
        applied_now.append(m)
    return applied_now
