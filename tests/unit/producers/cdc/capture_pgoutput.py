"""Capture real pgoutput bytes from the stack's PostgreSQL into ``pgoutput_capture.json`` (run once, by hand).

    CRMFLOW_POSTGRES_PORT=... python tests/unit/producers/cdc/capture_pgoutput.py

It makes a scratch database, a publication and a logical slot with the built-in ``pgoutput`` plugin, runs the
statements below, and reads the messages with ``pg_logical_slot_peek_binary_changes`` (protocol version 1,
``messages 'true'``; once more with ``binary 'true'`` for the binary tuple kind). Then it drops everything.
The unit tests decode these bytes; nothing in them needs a server.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg

from crmflow.stack import get_stack

OUT = Path(__file__).with_name("pgoutput_capture.json")
DB = "crmflow_capture_pgoutput"

SETUP = [
    "create type tier as enum ('bronze', 'silver', 'gold')",
    "create table people (id integer primary key, big bigint, amount numeric(12,2), active boolean, born date, "
    "seen timestamptz, name text, doc jsonb, level tier, body text)",
    "alter table people alter column body set storage external",  # TOASTed out of line, uncompressed
    "create table audit (id integer primary key, note text)",
    "alter table audit replica identity full",
    "create publication cap for table people, audit",
]
# (label, statements run in one transaction)
STEPS = [
    ("insert two rows, one all null but the key", [
        "insert into people values (1, 9000000000, 1234.50, true, '2020-02-29', '2024-01-02 03:04:05.123456+00', "
        "'Zoë', '{\"a\": [1, 2]}', 'gold', repeat('0123456789abcdef', 600))",
        "insert into people (id) values (2)",
    ]),
    ("update leaving the TOASTed body unchanged", ["update people set name = 'Zoe' where id = 1"]),
    ("update of the key (default identity: old key only)", ["update people set id = 20 where id = 2"]),
    ("delete (default identity: old key only)", ["delete from people where id = 20"]),
    ("replica identity full: insert, update, delete", [
        "insert into audit values (1, 'first')",
        "update audit set note = 'second' where id = 1",
        "delete from audit where id = 1",
    ]),
    ("truncate", ["truncate audit"]),
    ("logical messages", [
        "select pg_logical_emit_message(true, 'crmflow.test', 'in a transaction')",
        "select pg_logical_emit_message(false, 'crmflow.test', 'outside')",
    ]),
]


def main() -> None:
    ep = get_stack().endpoints()
    with psycopg.connect(ep.postgres_dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {DB} with (force)")
        admin.execute(f"create database {DB}")
    try:
        with psycopg.connect(ep.dsn(DB), autocommit=True) as conn:
            for sql in SETUP:
                conn.execute(sql)
            conn.execute("select pg_create_logical_replication_slot('cap', 'pgoutput')")
            marks = []
            for label, statements in STEPS:
                with conn.transaction():
                    for sql in statements:
                        conn.execute(sql)
                marks.append((label, conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]))  # type: ignore[index]
            streams = {}
            for name, extra in (("text", ""), ("binary", ", 'binary', 'true'")):
                rows = conn.execute(
                    "select lsn::text, xid::text, encode(data, 'hex') from pg_logical_slot_peek_binary_changes("
                    f"'cap', null, null, 'proto_version', '1', 'publication_names', 'cap', 'messages', 'true'{extra})"
                ).fetchall()
                streams[name] = [{"lsn": lsn, "xid": xid, "hex": data} for lsn, xid, data in rows]
            conn.execute("select pg_drop_replication_slot('cap')")
            version = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
    finally:
        with psycopg.connect(ep.postgres_dsn, autocommit=True) as admin:
            admin.execute(f"drop database if exists {DB} with (force)")
    OUT.write_text(json.dumps({
        "how": "captured by tests/unit/producers/cdc/capture_pgoutput.py: pg_logical_slot_peek_binary_changes on a "
               "pgoutput slot, options proto_version '1', publication_names 'cap', messages 'true' (stream 'binary' "
               "adds binary 'true'); statements in 'setup' and 'steps', one transaction per step; 'marks' is "
               "pg_current_wal_lsn() after each step",
        "server_version": version,
        "setup": SETUP,
        "steps": [{"label": label, "sql": sql} for label, sql in STEPS],
        "marks": marks,
        "streams": streams,
    }, indent=1) + "\n")
    print(f"wrote {OUT}: {len(streams['text'])} text, {len(streams['binary'])} binary messages")
    subprocess.run(["git", "status", "--short", str(OUT)], check=False)


if __name__ == "__main__":
    main()
