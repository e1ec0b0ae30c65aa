"""The sink end to end on the real Kafka, registry and PostgreSQL: Avro in, rows out, offsets committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.dlq import read_dead_letters
from crmflow.serialization import AvroCodec
from crmflow.stack import Endpoints
from sinks.params import SinkParams, SinkStats
from sinks.runner import run_sink
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

Query = Callable[[str, str], list[tuple[Any, ...]]]
REPO = Path(__file__).resolve().parents[3]


class Setup:
    """Unique topics (2 partitions for accounts and contacts), a DLQ topic, a group and a database."""

    def __init__(self, ep: Endpoints, registry: SchemaRegistryClient, topic_factory: Callable[..., str],
                 group: str, dsn: str) -> None:
        self.ep, self.dsn, self.group = ep, dsn, group
        self.topics = {entity: topic_factory(f"mapped-{entity}", partitions=2 if entity in ("account", "contact")
                                             else 1) for entity in ("account", "contact", "sale", "case")}
        self.dlq = topic_factory("dlq")
        self.codecs = {e: AvroCodec.for_topic(registry, t, f"target/{e}") for e, t in self.topics.items()}
        self.registry = registry

    def params(self, **over: Any) -> SinkParams:
        kw: dict[str, Any] = {"kafka": self.ep.kafka, "registry": self.ep.registry,
                              "target_dsn": self.dsn, "topics": {t: e for e, t in self.topics.items()},
                              "dlq_topic": self.dlq, "group_id": self.group, "batch_size": 40,
                              "max_batch_age_s": 0.3, "maintenance_interval_s": 1.0}
        return SinkParams(**{**kw, **over})

    def produce(self, entity: str, values: list[dict[str, Any]], producer: Producer | None = None) -> None:
        p = producer or Producer({**self.ep.kafka.client_config(), "enable.idempotence": True})
        id_field = {"account": "customer_id", "contact": "contact_id", "sale": "sale_id", "case": "case_id"}[entity]
        for value, data in zip(values, self.codecs[entity].encode_many(values), strict=True):
            p.produce(self.topics[entity], key=value[id_field].encode(), value=data)
        if producer is None:
            assert p.flush(30) == 0

    def produce_raw(self, entity: str, data: bytes) -> None:
        p = Producer(self.ep.kafka.client_config())
        p.produce(self.topics[entity], key=b"poison", value=data)
        assert p.flush(30) == 0

    def committed_and_ends(self, group: str | None = None) -> tuple[dict[Any, int], dict[Any, int]]:
        c = Consumer({**self.ep.kafka.client_config(), "group.id": group or self.group})
        try:
            md = c.list_topics(timeout=10)
            tps = [TopicPartition(t, p) for t in self.topics.values() for p in md.topics[t].partitions]
            committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
            ends = {(tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        finally:
            c.close()
        return committed, ends

    def dead_letters(self) -> list[dict[str, Any]]:
        return [d.record for d in read_dead_letters(self.ep.kafka, self.registry, self.dlq)]


@pytest.fixture
def setup(endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
          group_factory: Callable[[], str], pg_dsn_factory: Callable[[], str]) -> Iterator[Setup]:
    yield Setup(endpoints, registry_client, topic_factory, group_factory(), pg_dsn_factory())


def drain(params: SinkParams, timeout_s: float = 180.0) -> SinkStats:
    """Run a drain in a thread so a bug makes the test fail instead of hang."""
    stop = threading.Event()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["stats"] = run_sink(params, stop_event=stop, drain=True)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        stop.set()
        t.join(60)
        pytest.fail(f"drain did not finish within {timeout_s:.0f}s")
    if "error" in out:
        raise out["error"]
    stats: SinkStats = out["stats"]
    return stats


def test_drain_writes_everything_dead_letters_the_rest_and_commits_the_high_watermarks(
    setup: Setup, records: Any, query: Query
) -> None:
    # Children first, so many of them wait in crm.parked until their account arrives.
    contacts = [records.contact(i, i % 120) for i in range(150)]
    contacts[10] = records.contact(10, 10, email="not-an-address")  # refused by a check constraint
    contacts += [records.contact(900 + i, 9000 + i) for i in range(3)]  # orphans: no such account
    setup.produce("contact", contacts)
    setup.produce("sale", [records.sale(i, i % 120) for i in range(100)])
    setup.produce("case", [records.case(i, i % 120) for i in range(50)])
    setup.produce("account", [records.account(i) for i in range(120)])
    setup.produce_raw("account", b"\x00\x00\x00\x00\x01 not avro at all")  # poison

    stats = drain(setup.params())

    # The refused contact is rejected in its batch, or, when it was parked first, when its account arrives.
    assert (stats.poison, stats.orphaned, stats.rejected + stats.held_dead_lettered) == (1, 3, 4)
    counts = query(setup.dsn, "select (select count(*) from crm.accounts), (select count(*) from crm.contacts), "
                              "(select count(*) from crm.sales), (select count(*) from crm.cases), "
                              "(select count(*) from crm.parked)")
    assert counts == [(120, 149, 100, 50, 0)]
    assert query(setup.dsn, "select count(*) from crm.contacts c join crm.accounts a on a.id = c.account_id "
                            "and a.external_id = c.customer_id") == [(149,)]
    rules = Counter((d["stage"], d["rule"]) for d in setup.dead_letters())
    assert rules == {("sink", "avro_decode"): 1, ("sink", "constraint"): 1, ("sink", "orphan"): 3}
    committed, ends = setup.committed_and_ends()
    assert committed == ends


def test_redelivery_through_kafka_changes_nothing(setup: Setup, records: Any, query: Query,
                                                  group_factory: Callable[[], str]) -> None:
    setup.produce("account", [records.account(i) for i in range(60)])
    setup.produce("sale", [records.sale(i, i) for i in range(60)])
    first = drain(setup.params())
    # Sales read before their accounts were flushed are parked, then written when the accounts land.
    assert first.written + first.parked == 120
    assert query(setup.dsn, "select (select count(*) from crm.accounts), (select count(*) from crm.sales), "
                            "(select count(*) from crm.parked)") == [(60, 60, 0)]
    before = {t: query(setup.dsn, f"select * from crm.{t} order by id") for t in ("accounts", "sales")}
    # A new group reads everything again, as after a crash before the offsets were committed.
    second = drain(setup.params(group_id=group_factory()))
    assert (second.consumed, second.written, second.unchanged) == (120, 0, 120)
    assert {t: query(setup.dsn, f"select * from crm.{t} order by id") for t in ("accounts", "sales")} == before
    # The first group has nothing left to read.
    assert drain(setup.params()).consumed == 0


def test_drain_ends_after_transactional_producers_and_commits_past_the_markers(
    setup: Setup, records: Any, query: Query
) -> None:
    p = Producer({**setup.ep.kafka.client_config(), "transactional.id": f"t-{setup.group}"})
    p.init_transactions(30)
    p.begin_transaction()
    setup.produce("account", [records.account(i) for i in range(30)], producer=p)
    p.commit_transaction(30)
    p.begin_transaction()
    setup.produce("account", [records.account(i) for i in range(100, 110)], producer=p)
    p.abort_transaction(30)  # read_committed: these never reach the target

    stats = drain(setup.params())
    assert stats.written == 30
    assert query(setup.dsn, "select count(*) from crm.accounts") == [(30,)]
    committed, ends = setup.committed_and_ends()
    assert committed == ends


def test_a_running_sink_commits_each_batch_once_written_and_a_stop_returns_committed(
        setup: Setup, records: Any, query: Query) -> None:
    setup.produce("account", [records.account(i) for i in range(25)])
    stop = threading.Event()
    result: dict[str, Any] = {}
    params = setup.params(batch_size=1000, max_batch_age_s=60.0)  # a long age: the batch is what consume gave
    t = threading.Thread(target=lambda: result.setdefault("stats", run_sink(params, stop_event=stop)), daemon=True)
    t.start()
    accounts: dict[tuple[str, int], int] = {}

    def written_and_committed() -> bool:
        if query(setup.dsn, "select to_regclass('crm.accounts') is not null") != [(True,)]:
            return False  # the sink has not migrated the target yet
        if query(setup.dsn, "select count(*) from crm.accounts") != [(25,)]:
            return False
        committed, ends = setup.committed_and_ends()
        accounts.clear()
        accounts.update({tp: off for tp, off in ends.items() if tp[0] == setup.topics["account"]})
        return {tp: committed.get(tp) for tp in accounts} == accounts

    # Written and committed while the sink runs: nothing waits for a stop or a flush timer.
    wait_until(written_and_committed, 60, what="the 25 accounts written and their offsets committed")
    assert t.is_alive()
    stop.set()
    t.join(60)
    assert not t.is_alive()
    assert result["stats"].consumed == 25
    assert query(setup.dsn, "select count(*) from crm.accounts") == [(25,)]
    committed, _ = setup.committed_and_ends()
    assert {tp: committed[tp] for tp in accounts} == accounts


def test_the_runner_starts_as_a_subprocess_and_drains(setup: Setup, records: Any, query: Query) -> None:
    setup.produce("account", [records.account(i) for i in range(20)])
    env = {**os.environ, "SINK_TEST_DSN": setup.dsn}
    args = [sys.executable, "-m", "crmflow.cli.sink", "--group", setup.group, "--dlq-topic", setup.dlq,
            "--target-dsn-env", "SINK_TEST_DSN", "--drain", "--json",
            "--bootstrap-servers", setup.ep.bootstrap_servers, "--registry-url", setup.ep.registry_url]
    for entity, topic in setup.topics.items():
        args += ["--topic", f"{topic}={entity}"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["consumed"] == 20 and stats["written"] == 20
    assert query(setup.dsn, "select count(*) from crm.accounts") == [(20,)]


def test_a_drain_does_not_wait_for_topics_nobody_created(setup: Setup, records: Any, query: Query) -> None:
    setup.produce("account", [records.account(i) for i in range(5)])
    topics = {setup.topics["account"]: "account", f"never-created-{setup.group}": "contact"}
    stats = drain(setup.params(topics=topics), timeout_s=60)
    assert stats.written == 5


def test_sigterm_stops_the_subprocess_cleanly_after_committing(setup: Setup, records: Any, query: Query) -> None:
    setup.produce("account", [records.account(i) for i in range(30)])
    env = {**os.environ, "SINK_TEST_DSN": setup.dsn}
    args = [sys.executable, "-m", "crmflow.cli.sink", "--group", setup.group, "--dlq-topic", setup.dlq,
            "--target-dsn-env", "SINK_TEST_DSN", "--topic", f"{setup.topics['account']}=account", "--json",
            "--bootstrap-servers", setup.ep.bootstrap_servers, "--registry-url", setup.ep.registry_url]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def written() -> bool:
            assert proc.poll() is None, "the sink exited before writing the accounts"
            return _accounts(query, setup.dsn) == 30

        wait_until(written, 90, what="the sink to write the 30 accounts")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["consumed"] == 30
    committed, ends = setup.committed_and_ends()
    accounts = {tp: off for tp, off in ends.items() if tp[0] == setup.topics["account"]}
    assert {tp: committed[tp] for tp in accounts} == accounts


def test_a_rebalance_between_two_runners_loses_nothing(setup: Setup, records: Any, query: Query) -> None:
    def start(stop: threading.Event, out: dict[str, Any]) -> threading.Thread:
        def target() -> None:
            try:
                out["stats"] = run_sink(setup.params(), stop_event=stop)
            except BaseException as exc:  # noqa: BLE001 - checked below
                out["error"] = exc

        t = threading.Thread(target=target, daemon=True)
        t.start()
        return t

    def wait_for_rows(n: int) -> None:
        wait_until(lambda: _accounts(query, setup.dsn) == n, 90, what=f"{n} accounts in the target")

    stops = [threading.Event(), threading.Event()]
    outs: list[dict[str, Any]] = [{}, {}]
    setup.produce("account", [records.account(i) for i in range(50)])
    first = start(stops[0], outs[0])
    wait_for_rows(50)
    second = start(stops[1], outs[1])  # joins the group: the first runner's partitions are revoked
    setup.produce("account", [records.account(i) for i in range(50, 120)])
    wait_for_rows(120)
    for stop in stops:
        stop.set()
    first.join(60)
    second.join(60)
    assert not first.is_alive() and not second.is_alive()
    assert "error" not in outs[0] and "error" not in outs[1], outs
    assert outs[0]["stats"].consumed + outs[1]["stats"].consumed >= 120
    committed, ends = setup.committed_and_ends()
    accounts = {tp: off for tp, off in ends.items() if tp[0] == setup.topics["account"]}
    assert {tp: committed[tp] for tp in accounts} == accounts


def _accounts(query: Query, dsn: str) -> int | None:
    """Rows in crm.accounts, None while the sink has not created the table."""
    if query(dsn, "select to_regclass('crm.accounts') is not null") != [(True,)]:
        return None
    return int(query(dsn, "select count(*) from crm.accounts")[0][0])


def test_a_sink_that_joins_another_gets_a_share_of_every_topic(setup: Setup) -> None:
    """The sinks' group assigns by range: a second sink takes half of each topic's partitions (one of each
    two-partition topic here). Cooperative-sticky gave the newcomer the first partitions in topic-name order
    (all the accounts and the cases), leaving it little work and the machine half idle."""
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=run_sink, args=(setup.params(),), kwargs={"stop_event": s}, daemon=True)
               for s in stops]
    admin = AdminClient(dict[str, str | int | float | bool](setup.ep.kafka.client_config()))

    def held(members: int) -> list[Counter[str]] | None:
        """Partitions per topic of each member, once ``members`` members each hold some and all six are held."""
        desc = admin.describe_consumer_groups([setup.group])[setup.group].result(timeout=10)
        out = [Counter(tp.topic for tp in m.assignment.topic_partitions) for m in desc.members]
        return out if len(out) == members and all(out) and sum(sum(h.values()) for h in out) == 6 else None

    try:
        threads[0].start()
        wait_until(lambda: held(1), 60, what="the first sink to hold every partition")
        threads[1].start()
        shares = wait_until(lambda: held(2), 60, what="two sinks sharing the partitions")
    finally:
        for s in stops:
            s.set()
        for t in threads:
            t.join(60)
    for entity in ("account", "contact"):  # two partitions each: one per sink
        assert [h[setup.topics[entity]] for h in shares] == [1, 1], (entity, shares)


def test_a_drain_told_to_start_when_a_file_exists_connects_first_and_reads_only_after(
        setup: Setup, records: Any, query: Query, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`crmflow migrate` starts its final pass early: set up, then wait for the go file before joining."""
    caplog.set_level("INFO", logger="sinks.runner")
    setup.produce("account", [records.account(i) for i in range(20)])
    go = tmp_path / "go"
    stop = threading.Event()
    out: dict[str, SinkStats] = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "stats", run_sink(setup.params(), stop_event=stop, drain=True, start_when=go)), daemon=True)
    t.start()
    wait_until(lambda: any("waiting for" in r.getMessage() for r in caplog.records), 60, what="the sink set up")
    # Set up (the target migrated), but nothing read or committed yet.
    assert query(setup.dsn, "select count(*) from crm.accounts") == [(0,)]
    committed, _ = setup.committed_and_ends()
    assert all(off < 0 for off in committed.values())
    assert t.is_alive()
    go.touch()
    t.join(180)
    assert not t.is_alive()
    assert out["stats"].written == 20
    assert query(setup.dsn, "select count(*) from crm.accounts") == [(20,)]


def test_a_drain_stopped_while_it_waits_for_its_start_reads_nothing(setup: Setup, records: Any, query: Query,
                                                                    tmp_path: Path) -> None:
    setup.produce("account", [records.account(i) for i in range(5)])
    stop = threading.Event()
    out: dict[str, SinkStats] = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "stats", run_sink(setup.params(), stop_event=stop, drain=True, start_when=tmp_path / "never")), daemon=True)
    t.start()
    wait_until(lambda: query(setup.dsn, "select to_regclass('crm.accounts') is not null") == [(True,)], 60,
               what="the target migrated")
    stop.set()
    t.join(60)
    assert not t.is_alive()
    assert out["stats"].consumed == 0
    assert query(setup.dsn, "select count(*) from crm.accounts") == [(0,)]
