"""Snapshots while streaming: a table re-snapshotted on a signal and an interrupted initial load resumed, both with
watermark chunks (DBLog). Checked by the outcome a consumer sees: the last event of every key in the topic is the
row as it now is in the legacy database (or its deletion), while a writer changed rows during the snapshot."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow import metrics
from crmflow.stack import Endpoints
from crmflow.topics import cdc_topic
from producers.cdc.initial import COMPLETE, IN_PROGRESS
from producers.cdc.pgoutput import parse_lsn
from producers.cdc.snapshot import read_comment
from producers.cdc.stream import run_cdc
from tests.helpers import wait_until
from tests.integration.producers.test_cdc import (  # noqa: F401
    Event,
    Legacy,
    count,
    legacy,
    load_config_kafka,
    read_events,
    streaming,
)

pytestmark = pytest.mark.integration

ROWS = 4000


def comment(db: Legacy) -> tuple[str | None, dict[str, Any] | None]:
    with psycopg.connect(db.dsn) as conn:
        return read_comment(conn, db.publication)


def last_per_key(events: list[Event]) -> dict[int, str | None]:
    """key -> the name of its last event's row (None after a delete); tombstones carry nothing new."""
    out: dict[int, str | None] = {}
    for e in events:
        if e.value is not None:
            out[e.key["id"]] = e.value["after"]["name"] if e.value["after"] else None
    return out


def source_rows(db: Legacy) -> dict[int, str | None]:
    with psycopg.connect(db.dsn) as conn:
        return {r[0]: r[1] for r in conn.execute("select id, name from legacy.customers")}


class Churn:
    """Updates and deletes random rows, and inserts new ones, in small transactions until stopped."""

    def __init__(self, db: Legacy) -> None:
        self.legacy, self.stop, self.n = db, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rnd = random.Random(7)
        with psycopg.connect(self.legacy.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                i = rnd.randrange(1, ROWS)
                with conn.transaction():
                    conn.execute("update legacy.customers set name = %s where id = %s", (f"u{self.n}", i))
                    if self.n % 5 == 0:
                        conn.execute("delete from legacy.customers where id = %s", (rnd.randrange(1, ROWS),))
                    conn.execute("insert into legacy.customers (id, name) values (%s, 'new')", (ROWS + 1 + self.n,))
                self.n += 1

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def assert_topic_matches_source(db: Legacy, read: Callable[[str], list[Event]]) -> list[Event]:
    topic = cdc_topic(db.prefix, "legacy.customers")
    source = source_rows(db)
    events = read(topic)
    last = {k: v for k, v in last_per_key(events).items() if v is not None}  # deleted keys end with a delete
    diff = sorted(k for k in set(source) | set(last) if source.get(k) != last.get(k))
    ranges: list[list[int]] = []
    for k in diff:
        if ranges and ranges[-1][1] == k - 1:
            ranges[-1][1] = k
        else:
            ranges.append([k, k])
    assert not diff, f"{len(diff)} keys differ (source vs Kafka), ranges {ranges[:10]}"
    return events


def test_a_signal_resnapshots_one_table_while_the_stream_runs(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
    read_events: Callable[[str], list[Event]],  # noqa: F811
) -> None:  # fmt: skip
    legacy.sql(f"insert into legacy.customers (id, name) select i, 'old' from generate_series(1, {ROWS}) i")
    with streaming(legacy, endpoints, registry_client, init=True, load=False, snapshot_chunk_size=300,
                   feedback_interval_s=0.2), Churn(legacy) as churn:  # fmt: skip
        wait_until(lambda: churn.n > 20, 30, what="changes before the signal")
        legacy.sql("select pg_logical_emit_message(true, 'crmflow.cdc.signal', '{\"snapshot\": \"legacy.customers\"}')")
        # Taken: the table pending (with or without a checkpoint yet), or already some of its r events in Kafka
        # (``stats`` is filled only when the stream ends).
        topic = cdc_topic(legacy.prefix, "legacy.customers")
        wait_until(lambda: "legacy.customers" in (comment(legacy)[1] or {}) or any(
            e.value and e.value["op"] == "r" for e in read_events(topic)), 30, what="the signal taken")
        wait_until(lambda: comment(legacy)[1] == {}, 60, what="the re-snapshot complete")
        churn.stop.set()
        churn.thread.join(30)
        last = legacy.sql("select 1")
        wait_until(lambda: parse_lsn(legacy.slot_row()[1]) >= parse_lsn(last), 30, what="caught up")  # type: ignore[index]
    events = assert_topic_matches_source(legacy, read_events)
    reads = [e for e in events if e.value and e.value["op"] == "r"]
    assert reads and all(e.value and e.value["source"]["snapshot"] for e in reads)
    assert ROWS - churn.n * 2 <= len(reads) <= ROWS + churn.n  # rows overtaken by a change were not re-read
    print(f"re-snapshot: {len(reads)} rows as r while {churn.n} transactions changed the table")


def test_an_interrupted_initial_load_resumes_from_its_checkpoint(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
    read_events: Callable[[str], list[Event]],  # noqa: F811
) -> None:  # fmt: skip
    legacy.sql(f"insert into legacy.customers (id, name) select i, 'old' from generate_series(1, {ROWS}) i")
    stop = threading.Event()
    box: dict[str, Any] = {}

    def first_run() -> None:
        box["stats"] = run_cdc(legacy.cdc(snapshot_chunk_size=100), load_config_kafka(legacy.prefix),
                               connection=endpoints.kafka, registry_client=registry_client,
                               init=True, stop_event=stop)  # fmt: skip

    thread = threading.Thread(target=first_run)
    thread.start()
    wait_until(lambda: (comment(legacy)[1] or {}).get("legacy.customers") is not None, 30, interval_s=0.01,
               what="a checkpoint in the customers table")  # fmt: skip
    stop.set()  # as a crash in the middle of the load (what was checkpointed is acknowledged)
    thread.join(60)
    state, pending = comment(legacy)
    assert state == IN_PROGRESS and pending is not None and pending["legacy.customers"] is not None
    done_key = int(pending["legacy.customers"][0])
    assert box["stats"].stopped and done_key < ROWS, "the load was not interrupted"

    with streaming(legacy, endpoints, registry_client, init=False, snapshot_chunk_size=300,
                   feedback_interval_s=0.2), Churn(legacy) as churn:  # fmt: skip
        wait_until(lambda: comment(legacy)[1] == {}, 60, what="the load finished from its checkpoint")
        churn.stop.set()
        churn.thread.join(30)
        wait_until(lambda: last_per_key(read_events(cdc_topic(legacy.prefix, "legacy.customers")))
                   .keys() >= source_rows(legacy).keys(), 30, what="every row in Kafka")  # fmt: skip
    assert_topic_matches_source(legacy, read_events)
    assert (comment(legacy)[0] or "").startswith(COMPLETE)
    print(f"initial load interrupted after key {done_key} of {ROWS}; finished while {churn.n} transactions ran")


def order_lsn(event: Event) -> int:
    """The position a sink orders a key's events by (``source_lsn``): the commit LSN of the change's transaction
    (a snapshot row: where it was read), as the processor takes it (:func:`processors.cdc.envelope_to_legacy`)."""
    assert event.value is not None
    source = event.value["source"]
    return int(source.get("commit_lsn") or source["lsn"])


def test_a_change_in_flight_during_a_snapshot_chunk_is_newer_than_the_chunk_s_copy_of_its_row(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
    read_events: Callable[[str], list[Event]],  # noqa: F811
) -> None:  # fmt: skip
    """A transaction that updated a row before a chunk was selected and commits after the chunk's high watermark:
    the chunk holds the row as it was (the update was not committed), and the update comes after the chunk in the
    topic. A sink that keeps, per key, the event of the highest LSN must then keep the update: ordered by the
    change's own WAL position, the update (written before the low watermark) would lose to the chunk's copy."""
    legacy.sql("insert into legacy.customers (id, name) select i, 'old' from generate_series(1, 10) i")
    with streaming(legacy, endpoints, registry_client, init=True, load=False, feedback_interval_s=0.2), \
            psycopg.connect(legacy.dsn) as writer:  # fmt: skip
        writer.execute("update legacy.customers set name = 'new' where id = 5")  # open: not committed yet
        legacy.sql("select pg_logical_emit_message(true, 'crmflow.cdc.signal', '{\"snapshot\": \"legacy.customers\"}')")
        # The chunk's copy of row 5 first (the pending set is {} before the signal is taken, too), then the end.
        topic = cdc_topic(legacy.prefix, "legacy.customers")
        wait_until(lambda: any(e.key["id"] == 5 and e.value and e.value["op"] == "r" for e in read_events(topic)),
                   30, what="the chunk's copy of row 5 in Kafka")  # fmt: skip
        wait_until(lambda: comment(legacy)[1] == {}, 30, what="the re-snapshot complete")
        writer.commit()
        last = legacy.sql("select 1")
        wait_until(lambda: parse_lsn(legacy.slot_row()[1]) >= parse_lsn(last), 30, what="caught up")  # type: ignore[index]
    events = [e for e in read_events(cdc_topic(legacy.prefix, "legacy.customers")) if e.value is not None]
    five = [e for e in events if e.key["id"] == 5]
    assert [(e.value["op"], e.value["after"]["name"]) for e in five if e.value] == [("r", "old"), ("u", "new")]
    newest: dict[int, Event] = {}
    for e in events:  # what an LSN-ordered upsert keeps: the highest, the later one of equals
        if e.key["id"] not in newest or order_lsn(e) >= order_lsn(newest[e.key["id"]]):
            newest[e.key["id"]] = e
    assert {k: e.value["after"]["name"] for k, e in newest.items() if e.value} == source_rows(legacy)
    assert order_lsn(five[1]) > order_lsn(five[0]) > five[1].value["source"]["lsn"]  # type: ignore[index]


@contextlib.contextmanager
def synchronous_standby_never_there(db: Legacy) -> Iterator[None]:
    """Sessions that ask for ``synchronous_commit = on`` wait for a standby that never comes; the others commit as
    usual (``local``). Such a commit is in the WAL, and decoded, but invisible to others until its wait is
    cancelled, as a commit waiting for a slow synchronous standby is."""
    settings = (("synchronous_commit", "local"), ("synchronous_standby_names", "crmflow_test_never"))
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        for name, value in settings:
            conn.execute(f"alter system set {name} = '{value}'")
        conn.execute("select pg_reload_conf()")
        try:
            yield
        finally:
            for name, _ in settings:
                conn.execute(f"alter system reset {name}")
            conn.execute("select pg_reload_conf()")


@pytest.mark.serial  # changes the cluster's commit settings for a while
def test_a_chunk_whose_select_misses_a_change_already_streamed_is_read_again(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
    read_events: Callable[[str], list[Event]],  # noqa: F811
) -> None:  # fmt: skip
    legacy.sql("insert into legacy.customers (id, name) select i, 'old' from generate_series(1, 50) i")
    topic = cdc_topic(legacy.prefix, "legacy.customers")
    deferred = metrics.CDC_SNAPSHOT_CHUNKS_DEFERRED.labels("legacy.customers")
    before = deferred._value.get()
    with synchronous_standby_never_there(legacy), streaming(legacy, endpoints, registry_client, init=True,
                                                            load=False, snapshot_chunk_size=100) as _:  # fmt: skip
        waiting = psycopg.connect(legacy.dsn, autocommit=True)
        pid = waiting.info.backend_pid
        writer = threading.Thread(target=waiting.execute, daemon=True,
                                  args=("set synchronous_commit = on; update legacy.customers set name = 'new' "
                                        "where id = 5",))  # fmt: skip
        writer.start()
        wait_until(lambda: any(e.value and e.value["op"] == "u" for e in read_events(topic)) if count(
            read_events, topic)() else False, 30, what="the waiting commit decoded and its change in Kafka")
        assert source_rows(legacy)[5] == "old", "the commit should not be visible yet"
        legacy.sql("select pg_logical_emit_message(true, 'crmflow.cdc.signal', '{\"snapshot\": \"legacy.customers\"}')")
        # Without the guard the chunk is read now, with 'old' for key 5, and the snapshot completes. The pending
        # set is {} before the signal is taken as well: a completion counts only with the signal's r events.
        wait_until(lambda: deferred._value.get() > before or (comment(legacy)[1] == {} and any(
            e.value and e.value["op"] == "r" for e in read_events(topic))), 30, what="a chunk read or deferred")
        with psycopg.connect(legacy.dsn, autocommit=True) as admin:
            admin.execute("select pg_cancel_backend(%s)", (pid,))  # the commit becomes visible
        writer.join(30)
        waiting.close()
        wait_until(lambda: comment(legacy)[1] == {}, 30, what="the re-snapshot complete")
    assert source_rows(legacy)[5] == "new"
    assert_topic_matches_source(legacy, read_events)
    assert deferred._value.get() > before
