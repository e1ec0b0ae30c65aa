"""Least-privilege PostgreSQL roles: what the snapshot/CDC role and the sink role may do, as SQL.

- ``crmflow_capture`` (LOGIN REPLICATION) connects to the legacy database only, reads its tables (SELECT,
  also on tables created later by the admin) and streams changes. It owns the CDC publication, because
  ``crmflow cdc`` records its progress in the publication's comment (only an owner may COMMENT), but the
  publication is created by the tables' owner: adding a table to a publication needs ownership of the
  table, which the capture role must not have. Owning a publication needs CREATE on the database.
- ``crmflow_sink`` connects to the target database only and owns the target schema (the migrations of
  ``sinks/postgres/migrate.py`` run as it: ``create schema if not exists`` needs CREATE on the database;
  the sink stages each batch in a temporary table: TEMPORARY).
- The admin (the cluster's superuser in the local stack) creates databases, roles and the publication.

CONNECT is revoked from PUBLIC on both databases, so every other role is refused at connection time.
The same statements are the README's "Least-privilege roles" section for a user's own cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

CAPTURE_ROLE = "crmflow_capture"
SINK_ROLE = "crmflow_sink"
LEGACY_SCHEMAS = ("legacy", "public")  # the demo legacy database keeps its tables in ``legacy``
TARGET_SCHEMA = "crm"


def _id(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def role_sql(role: str, password: str, *, replication: bool) -> list[sql.Composed]:
    """Create ``role`` if missing and (re)set its password; run on any database as the admin."""
    attrs = sql.SQL("LOGIN REPLICATION" if replication else "LOGIN NOREPLICATION")
    create = sql.SQL("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN "
                     "CREATE ROLE {role}; END IF; END $$").format(name=sql.Literal(role), role=_id(role))
    alter = sql.SQL("ALTER ROLE {role} {attrs} NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {pw}").format(
        role=_id(role), attrs=attrs, pw=sql.Literal(password))
    return [create, alter]


def database_sql(database: str, role: str) -> list[sql.Composed]:
    """Only ``role`` (and superusers) may connect to ``database``; ``role`` may create schemas and
    publications in it, and temporary tables (the sink stages each batch in one)."""
    return [
        sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC").format(db=_id(database)),
        sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {db} TO {role}").format(db=_id(database), role=_id(role)),
    ]


def legacy_sql(admin: str, schemas: Iterable[str] = LEGACY_SCHEMAS,
               capture: str = CAPTURE_ROLE) -> list[sql.Composed]:
    """In the legacy database: SELECT on every table of ``schemas``, now and on those ``admin`` creates later."""
    out: list[sql.Composed] = []
    for schema in schemas:
        s, c = _id(schema), _id(capture)
        out += [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=s),
            sql.SQL("REVOKE CREATE ON SCHEMA {s} FROM PUBLIC").format(s=s),
            sql.SQL("GRANT USAGE ON SCHEMA {s} TO {c}").format(s=s, c=c),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {c}").format(s=s, c=c),
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {a} IN SCHEMA {s} GRANT SELECT ON TABLES TO {c}").format(
                a=_id(admin), s=s, c=c),
        ]
    return out


def target_sql(schema: str = TARGET_SCHEMA, sink: str = SINK_ROLE) -> list[sql.Composed]:
    """In the target database: ``schema`` owned by the sink role (created if missing)."""
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {r}").format(s=_id(schema), r=_id(sink)),
        sql.SQL("ALTER SCHEMA {s} OWNER TO {r}").format(s=_id(schema), r=_id(sink)),
    ]


def publication_sql(publication: str, tables: Iterable[str], capture: str = CAPTURE_ROLE) -> list[sql.Composed]:
    """Run by the owner of ``tables`` (``schema.table``) in the legacy database: the CDC publication, then
    handed to the capture role."""
    names = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in tables)
    return [
        sql.SQL("CREATE PUBLICATION {p} FOR TABLE {t}").format(p=_id(publication), t=names),
        sql.SQL("ALTER PUBLICATION {p} OWNER TO {c}").format(p=_id(publication), c=_id(capture)),
    ]
