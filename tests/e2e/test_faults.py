"""Faults a migration survives: a dependency goes away mid-run and comes back, and ``crmflow migrate`` waits
with backoff, carries on and finishes (exit 0) with the target equal to the ground truth, nothing lost or
doubled. Each test prints how long the pipeline took to make progress again once the dependency was back
(the recovery time). They stop parts of the stack, so they are ``serial`` and need the local stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from crmflow.exitcodes import ExitCode
from crmflow.settings import stack_settings
from crmflow.stack import get_stack
from crmflow.stack.local import LocalStack
from tests.e2e.conftest import Dataset, Run, assert_target_matches_truth
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.serial]


def _rows(dsn: str, table: str = "accounts") -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            return int(conn.execute(f"select count(*) from crm.{table}").fetchone()[0])  # type: ignore[index]
    except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
        return 0


def _landed(dsn: str) -> int:
    return sum(_rows(dsn, t) for t in ("accounts", "contacts", "sales", "cases"))


@pytest.fixture
def local_stack() -> LocalStack:
    if stack_settings().stack != "local":
        pytest.skip("stops parts of the local stack")
    stack = get_stack()
    assert isinstance(stack, LocalStack)
    return stack


@pytest.fixture
def migrate_proc(local_stack: LocalStack, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``migrate_proc(run, *args)``: ``crmflow migrate --json`` in the background, its stderr in
    ``tmp_path/migrate.err`` (printed when the test fails); killed if the test leaves it running, and the
    whole stack is up again after the test whatever happened."""
    started: list[subprocess.Popen[str]] = []
    err_file = tmp_path / "migrate.err"

    def start(run: Run, *args: str) -> subprocess.Popen[str]:
        with err_file.open("a") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "crmflow", "migrate", "-c", str(run.config), "--json", *args],
                env=run.env, stdout=subprocess.PIPE, stderr=err, text=True)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        if err_file.exists():
            print(f"\n--- migrate's stderr ({err_file}):\n{err_file.read_text()[-6000:]}")
        local_stack.up()


def _finish(proc: subprocess.Popen[str], dataset: Dataset, run: Run, timeout_s: float = 240) -> dict[str, object]:
    out, _ = proc.communicate(timeout=timeout_s)
    err = (run.config.parent / "migrate.err").read_text()
    assert proc.returncode == ExitCode.OK, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    summary = json.loads(out)
    assert summary["reconciled"] and summary["records"] == len(dataset.truth)
    assert_target_matches_truth(run.target_dsn, dataset)
    return dict(summary, stderr=err)


def _recovery(dsn: str, back_at: float, before: int, what: str) -> float:
    """Seconds from ``back_at`` (the dependency answers again) until the target grew past ``before``."""
    wait_until(lambda: _landed(dsn) > before, timeout_s=120, interval_s=0.1, what=f"progress after {what}")
    took = time.monotonic() - back_at
    print(f"\nrecovery after {what}: {took:.1f}s")
    return took


def test_kafka_killed_mid_migration_and_restarted_the_run_waits_and_finishes(
    small_dataset: Dataset, run_factory: Callable[..., Run], local_stack: LocalStack,
    migrate_proc: Callable[..., subprocess.Popen[str]],
) -> None:
    run = run_factory(small_dataset)
    proc = migrate_proc(run, "--workers", "2")
    wait_until(lambda: _landed(run.target_dsn) > 0 or proc.poll() is not None, timeout_s=120, what="the sink writing")
    assert proc.poll() is None, "migrate ended before Kafka was killed"
    pid = local_stack.kafka.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not local_stack.kafka.running(), timeout_s=10, what="the broker gone")
    status = run.cli("stack", "status", "--json")
    assert status.returncode == 1 and not json.loads(status.stdout)["parts"][0]["running"]
    time.sleep(8)  # an outage, not a blip: librdkafka's reconnects and the watch's probes all fail meanwhile
    before = _landed(run.target_dsn)
    local_stack.up()
    back = time.monotonic()
    took = _recovery(run.target_dsn, back, before, "the broker's restart")
    summary = _finish(proc, small_dataset, run)
    assert "Kafka" in str(summary["stderr"]) and "reachable again" in str(summary["stderr"])
    assert took < 90


def _raw_records(run: Run) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": get_stack().endpoints().bootstrap_servers, "group.id": "faults-probe"})
    try:
        md = c.list_topics(timeout=5)
        return sum(c.get_watermark_offsets(TopicPartition(t, p), timeout=5)[1]
                   for t in md.topics if t.startswith(f"{run.prefix}.raw.") for p in md.topics[t].partitions)
    finally:
        c.close()


def test_registry_down_30s_mid_migration_the_stages_retry_and_finish(
    small_dataset: Dataset, run_factory: Callable[..., Run], local_stack: LocalStack,
    migrate_proc: Callable[..., subprocess.Popen[str]],
) -> None:
    run = run_factory(small_dataset)
    proc = migrate_proc(run)
    # As soon as the snapshot produces, before the processor and the sink looked up the writer schemas.
    wait_until(lambda: _raw_records(run) > 0 or proc.poll() is not None, timeout_s=120, interval_s=0.05,
               what="the snapshot producing")
    pid = local_stack.registry.pid()
    assert pid is not None
    # Frozen rather than stopped: it keeps its (in-memory) schemas, and to a client it is down (no answer).
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(30)
        assert proc.poll() is None, "migrate ended while the registry was down"
        before = _landed(run.target_dsn)
    finally:
        os.kill(pid, signal.SIGCONT)
    back = time.monotonic()
    _recovery(run.target_dsn, back, before, "the registry's return")
    summary = _finish(proc, small_dataset, run)
    logs = "".join(p.read_text() for p in (local_stack.home / "runs").glob(f"{summary['run_id']}/*.log"))
    assert "failed" in logs and "read again" in logs, "no stage waited for the registry"


def test_target_database_restarted_mid_batch_the_sink_retries_and_finishes(
    small_dataset: Dataset, run_factory: Callable[..., Run], local_stack: LocalStack,
    migrate_proc: Callable[..., subprocess.Popen[str]],
) -> None:
    run = run_factory(small_dataset)
    proc = migrate_proc(run)
    wait_until(lambda: _landed(run.target_dsn) > 0 or proc.poll() is not None, timeout_s=120, interval_s=0.05,
               what="the sink writing")
    assert proc.poll() is None, "migrate ended before the database was restarted"
    pid = local_stack.pg.pid()
    assert pid is not None
    # SIGQUIT is PostgreSQL's immediate shutdown: every session drops at once, the sink's open transaction too.
    os.kill(pid, signal.SIGQUIT)
    wait_until(lambda: not local_stack.pg.running(), timeout_s=30, what="PostgreSQL down")
    try:
        time.sleep(5)
        before = _landed(run.target_dsn)  # 0 while it is down; counted again once it is back
    finally:
        local_stack.pg.start()
    back = time.monotonic()
    before = _landed(run.target_dsn)
    _recovery(run.target_dsn, back, before, "the database's restart")
    summary = _finish(proc, small_dataset, run)
    logs = "".join(p.read_text() for p in (local_stack.home / "runs").glob(f"{summary['run_id']}/*.log"))
    assert "read again" in logs or "retry" in logs, "the sink did not notice the restart"
