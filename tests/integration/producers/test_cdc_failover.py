"""A failover to a copy: the promoted standby has no logical slot (PostgreSQL 15 never copies one), and the CDC
producer says so and stops (exit 2), whether it starts on the copy or reconnects to it mid-stream; it never takes
a silent new snapshot and never creates a slot on the copy.

The copy is a real physical standby of the stack's cluster: ``pg_basebackup -R`` (Debian's binaries, as the
stack's OS user) into a directory next to the cluster, started on 127.0.0.2 with the cluster's port, so that one
libpq host list, ``host=127.0.0.2,127.0.0.1 target_session_attrs=read-write``, finds the primary first and the
copy once it is promoted: the way a client follows a failover. The shared cluster is only read (a base backup);
the copy is removed after the test. Local stack only (it runs pg_ctl).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from crmflow.exitcodes import ExitCode
from crmflow.pipeline.services import Service
from crmflow.stack import Endpoints, get_stack, tools
from crmflow.topics import cdc_topic
from producers.cdc.pgoutput import parse_lsn
from tests.helpers import wait_until
from tests.integration.producers.test_cdc import (  # noqa: F401
    Event,
    Legacy,
    count,
    legacy,
    read_events,
    write_config,
)

pytestmark = pytest.mark.integration

COPY_HOST = "127.0.0.2"  # the loopback net: the copy listens here, on the cluster's port


class Copy:
    """A physical standby of the local stack's cluster, on ``COPY_HOST``; :meth:`promote` makes it a primary."""

    def __init__(self, pg: Any, endpoints: Endpoints) -> None:
        self.pg, self.endpoints = pg, endpoints
        self.root = Path(pg.root) / f"copy-{os.urandom(4).hex()}"
        self.data, self.sock, self.log = self.root / "data", self.root / "run", self.root / "postgres.log"
        self.bin = tools.postgres_bindir()

    def _run(self, *argv: str) -> None:
        if self.pg.as_root:  # PostgreSQL refuses root: as the stack's OS user, like the stack itself
            argv = ("runuser", "-u", self.pg.s.postgres_os_user, "--", *argv)
        res = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/", timeout=120)
        assert res.returncode == 0, f"{argv}: {res.stdout}{res.stderr}"

    def start(self) -> None:
        self.sock.mkdir(parents=True)
        if self.pg.as_root:
            shutil.chown(self.root, self.pg.s.postgres_os_user)
            shutil.chown(self.sock, self.pg.s.postgres_os_user)
        port = str(self.endpoints.postgres.port)
        # Small and fast: an immediate checkpoint, the WAL streamed alongside, no fsync, no manifest; -R makes it a
        # standby of the cluster (standby.signal, primary_conninfo over the cluster's socket, trusted locally).
        self._run(str(self.bin / "pg_basebackup"), "-h", str(self.pg.sock), "-p", port, "-U",
                  str(self.endpoints.postgres.user), "-D", str(self.data), "-R", "-X", "stream",
                  "--checkpoint=fast", "--no-sync", "--no-manifest")  # fmt: skip
        # The copy's own address, socket and a smaller buffer pool; the rest as the cluster (a hot standby needs
        # max_connections and the like at least as high as its primary's).
        options = f"-c listen_addresses={COPY_HOST} -p {port} -k {self.sock} -c shared_buffers=32MB"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options,
                  "start")  # fmt: skip

    def dsn(self, database: str) -> str:
        return make_conninfo(self.endpoints.dsn(database), host=COPY_HOST)

    def query(self, database: str, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def promote(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def copy(endpoints: Endpoints) -> Iterator[Copy]:
    pg = getattr(get_stack(), "pg", None)
    if pg is None:
        pytest.skip("a standby of the cluster needs the local stack (pg_basebackup, pg_ctl)")
    made = Copy(pg, endpoints)
    try:
        yield made
    finally:
        made.remove()


def run_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crmflow", "cdc", "-c", str(config)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def assert_failover_error(output: str, legacy: Legacy, database: str) -> None:  # noqa: F811
    text = " ".join(output.split())  # rich wraps long lines
    assert "Traceback" not in output, output
    assert f"replication slot {legacy.slot} does not exist in database {database} at {COPY_HOST}:" in text, text
    assert "timeline 2: this server was promoted from a standby" in text, text
    assert "re-create the slot with a fresh initial load (`crmflow cdc --init`" in text, text
    assert "PostgreSQL 17's failover slots" in text, text


def test_a_failover_to_a_copy_without_the_slot_stops_with_a_clear_error_never_a_new_snapshot(
    legacy: Legacy, endpoints: Endpoints, copy: Copy,  # noqa: F811
    read_events: Callable[[str], list[Event]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:  # fmt: skip
    database = str(conninfo_to_dict(legacy.dsn)["dbname"])
    topic = cdc_topic(legacy.prefix, "legacy.customers")
    legacy.sql("insert into legacy.customers (id, name) values (1, 'a'), (2, 'b')")
    # The client's view of the pair: the first host that takes writes (the primary, until the copy is promoted).
    monkeypatch.setenv(legacy.env, make_conninfo(legacy.dsn, host=f"{COPY_HOST},127.0.0.1",
                                                 target_session_attrs="read-write"))  # fmt: skip
    config = write_config(tmp_path, legacy)
    text = config.read_text().replace("feedback_interval_s: 0.2", "feedback_interval_s: 0.2, reconnect_initial_s: 0.2, "
                                      "reconnect_max_s: 1")  # fmt: skip
    config.write_text(text)
    cdc = Service("cdc", ["cdc", "-c", str(config), "--init"], tmp_path / "cdc.log", {})
    try:
        # consistent and loaded, not only held (see test_cdc.streaming)
        wait_until(lambda: legacy.slot_row() is not None and legacy.load_complete(), 60, what="cdc streaming")
        started = time.monotonic()
        copy.start()  # a standby taken while the slot exists on the primary
        took = time.monotonic() - started
        last = legacy.sql("update legacy.customers set name = 'c' where id = 1",
                          "insert into legacy.customers (id, name) values (3, 'd')")  # fmt: skip
        wait_until(lambda: count(read_events, topic)() >= 4, 60, what="the load and the changes in Kafka")
        wait_until(lambda: parse_lsn(copy.query(database, "select pg_last_wal_replay_lsn()::text")[0][0])
                   >= parse_lsn(last), 30, what="the copy replaying the last commit")  # fmt: skip
        assert copy.query(database, "select pg_is_in_recovery()") == [(True,)]
        assert copy.query(database, "select slot_name from pg_replication_slots") == []  # never copied
        produced = count(read_events, topic)()
        with monkeypatch.context() as env:  # the copy while it is a standby: not a source, and said so
            env.setenv(legacy.env, copy.dsn(database))
            cli = run_cli(config)
        assert cli.returncode == ExitCode.CONFIG and "Traceback" not in cli.stderr, cli.stderr
        assert f"database {database} at {COPY_HOST}:{endpoints.postgres.port} is a standby (in recovery)" \
            in " ".join(cli.stderr.split()), cli.stderr  # fmt: skip

        copy.promote()  # the failover...
        with psycopg.connect(legacy.dsn, autocommit=True) as conn:  # ...drops the stream mid-session
            row = legacy.slot_row()
            assert row is not None and row[0] is not None
            conn.execute("select pg_terminate_backend(%s)", (row[0],))
        # The reconnect lands on the promoted copy: the same SlotError, once, not a retry loop and not --init.
        wait_until(lambda: cdc.proc.poll() is not None, 60, what="crmflow cdc stopping on the copy's missing slot")
        code = cdc.proc.returncode
    finally:
        cdc.stop(5)
    log = cdc.log_file.read_text()
    assert code == ExitCode.CONFIG, log
    assert_failover_error(log, legacy, database)
    assert log.count("lost the legacy database") == 1, log  # one reconnect, then the terminal error
    assert copy.query(database, f"select count(*) from pg_replication_slots where slot_name = '{legacy.slot}'") \
        == [(0,)]  # fmt: skip
    assert count(read_events, topic)() == produced  # nothing produced from the copy: no new snapshot

    # A start pointed straight at the promoted copy: the same error, before anything is produced.
    monkeypatch.setenv(legacy.env, copy.dsn(database))
    cli = run_cli(config)
    assert cli.returncode == ExitCode.CONFIG, cli.stderr
    assert_failover_error(cli.stderr, legacy, database)
    assert copy.query(database, "select count(*) from pg_replication_slots") == [(0,)]
    assert count(read_events, topic)() == produced
    print(f"copy: base backup + start of a standby in {took:.1f} s; {produced} events before the failover, none after; "
          f"the error: {' '.join(cli.stderr.split())}")
