"""The stack itself: Kafka, the registry and PostgreSQL answer, and the local stack's lifecycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from crmflow.settings import StackSettings
from crmflow.stack import Endpoints
from crmflow.stack.local import LocalStack
from crmflow.stack.tools import free_port

pytestmark = pytest.mark.integration


def test_kafka_produce_and_consume(
    endpoints: Endpoints, topic_factory: Callable[..., str], group_factory: Callable[[], str]
) -> None:
    topic = topic_factory("stack", partitions=3)
    p = Producer({**endpoints.kafka.client_config(), "enable.idempotence": True})
    for i in range(30):
        p.produce(topic, key=str(i).encode(), value=f"v{i}".encode())
    assert p.flush(30) == 0
    c = Consumer({**endpoints.kafka.client_config(), "group.id": group_factory(),
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + 30
    while len(seen) < 30 and time.monotonic() < deadline:
        for m in c.consume(100, timeout=1):
            assert m.error() is None
            seen.add(m.value())
    c.close()
    assert seen == {f"v{i}".encode() for i in range(30)}


def test_postgres_is_logical_and_has_both_databases(
    endpoints: Endpoints, pg_dsn_factory: Callable[[], str]
) -> None:
    with psycopg.connect(endpoints.target_dsn) as conn:
        assert conn.execute("show wal_level").fetchone() == ("logical",)
        assert int(conn.execute("show max_replication_slots").fetchone()[0]) >= 10
    with psycopg.connect(endpoints.legacy_dsn) as conn:
        assert conn.execute("select current_database()").fetchone() == (endpoints.legacy_database,)
    dsn = pg_dsn_factory()
    with psycopg.connect(dsn) as conn:
        conn.execute("create table t (id int primary key, v text)")
        conn.execute("insert into t values (1, 'a'), (2, 'b')")
        conn.commit()
        assert conn.execute("select v from t order by id").fetchall() == [("a",), ("b",)]


@pytest.mark.skipif(os.environ.get("CRMFLOW_STACK", "local") != "local", reason="local stack lifecycle")
def test_local_stack_up_twice_then_down_leaves_no_process(tmp_path: Path, endpoints: Endpoints) -> None:
    """A second, private local stack on other ports: up, up again, down — nothing left running."""
    # Reuse the session's downloads so this does not fetch again.
    shared_home = StackSettings().home
    home = tmp_path / "home"
    (home).mkdir()
    (home / "dist").symlink_to(shared_home / "dist")
    # Ports free now, so that two suites on one machine (or anyone's stack on fixed ports) never meet.
    kafka, controller, registry, postgres = (free_port() for _ in range(4))
    settings = StackSettings(
        home=home, kafka_port=kafka, kafka_controller_port=controller, registry_port=registry,
        postgres_port=postgres, postgres_dir=Path(f"/var/tmp/crmflow-test-pg-{os.getpid()}")
        if os.geteuid() == 0 else tmp_path / "pg",
    )
    env = {**os.environ, "CRMFLOW_HOME": str(home), "CRMFLOW_KAFKA_PORT": str(kafka),
           "CRMFLOW_KAFKA_CONTROLLER_PORT": str(controller), "CRMFLOW_REGISTRY_PORT": str(registry),
           "CRMFLOW_POSTGRES_PORT": str(postgres), "CRMFLOW_POSTGRES_DIR": str(settings.postgres_dir)}
    cli = [sys.executable, "-m", "crmflow", "stack"]
    try:
        for _ in range(2):
            res = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stdout + res.stderr
        res = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout
        pids = [p.pid for p in LocalStack(settings).status()]
        assert all(pids)
    finally:
        res = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=120)
        if settings.postgres_dir:
            shutil.rmtree(settings.postgres_dir, ignore_errors=True)
    assert res.returncode == 0, res.stdout + res.stderr
    alive = [pid for pid in pids if pid and psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    leftovers = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                 if str(home) in " ".join(p.info["cmdline"] or []) or
                 str(settings.postgres_dir) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    res = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
