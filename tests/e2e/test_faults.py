"""Faults a migration survives: a dependency goes away mid-run and comes back, and ``crmflow migrate`` waits
with backoff, carries on and finishes (exit 0) with the target equal to the ground truth, nothing lost or
doubled. Each test prints how long the pipeline took to make progress again once the dependency was back
(the recovery time). Those stop parts of the stack, so they are ``serial`` and need the local stack. And a
poison message in every topic is dead-lettered by the stage that reads it, while the rest lands."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import load_config
from crmflow.dlq import read_dead_letters
from crmflow.exitcodes import ExitCode
from crmflow.pipeline.migrate import prepare
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints, get_stack
from crmflow.stack.local import LocalStack
from tests.e2e.conftest import Dataset, Run, assert_target_matches_truth
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


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


@pytest.mark.serial  # stops a part of the shared stack
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
    time.sleep(3)  # an outage, not a blip (and the broker's restart takes longer still)
    before = _landed(run.target_dsn)
    local_stack.up()
    back = time.monotonic()
    # Ready means the group coordinator loaded the groups it kept: a listing taken now misses none of them.
    admin = AdminClient({"bootstrap.servers": local_stack.endpoints().bootstrap_servers})
    groups = admin.list_consumer_groups().result()
    assert not groups.errors, groups.errors
    assert any(run.prefix in g.group_id for g in groups.valid), "the run's groups are listed"
    took = _recovery(run.target_dsn, back, before, "the broker's restart")
    summary = _finish(proc, small_dataset, run)
    assert "Kafka" in str(summary["stderr"]) and "reachable again" in str(summary["stderr"])
    assert "kafka" in [o["dependency"] for o in summary["outages"]]  # type: ignore[attr-defined]
    assert took < 90


def _raw_records(run: Run) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": get_stack().endpoints().bootstrap_servers, "group.id": "faults-probe"})
    try:
        md = c.list_topics(timeout=5)
        return sum(c.get_watermark_offsets(TopicPartition(t, p), timeout=5)[1]
                   for t in md.topics if t.startswith(f"{run.prefix}.raw.") for p in md.topics[t].partitions)
    except KafkaException:  # a topic just created: its leader is not known yet
        return 0
    finally:
        c.close()


@pytest.mark.serial  # stops parts of the shared stack
def test_registry_down_30s_then_the_target_database_restarted_mid_batch_the_run_finishes(
    small_dataset: Dataset, run_factory: Callable[..., Run], local_stack: LocalStack,
    migrate_proc: Callable[..., subprocess.Popen[str]],
) -> None:
    """Two faults in one migration (one run instead of two keeps the serial tests within their budget): the
    registry stops answering for 30 s as the snapshot starts, before the processor and the sink looked up
    the writer schemas; once it is back and the sink writes, the target database is shut down immediately
    (the sink's open transaction dropped) and started again."""
    run = run_factory(small_dataset)
    proc = migrate_proc(run)
    wait_until(lambda: _raw_records(run) > 0 or proc.poll() is not None, timeout_s=120, interval_s=0.05,
               what="the snapshot producing")
    pid = local_stack.registry.pid()
    assert pid is not None
    # Frozen rather than stopped: it keeps its (in-memory) schemas, and to a client it is down (no answer).
    os.kill(pid, signal.SIGSTOP)
    try:
        status = json.loads(run.cli("stack", "status", "--json").stdout)
        assert [p["answers"] for p in status["parts"] if p["name"] == "registry"] == [False], status
        time.sleep(25)
        assert proc.poll() is None, "migrate ended while the registry was down"
        before = _landed(run.target_dsn)
    finally:
        os.kill(pid, signal.SIGCONT)
    _recovery(run.target_dsn, time.monotonic(), before, "the registry's return")

    assert proc.poll() is None, "migrate ended before the database was restarted"
    pid = local_stack.pg.pid()
    assert pid is not None
    # SIGQUIT is PostgreSQL's immediate shutdown: every session drops at once, the sink's open transaction too.
    os.kill(pid, signal.SIGQUIT)
    wait_until(lambda: not local_stack.pg.running(), timeout_s=30, what="PostgreSQL down")
    try:
        status = json.loads(run.cli("stack", "status", "--json").stdout)
        assert [p["running"] for p in status["parts"] if p["name"] == "postgres"] == [False], status
        time.sleep(3)  # with the status call: the run's watch (a probe every 2s) sees the outage
    finally:
        local_stack.pg.start()
    back = time.monotonic()
    _recovery(run.target_dsn, back, _landed(run.target_dsn), "the database's restart")

    summary = _finish(proc, small_dataset, run)
    err = str(summary["stderr"])
    assert "schema registry" in err and "unreachable" in err and "reachable again" in err, err[-3000:]
    outages = [o["dependency"] for o in summary["outages"]]  # type: ignore[attr-defined]
    assert "schema_registry" in outages and "postgresql" in outages, outages


POISONS = {
    "not Avro": b"plain text, no Confluent header at all",
    "unknown schema id": b"\x00" + (987_654_321).to_bytes(4, "big") + b"\x02\x04ab",
    "truncated": b"\x00\x00",  # cut inside the 5-byte header
}




def test_a_poison_message_in_every_topic_is_dead_lettered_and_the_rest_lands(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient,
) -> None:
    """Not Avro, an unknown schema id and a truncated value at the head of partition 0 of the raw, the internal
    dedupe, the mapped and the dead-letter topic: each stage dead-letters them (rule avro_decode, naming
    topic[partition]@offset, the payload encrypted) and carries on; the dead-letter readers pass over the
    ones in the dead-letter topic itself; nothing stalls and the target equals the truth."""
    run = run_factory(small_dataset, dedupe=True)
    cfg = load_config(run.config)
    prepare(cfg, endpoints, registry_client, run.target_dsn)
    k = cfg.kafka
    topics = [k.raw_topic("customers"), k.dedupe_topic("account"), k.mapped_topic("contact"), k.dlq_topic]
    producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers})
    for topic in topics:
        for value in POISONS.values():
            producer.produce(topic, value=value, partition=0)
    assert producer.flush(30) == 0
    res = run.cli("migrate", "-c", str(run.config), "--json")
    assert res.returncode == ExitCode.OK, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    summary = json.loads(res.stdout)
    assert summary["reconciled"] and summary["records"] == len(small_dataset.truth)
    assert_target_matches_truth(run.target_dsn, small_dataset, entities=("contact", "sale", "case"))
    letters = [lt.record for lt in read_dead_letters(endpoints.kafka, registry_client, k.dlq_topic)]
    for topic in topics[:-1]:
        mine = {r["source_offset"]: r for r in letters if r["source_topic"] == topic and r["source_partition"] == 0
                and r["rule"] == "avro_decode"}
        assert set(mine) == {0, 1, 2}, f"{topic}: poison letters at offsets {sorted(mine)}"
        assert all(r["error"] and f"{topic}[0]@" in r["error"] for r in mine.values()), mine
    dlq = run.cli("dlq", "list", "-c", str(run.config))
    assert dlq.returncode == ExitCode.OK and "Traceback" not in dlq.stderr, dlq.stderr[-2000:]
    raw_dlq = _raw_values(endpoints.bootstrap_servers, k.dlq_topic)
    assert not [v for v in raw_dlq if POISONS["not Avro"] in v and v != POISONS["not Avro"]], \
        "a poison's payload is in clear in a dead letter"


def _raw_values(bootstrap: str, topic: str) -> list[bytes]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "faults-raw", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[bytes] = []
        while batch := c.consume(500, 2.0):  # the topic is complete: migrate has finished
            out += [m.value() or b"" for m in batch if m.error() is None]
        assert len(out) <= sum(ends.values())
        return out
    finally:
        c.close()


def test_the_dead_letter_ledgers_disk_full_it_backs_off_and_catches_up_when_space_returns(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, tmp_path: Path,
) -> None:
    """The dead-letter topic's consumer is the ledger sync (``crmflow dlq list``, and ``migrate`` at its end),
    which writes ``crm.dead_letters`` in the target database. That table on a tablespace on a full 512 KiB
    tmpfs: the sync reports it, backs off and, once space returns, records every letter (nothing lost)."""
    if stack_settings().stack != "local" or os.geteuid() != 0:
        pytest.skip("mounts a tmpfs for a tablespace of the local stack's PostgreSQL (root)")
    run = run_factory(small_dataset)
    cfg = load_config(run.config)
    prepare(cfg, endpoints, registry_client, run.target_dsn)
    snap = run.cli("snapshot", "-c", str(run.config), "--json")  # its malformed lines become dead letters
    assert snap.returncode == ExitCode.OK, snap.stderr[-2000:]
    letters = list(read_dead_letters(endpoints.kafka, registry_client, cfg.kafka.dlq_topic))
    assert len(letters) > 20
    tag = uuid.uuid4().hex[:8]
    mnt = Path(f"/var/tmp/crmflow-faults-{tag}")  # the postgres OS user cannot enter /tmp/pytest-of-root
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=False,
                      capture_output=True).returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    space, filler = f"faults_{tag}", mnt / "filler"
    err_file = tmp_path / "dlq.err"
    proc: subprocess.Popen[str] | None = None
    try:
        (mnt / "ts").mkdir()
        shutil.chown(mnt / "ts", stack_settings().postgres_os_user)
        with psycopg.connect(endpoints.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"create tablespace {space} location '{mnt / 'ts'}'")
        with psycopg.connect(run.target_dsn, autocommit=True) as conn:
            conn.execute(f"alter table crm.dead_letters set tablespace {space}")
        with filler.open("wb") as fh, contextlib.suppress(OSError):  # ENOSPC: the disk is full
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        with err_file.open("w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "crmflow", "dlq", "list", "-c", str(run.config), "--json"],
                                    env=run.env, stdout=subprocess.PIPE, stderr=err, text=True)
        wait_until(lambda: "cannot be written" in err_file.read_text() or proc.poll() is not None, timeout_s=60,
                   what="the sync reporting the full disk")
        assert proc.poll() is None, err_file.read_text()[-2000:]
        assert _ledger_rows(run.target_dsn) == 0
        filler.unlink()
        freed = time.monotonic()
        wait_until(lambda: _ledger_rows(run.target_dsn) > 0, timeout_s=60, interval_s=0.1,
                   what="the ledger written once space returned")
        print(f"\nrecovery after space returned: {time.monotonic() - freed:.1f}s")
        proc.communicate(timeout=60)
        err_text = err_file.read_text()
        assert proc.returncode == ExitCode.OK and "Traceback" not in err_text, err_text[-2000:]
        assert "No space left on device" in err_text or "53100" in err_text
        assert _ledger_rows(run.target_dsn) == len(letters), "letters lost or doubled"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        filler.unlink(missing_ok=True)
        with psycopg.connect(run.target_dsn, autocommit=True) as conn:
            conn.execute("alter table crm.dead_letters set tablespace pg_default")
        with psycopg.connect(endpoints.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"drop tablespace if exists {space}")
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def _ledger_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("select count(*) from crm.dead_letters").fetchone()[0])  # type: ignore[index]
