"""The CDC producer on the real stack: pgoutput changes → Avro envelopes in Kafka, positions, heartbeats, SIGKILL.

Each test has its own database (``pg_dsn_factory``), slot, publication and topic prefix; the slot is dropped
before the database.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client import REGISTRY

from crmflow.config import load_config
from crmflow.exitcodes import ExitCode
from crmflow.pipeline.services import Service
from crmflow.serialization import AvroDecoder
from crmflow.stack import Endpoints
from crmflow.topics import cdc_topic
from producers.cdc.events import is_unchanged
from producers.cdc.exceptions import SlotError
from producers.cdc.initial import COMPLETE
from producers.cdc.pgoutput import parse_lsn
from producers.cdc.snapshot import read_comment
from producers.cdc.stream import CdcStats, run_cdc
from producers.config import CdcConfig
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

SCHEMA = [
    "create schema legacy",
    "create type legacy.tier as enum ('bronze', 'silver', 'gold')",
    "create table legacy.customers (id integer primary key, big bigint, amount numeric(12,2), active boolean, "
    "born date, seen timestamptz, name text, doc jsonb, level legacy.tier, notes text)",
    "alter table legacy.customers alter column notes set storage external",  # TOASTed out of line
    "create table legacy.tickets (id bigint primary key, customer_id integer, subject text)",
    "alter table legacy.tickets replica identity full",
    "create table legacy.other (id serial primary key, filler text)",  # not captured
]
TABLES = ["legacy.customers", "legacy.tickets"]


@dataclass
class Legacy:
    dsn: str
    env: str
    slot: str
    publication: str
    prefix: str

    def cdc(self, **kw: Any) -> CdcConfig:
        return CdcConfig(dsn_env=self.env, tables=tuple(TABLES), slot=self.slot, publication=self.publication, **kw)

    def sql(self, *statements: str) -> str:
        """Run ``statements`` in one transaction; returns pg_current_wal_lsn() after its commit."""
        with psycopg.connect(self.dsn) as conn:
            with conn.transaction():
                for s in statements:
                    conn.execute(s)
            return str(conn.execute("select pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]

    def load_complete(self) -> bool:
        """Whether the publication's comment says the initial load is complete (``crmflow cdc`` writes it)."""
        with psycopg.connect(self.dsn) as conn:
            comment = read_comment(conn, self.publication)[0]
        return comment is not None and comment.startswith(COMPLETE)

    def slot_row(self) -> tuple[Any, ...] | None:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(
                "select active_pid, confirmed_flush_lsn::text, restart_lsn::text from pg_replication_slots "
                "where slot_name = %s", (self.slot,)).fetchone()  # fmt: skip


@pytest.fixture
def legacy(pg_dsn_factory: Callable[[], str], topic_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Legacy]:
    dsn = pg_dsn_factory()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in SCHEMA:
            conn.execute(s)
    name = "t_cdc_" + os.urandom(5).hex()
    env = "CRMFLOW_TEST_CDC_DSN_" + name.upper()
    monkeypatch.setenv(env, dsn)
    yield Legacy(dsn, env, name, name, topic_prefix)
    with psycopg.connect(dsn, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
        wait_until(lambda: conn.execute("select active_pid is null from pg_replication_slots where slot_name = %s",
                                        (name,)).fetchone() in (None, (True,)), 15, what="the slot released")
        conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
                     (name,))  # fmt: skip


@dataclass(frozen=True)
class Event:
    key: dict[str, Any]
    value: dict[str, Any] | None


@pytest.fixture
def read_events(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, group_factory: Callable[[], str]
) -> Callable[[str], list[Event]]:
    """``read_events(topic)``: every message now in the topic, decoded, in offset order per partition."""
    decoder = AvroDecoder(registry_client)

    def read(topic: str) -> list[Event]:
        consumer = Consumer({**endpoints.kafka.client_config(), "group.id": group_factory(),
                             "enable.auto.commit": False})  # fmt: skip
        try:
            parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
            todo = {p for p, end in ends.items() if end > 0}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
            out: list[Event] = []
            deadline = time.monotonic() + 30
            while todo:
                assert time.monotonic() < deadline, f"{topic}: not read to the end"
                for msg in consumer.consume(1000, timeout=0.5):
                    assert msg.error() is None, msg.error()
                    raw = msg.value()
                    value = decoder.decode(raw) if raw is not None else None
                    out.append(Event(decoder.decode(msg.key() or b""), value))
                    if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                        todo.discard(msg.partition() or 0)
            return out
        finally:
            consumer.close()

    return read


def count(read: Callable[[str], list[Event]], topic: str) -> Callable[[], int]:
    def n() -> int:
        try:
            return len(read(topic))
        except KeyError:  # the topic does not exist yet
            return 0

    return n


@contextlib.contextmanager
def streaming(legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,
              *, init: bool, **cfg: Any) -> Iterator[CdcStats]:  # fmt: skip
    """``run_cdc`` in a thread until the block ends (then stopped as SIGTERM would)."""
    stop = threading.Event()
    box: dict[str, Any] = {}
    kafka = load_config_kafka(legacy.prefix)
    load = cfg.pop("load", True)  # run_cdc's, not the config's

    def target() -> None:
        try:
            box["stats"] = run_cdc(legacy.cdc(**cfg), kafka, connection=endpoints.kafka,
                                   registry_client=registry_client, init=init, load=load, stop_event=stop)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    # With init, not the slot's active_pid: the walsender holds the slot while it creates it, and creation waits
    # for every transaction of the cluster then running (other tests'); a change committed before the slot's
    # consistent point is in its exported snapshot (an op r event), not streamed. The load's "complete" comment
    # is written once the slot is consistent and the load in Kafka: every change after it streams. Without
    # init (a resumed slot, maybe a resumed load), the walsender holding the slot means streaming.
    def ready() -> bool:
        row = legacy.slot_row()
        return row is not None and (legacy.load_complete() if init else row[0] is not None)

    wait_until(lambda: "error" in box or ready(), 60, what="the slot streaming")
    if "error" in box:
        raise box["error"]
    stats = CdcStats()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(30)
        if "error" in box:
            raise box["error"]
        stats.__dict__.update(box["stats"].__dict__)


def load_config_kafka(prefix: str) -> Any:
    from crmflow.configbase import KafkaConfig

    return KafkaConfig(topic_prefix=prefix, partitions=2)


def write_config(tmp_path: Path, legacy: Legacy) -> Path:
    """A migration config whose ``cdc`` section captures TABLES (the other sections are the minimum)."""
    config = tmp_path / "crmflow.yaml"
    config.write_text(
        "run: {name: itcdc}\n"
        f"kafka: {{topic_prefix: {legacy.prefix}, partitions: 2}}\n"
        f"sources:\n  customers: {{kind: table, dsn_env: {legacy.env}, table: legacy.customers, entity: account, "
        "key: id}\n"
        "entities:\n  account:\n    fields:\n      - {source: id, target: customer_id}\n"
        f"cdc: {{dsn_env: {legacy.env}, tables: [{', '.join(TABLES)}], slot: {legacy.slot}, "
        f"publication: {legacy.publication}, feedback_interval_s: 0.2}}\n"
    )
    assert load_config(config).cdc is not None
    return config


# ------------------------------------------------------------------------------------------------------ tests

NOTES = "".join(f"{i:05d}-{os.urandom(4).hex()} " for i in range(1500))  # ~22 kB, out of line


def test_changes_become_envelopes_with_keys_tombstones_and_the_unchanged_marker(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,
    read_events: Callable[[str], list[Event]],
) -> None:  # fmt: skip
    customers, tickets = cdc_topic(legacy.prefix, "legacy.customers"), cdc_topic(legacy.prefix, "legacy.tickets")
    with streaming(legacy, endpoints, registry_client, init=True) as stats:
        legacy.sql(
            "insert into legacy.customers values (1, 9000000000, 1234.50, true, '2020-02-29', "
            f"'2024-01-02 03:04:05.123456+02', 'Zoë', '{{\"a\": [1, 2]}}', 'gold', '{NOTES}')",
            "insert into legacy.customers (id) values (2), (3)",
            "insert into legacy.tickets values (10, 1, 'broken')",
        )
        legacy.sql(  # one multi-statement transaction
            "update legacy.customers set name = 'Zoe' where id = 1",  # notes TOASTed and unchanged
            "update legacy.tickets set subject = 'fixed' where id = 10",
            "delete from legacy.customers where id = 3",
            "delete from legacy.tickets where id = 10",
        )
        last = legacy.sql("update legacy.customers set id = 20 where id = 2")  # a key change
        wait_until(lambda: count(read_events, customers)() >= 9 and count(read_events, tickets)() >= 4, 90,
                   what="every event in Kafka")  # fmt: skip
        wait_until(lambda: parse_lsn(legacy.slot_row()[1]) >= parse_lsn(last), 15, what="the slot confirmed")  # type: ignore[index]

    by_op = [(e.key["id"], e.value["op"] if e.value else None) for e in read_events(customers)]
    assert sorted(by_op, key=str) == sorted(
        [(1, "c"), (2, "c"), (3, "c"), (1, "u"), (3, "d"), (3, None), (2, "d"), (2, None), (20, "c")], key=str)
    events = read_events(customers)
    created = next(e.value for e in events if e.value and e.value["op"] == "c" and e.key == {"id": 1})
    after = created["after"]
    assert after["big"] == 9000000000 and after["amount"] == Decimal("1234.50") and after["active"] is True
    assert str(after["born"]) == "2020-02-29" and after["seen"].isoformat() == "2024-01-02T01:04:05.123456+00:00"
    assert (after["name"], after["doc"], after["level"], after["notes"]) == ("Zoë", '{"a": [1, 2]}', "gold", NOTES)
    assert created["before"] is None
    src = created["source"]
    assert (src["schema"], src["table"], src["snapshot"], src["connector"]) == ("legacy", "customers", False, "crmflow")
    assert src["lsn"] > 0 and src["txId"] > 0 and abs(src["ts_ms"] - time.time() * 1000) < 120_000
    nulls = next(e.value for e in events if e.value and e.value["op"] == "c" and e.key == {"id": 3})
    assert nulls["after"]["name"] is None and not is_unchanged(nulls["after"]["name"])

    update = next(e.value for e in events if e.value and e.value["op"] == "u")
    assert update["before"] is None  # default replica identity, key unchanged: no old row
    assert update["after"]["name"] == "Zoe"
    assert is_unchanged(update["after"]["notes"]) and update["after"]["notes"] != NOTES  # the marker, not a value
    deleted = next(e for e in events if e.value and e.value["op"] == "d" and e.key == {"id": 3})
    assert deleted.value["before"]["id"] == 3 and deleted.value["after"] is None  # type: ignore[index]
    assert events.index(deleted) + 1 == next(i for i, e in enumerate(events) if e.key == {"id": 3} and e.value is None)

    t_events = read_events(tickets)
    assert [e.value["op"] if e.value else None for e in t_events] == ["c", "u", "d", None]
    t_upd, t_del = t_events[1].value, t_events[2].value
    assert t_upd and t_del
    assert t_upd["before"]["subject"] == "broken" and t_upd["after"]["subject"] == "fixed"  # REPLICA IDENTITY FULL
    assert t_del["before"] == {"id": 10, "customer_id": 1, "subject": "fixed"}
    assert t_upd["source"]["txId"] == t_del["source"]["txId"] == update["source"]["txId"]
    assert stats.confirmed_lsn >= parse_lsn(last)
    assert stats.events["legacy.customers tombstone"] == 2


def test_a_missing_slot_is_an_error_naming_it_never_a_new_start(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient, tmp_path: Path
) -> None:
    with pytest.raises(SlotError, match=f"slot {legacy.slot} does not exist.*--init"):
        run_cdc(legacy.cdc(), load_config_kafka(legacy.prefix), connection=endpoints.kafka,
                registry_client=registry_client)  # fmt: skip
    cli = subprocess.run([sys.executable, "-m", "crmflow", "cdc", "-c", str(write_config(tmp_path, legacy))],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cli.returncode == ExitCode.CONFIG, cli.stderr
    assert f"slot {legacy.slot} does not exist" in " ".join(cli.stderr.split())
    assert legacy.slot_row() is None


def test_heartbeats_advance_an_idle_slot(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient
) -> None:
    with streaming(legacy, endpoints, registry_client, init=True, feedback_interval_s=0.3):
        start = legacy.slot_row()
        assert start is not None
        # WAL that the publication does not carry: without heartbeats the slot would keep all of it
        mark = legacy.sql("insert into legacy.other (filler) select repeat('x', 500) from generate_series(1, 2000)")
        wait_until(lambda: parse_lsn(legacy.slot_row()[1]) >= parse_lsn(mark), 20,  # type: ignore[index]
                   what="the idle slot's confirmed position past the unrelated writes")  # fmt: skip
        with psycopg.connect(legacy.dsn, autocommit=True) as conn:
            conn.execute("checkpoint")  # logs the running transactions the slot's restart_lsn moves on

        def restart_past() -> bool:
            legacy.sql("insert into legacy.other (filler) values ('tick')")
            return parse_lsn(legacy.slot_row()[2]) >= parse_lsn(mark)  # type: ignore[index]

        wait_until(restart_past, 30, interval_s=0.5, what="the slot's restart_lsn (retained WAL) moving on")
        # More rounds of unrelated WAL: each time the slot lets go of all of it
        for _ in range(3):
            before = legacy.sql("insert into legacy.other (filler) "
                                "select repeat('y', 500) from generate_series(1, 2000)")
            with psycopg.connect(legacy.dsn, autocommit=True) as conn:
                conn.execute("checkpoint")

            def bounded(before: str = before) -> bool:
                legacy.sql("insert into legacy.other (filler) values ('tick')")
                row = legacy.slot_row()
                assert row is not None
                return parse_lsn(row[1]) >= parse_lsn(before) and parse_lsn(row[2]) >= parse_lsn(before)

            # The slot keeps none of the round's WAL: its restart_lsn passed the round's end. (The server's
            # current LSN is no yardstick here: other tests write WAL into the same cluster meanwhile.)
            wait_until(bounded, 30, interval_s=0.5, what="confirmed_flush_lsn and restart_lsn past the new WAL")
        lag_s = REGISTRY.get_sample_value("crmflow_cdc_replication_lag_seconds", {"slot": legacy.slot})
        assert lag_s is not None and lag_s < 5, lag_s  # idle: nothing received is waiting for Kafka
    # Measured once more at the stop: the gauges name the slot. What it retains is the cluster's WAL since its
    # restart_lsn, other tests' writes included, so it is held to what the server says right after the stop (the
    # inactive slot's restart_lsn no longer moves, the current position only grows).
    retained = REGISTRY.get_sample_value("crmflow_cdc_retained_wal_bytes", {"slot": legacy.slot})
    acked = REGISTRY.get_sample_value("crmflow_cdc_last_acked_lsn", {"slot": legacy.slot})
    with psycopg.connect(legacy.dsn, autocommit=True) as conn:
        row = conn.execute("select pg_current_wal_lsn() - restart_lsn from pg_replication_slots "
                           "where slot_name = %s", (legacy.slot,)).fetchone()
    assert row is not None and retained is not None and 0 <= retained <= int(row[0]), (retained, row)
    assert acked is not None and acked >= parse_lsn(mark)
    assert REGISTRY.get_sample_value("crmflow_cdc_replication_lag_bytes", {"slot": legacy.slot}) is not None
    print(f"idle slot: {parse_lsn(mark) - parse_lsn(start[2])} bytes of unrelated WAL written, {retained:.0f} retained")


def test_sigkill_mid_stream_then_restart_loses_nothing_and_confirms_only_acknowledged_events(
    legacy: Legacy, endpoints: Endpoints, read_events: Callable[[str], list[Event]], tmp_path: Path
) -> None:
    config = write_config(tmp_path, legacy)
    topic = cdc_topic(legacy.prefix, "legacy.customers")
    expected: dict[int, list[str]] = {}  # key -> names in change order ("" for a delete)
    marks: list[tuple[str, list[tuple[int, str]]]] = []  # (WAL position after the commit, its changes)

    def workload(start: int, n: int) -> None:
        for i in range(start, start + n):
            changes = [(i, f"v{i}-0"), (i, f"v{i}-1")]
            stmts = [f"insert into legacy.customers (id, name, notes) values ({i}, 'v{i}-0', 'n')",
                     f"update legacy.customers set name = 'v{i}-1' where id = {i}"]  # fmt: skip
            if i % 3 == 0 and i > start:
                stmts.append(f"delete from legacy.customers where id = {i - 1}")
                changes.append((i - 1, ""))
            marks.append((legacy.sql(*stmts), changes))
            for key, name in changes:
                expected.setdefault(key, []).append(name)

    def service(*args: str) -> Service:
        return Service("cdc", ["cdc", "-c", str(config), *args], tmp_path / "cdc.log", {})

    first = service("--init")
    try:
        # The slot consistent and the load done (see ``streaming``): a change committed earlier would be in the
        # exported snapshot as op r, and the marks below would count it as streamed.
        wait_until(lambda: legacy.slot_row() is not None and legacy.load_complete(), 60, what="cdc streaming")
        writer = threading.Thread(target=workload, args=(1, 150))
        writer.start()  # the kill lands while changes still stream in
        wait_until(count(read_events, topic), 30, interval_s=0.05, what="the first events in Kafka")
        first.proc.kill()  # SIGKILL mid-stream
        first.proc.wait(10)
        writer.join(60)
    finally:
        first.stop(2)
    wait_until(lambda: legacy.slot_row()[0] is None, 15, what="the slot released")  # type: ignore[index]
    confirmed = parse_lsn(legacy.slot_row()[1])  # type: ignore[index]
    in_kafka = {(e.key["id"], e.value["after"]["name"] if e.value["after"] else "")
                for e in read_events(topic) if e.value}  # fmt: skip
    acked = [changes for lsn, changes in marks if parse_lsn(lsn) <= confirmed]
    assert all(c in in_kafka for changes in acked for c in changes), "the slot confirmed an event Kafka does not have"
    at_kill = sum(len(v) for v in expected.values())
    assert len(acked) < len(marks), "the kill did not land mid-stream"

    workload(151, 50)  # while nothing captures
    second = service()
    try:
        workload(201, 50)
        total = sum(len(v) for v in expected.values())
        wait_until(lambda: count(read_events, topic)() >= total, 45, what="every change in Kafka after the restart")
        wait_until(lambda: parse_lsn(legacy.slot_row()[1]) >= parse_lsn(marks[-1][0]), 15,  # type: ignore[index]
                   what="the slot confirmed the last transaction")  # fmt: skip
    finally:
        assert second.stop(15) == 130  # SIGTERM: flushed, confirmed, exit code 130
    seen: dict[int, list[str]] = {}
    for e in read_events(topic):
        if e.value is not None:
            seen.setdefault(e.key["id"], []).append(e.value["after"]["name"] if e.value["after"] else "")
    replays = sum(len(v) for v in seen.values()) - total
    for key, names in expected.items():
        firsts = list(dict.fromkeys(seen.get(key, [])))  # a replay repeats a stretch; first sightings keep order
        assert firsts == list(dict.fromkeys(names)), f"key {key}: {seen.get(key)} != {names}"
    assert replays >= 0
    print(f"SIGKILL with {len(in_kafka)} of the first {at_kill} changes in Kafka, {len(acked)}/150 transactions "
          "confirmed; "
          f"after the restart {total} changes, {replays} replayed")


def test_initial_load_hands_over_to_the_stream_with_no_gap_and_no_double(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,
    read_events: Callable[[str], list[Event]],
) -> None:  # fmt: skip
    legacy.sql("insert into legacy.customers (id, name, notes) "
               f"select i, 'old', case when i % 50 = 0 then '{NOTES}' end from generate_series(1, 300) i")  # fmt: skip
    topic = cdc_topic(legacy.prefix, "legacy.customers")
    done = threading.Event()
    written: list[int] = []

    def writer() -> None:  # one row per transaction, before, during and after the slot's creation
        i = 1000
        while not done.is_set() or len(written) < 20:
            legacy.sql(f"insert into legacy.customers (id, name) values ({i}, 'new')")
            written.append(i)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with streaming(legacy, endpoints, registry_client, init=True) as stats:
            mark = len(written)
            wait_until(lambda: len(written) >= mark + 20, 30, what="writes after the stream started")
            done.set()
            thread.join(30)
            wait_until(lambda: count(read_events, topic)() >= 300 + len(written), 30, what="every row in Kafka")
    finally:
        done.set()
        thread.join(30)
    events = [e.value for e in read_events(topic) if e.value]
    loaded = [e for e in events if e["op"] == "r"]
    assert {e["source"]["snapshot"] for e in loaded} == {True} and len({e["source"]["lsn"] for e in loaded}) == 1
    assert all(e["source"]["snapshot"] is False for e in events if e["op"] == "c")
    ids = sorted(e["after"]["id"] for e in events)
    assert ids == sorted([*range(1, 301), *written]), "a row is missing or arrived twice across the handover"
    assert {e["after"]["id"] for e in loaded} >= set(range(1, 301))
    assert next(e["after"]["notes"] for e in loaded if e["after"]["id"] == 50) == NOTES
    assert stats.loaded == len(loaded) and 0 < len(loaded) - 300 < len(written)  # the writer straddled the slot
    print(f"initial load: {len(loaded)} rows as r, {len(events) - len(loaded)} as c after the consistent point")


def test_an_interrupted_initial_load_without_a_checkpoint_is_refused_on_restart(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient
) -> None:
    legacy.sql("insert into legacy.customers (id) select generate_series(1, 10)")
    stop = threading.Event()
    stop.set()  # as a SIGTERM in the middle of the load
    kafka = load_config_kafka(legacy.prefix)
    stats = run_cdc(legacy.cdc(), kafka, connection=endpoints.kafka,
                    registry_client=registry_client, init=True, stop_event=stop)  # fmt: skip
    assert stats.stopped and stats.loaded == 0
    # an older crmflow's mark: the load's state without the checkpoint (test_cdc_snapshot resumes one that has it)
    legacy.sql(f"comment on publication {legacy.publication} is 'crmflow cdc: initial load in progress'")
    with pytest.raises(SlotError, match=f"initial load of slot {legacy.slot} was interrupted and has no checkpoint"):
        run_cdc(legacy.cdc(), kafka, connection=endpoints.kafka, registry_client=registry_client)
