"""The transactional batch runtime on the real Kafka and registry, driving small stages written here.

Proves what the runtime owns: outputs and input offsets committed together (read_committed sees each
output once, the group's lag reaches 0 past transaction markers), poison messages dead-lettered without
stalling the partition, partition-local state restored from the changelog by a successor, and a second
instance with the same transactional id fencing the first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.dlq import DeadLetterWriter, read_dead_letters
from crmflow.pipeline.services import group_lag
from crmflow.runtime import BatchStage, InRecord, OutRecord, RuntimeOptions, StageOutput, StateWrite
from crmflow.runtime.loop import FencedError, TransactionalRuntime
from crmflow.runtime.stage import Decoder, Encoder
from crmflow.serialization import AvroCodec, ParsedSchema, topic_subject
from crmflow.stack import Endpoints
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

SCHEMA = ParsedSchema.from_str(
    '{"type": "record", "name": "Count", "namespace": "io.crmflow.test", '
    '"fields": [{"name": "key", "type": "string"}, {"name": "n", "type": "long"}]}')


class _OneCodec(BatchStage):
    """A test stage whose input topics are ``sources``, every one read and written with ``codec``."""

    sources: list[str]
    codec: AvroCodec

    @property
    def topics(self) -> Sequence[str]:
        return self.sources

    def decoder(self, topic: str) -> Decoder:
        return self.codec

    def encoder(self, topic: str) -> Encoder:
        return self.codec


class Counter(_OneCodec):
    """Counts records per key, per partition (state), and sends the running count on."""

    name = "process"

    def __init__(self, source: str, out: str, codec: AvroCodec, *more: str) -> None:
        """Counts the records of ``source`` (and of each of ``more``: every input topic has its own state and
        changelog, as the processor's dedupe topics of accounts and contacts do)."""
        self.source, self.out, self.codec = source, out, codec
        self.sources = [source, *more]
        self.changelogs = {s: f"{s}.state" for s in self.sources}
        self.counts: dict[tuple[str, int], dict[str, int]] = {}
        self.restored: list[tuple[str, int]] = []

    def process(self, batch: Sequence[InRecord]) -> StageOutput:
        out = StageOutput()
        for i, rec in enumerate(batch):
            key = rec.value["key"]
            if key == "reject-me":
                out.rejections.append(_rejection(i))
                continue
            counts = self.counts.setdefault((rec.topic, rec.partition), {})
            counts[key] = counts.get(key, 0) + 1
            out.records.append(OutRecord(self.out, key.encode(), {"key": key, "n": counts[key]}))
            out.state.append(StateWrite(rec.topic, rec.partition, key.encode(), str(counts[key]).encode()))
        return out

    def restore(self, topic: str, partition: int, entries: Mapping[bytes, bytes]) -> None:
        assert topic in self.changelogs
        self.counts[(topic, partition)] = {k.decode(): int(v) for k, v in entries.items()}
        self.restored.append((topic, partition))

    def release(self, topic: str, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.counts.pop((topic, p), None)


def _rejection(index: int) -> Any:
    from crmflow.runtime import Rejection

    return Rejection(index, "process", "test_rule", "refused by the test stage", field="key")


def _read_committed(bootstrap: str, topic: str, partitions: int = 1) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "isolation.level": "read_committed",
                         "enable.partition.eof": True, "enable.auto.commit": False})
    codec_values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        ends = 0
        while ends < partitions:
            for msg in consumer.consume(1000, 2.0):
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    ends += 1
                elif err is None:
                    codec_values.append(msg.value() or b"")
    finally:
        consumer.close()
    return [{"raw": v} for v in codec_values]


@pytest.fixture
def setup(endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
          group_factory: Callable[[], str]) -> Callable[..., tuple[TransactionalRuntime, Counter]]:
    source = topic_factory("rt-in", partitions=2)
    out = topic_factory("rt-out", partitions=2)
    dlq = topic_factory("rt-dlq")
    group = group_factory()
    codec = AvroCodec(registry_client, topic_subject(source), SCHEMA)

    def make(instance: str = "a", batch_size: int = 50,
             client_config: dict[str, Any] | None = None) -> tuple[TransactionalRuntime, Counter]:
        stage = Counter(source, out, codec)
        opts = RuntimeOptions(kafka=endpoints.kafka, group_id=group,
                              transactional_id=f"{group}-{instance}", dlq_topic=dlq, batch_size=batch_size,
                              batch_timeout_s=0.1, client_config=client_config or {})
        return TransactionalRuntime(stage, opts, DeadLetterWriter(None, registry_client, dlq)), stage

    make.source, make.out, make.dlq, make.group, make.codec = source, out, dlq, group, codec  # type: ignore[attr-defined]
    return make


def _produce(bootstrap: str, topic: str, codec: AvroCodec, keys: list[str], poison: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, key in enumerate(keys):
        producer.produce(topic, key=key.encode(), value=codec.encode({"key": key, "n": 0}))
        if i < poison:
            producer.produce(topic, key=key.encode(), value=b"\x00\x00\x00garbage")
    assert producer.flush(30) == 0


def _run(runtime: TransactionalRuntime) -> threading.Thread:
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    return thread


def test_outputs_and_offsets_commit_together_and_poison_is_dead_lettered(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, setup: Any,
) -> None:
    keys = [f"k{i % 7}" for i in range(300)] + ["reject-me"]
    _produce(endpoints.bootstrap_servers, setup.source, setup.codec, keys, poison=3)
    runtime, _ = setup()
    thread = _run(runtime)
    try:
        wait_until(lambda: group_lag(endpoints.kafka, setup.group, [setup.source]) == 0, 60,
                   what="the group to commit everything, past the transaction markers")
    finally:
        runtime.stop()
        thread.join(30)
    outputs = _read_committed(endpoints.bootstrap_servers, setup.out, 2)
    assert len(outputs) == 300, "each input's output committed once"
    counts = sorted(setup.codec.decode(o["raw"])["n"] for o in outputs)
    assert counts.count(1) == 7 and max(counts) == 43, "the state counted each key's records once"
    letters = list(read_dead_letters(endpoints.kafka, registry_client, setup.dlq))
    rules = sorted(lt.record["rule"] for lt in letters)
    assert rules == ["avro_decode"] * 3 + ["test_rule"]
    assert all(lt.record["error"] and "garbage" not in lt.record["error"] for lt in letters)


def test_a_successor_restores_the_committed_state_from_the_changelog(
    endpoints: Endpoints, setup: Any,
) -> None:
    _produce(endpoints.bootstrap_servers, setup.source, setup.codec, [f"k{i % 5}" for i in range(100)])
    first, _ = setup("a")
    thread = _run(first)
    try:
        wait_until(lambda: group_lag(endpoints.kafka, setup.group, [setup.source]) == 0, 60,
                   what="the first worker to finish")
    finally:
        first.stop()
        thread.join(30)
    _produce(endpoints.bootstrap_servers, setup.source, setup.codec, [f"k{i % 5}" for i in range(100)])
    second, stage = setup("b")
    thread = _run(second)
    try:
        wait_until(lambda: group_lag(endpoints.kafka, setup.group, [setup.source]) == 0, 60,
                   what="the successor to finish")
    finally:
        second.stop()
        thread.join(30)
    assert sorted(stage.restored) == [(setup.source, 0), (setup.source, 1)]
    counts = [setup.codec.decode(o["raw"])["n"] for o in _read_committed(endpoints.bootstrap_servers, setup.out, 2)]
    assert len(counts) == 200 and max(counts) == 40, "the successor went on counting from the restored state"


def test_a_new_instance_with_the_same_transactional_id_fences_the_old_one(
    endpoints: Endpoints, setup: Any,
) -> None:
    _produce(endpoints.bootstrap_servers, setup.source, setup.codec, ["k1"] * 20)
    old, _ = setup("same", batch_size=5)
    errors: list[BaseException] = []

    def run_old() -> None:
        try:
            old.run()
        except FencedError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run_old, daemon=True)
    thread.start()
    wait_until(lambda: old.batches > 0, 60, what="the old instance to commit a batch")
    new, _ = setup("same")
    new_thread = _run(new)
    try:
        wait_until(new.ready.is_set, 60, what="the new instance to initialise its transactions")
        # The old one's next transaction is refused: it stops with FencedError rather than committing.
        _produce(endpoints.bootstrap_servers, setup.source, setup.codec, [f"k2-{i}" for i in range(20)])
        wait_until(lambda: errors or not thread.is_alive(), 60, what="the old instance to be fenced")
        wait_until(lambda: group_lag(endpoints.kafka, setup.group, [setup.source]) == 0, 60,
                   what="the new instance to finish")
    finally:
        old.stop()
        new.stop()
        thread.join(30)
        new_thread.join(30)
    assert errors and "fenced" in str(errors[0])
    assert len(_read_committed(endpoints.bootstrap_servers, setup.out, 2)) == 40


def test_each_state_topic_is_restored_from_its_own_changelog(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
) -> None:
    """Two state topics (as the processor's account and contact dedupe topics): each one's state writes go to
    its own changelog, and a successor restores each partition of each from its own."""
    first_in, second_in = topic_factory("rt-a", partitions=2), topic_factory("rt-b", partitions=1)
    out, dlq, group = topic_factory("rt-out", partitions=2), topic_factory("rt-dlq"), group_factory()
    codec = AvroCodec(registry_client, topic_subject(first_in), SCHEMA)

    def make(instance: str) -> tuple[TransactionalRuntime, Counter]:
        stage = Counter(first_in, out, codec, second_in)
        opts = RuntimeOptions(kafka=endpoints.kafka, group_id=group, transactional_id=f"{group}-{instance}",
                              dlq_topic=dlq, batch_size=30, batch_timeout_s=0.1)
        return TransactionalRuntime(stage, opts, DeadLetterWriter(None, registry_client, dlq)), stage

    def run_to_end(runtime: TransactionalRuntime) -> None:
        thread = _run(runtime)
        try:
            wait_until(lambda: group_lag(endpoints.kafka, group, [first_in, second_in]) == 0, 60,
                       what="the worker to commit everything")
        finally:
            runtime.stop()
            thread.join(30)

    _produce(endpoints.bootstrap_servers, first_in, codec, [f"a{i % 3}" for i in range(60)])
    _produce(endpoints.bootstrap_servers, second_in, codec, [f"b{i % 2}" for i in range(40)])
    run_to_end(make("one")[0])
    changelogs = {t: len(_read_committed(endpoints.bootstrap_servers, f"{t}.state", n))
                  for t, n in ((first_in, 2), (second_in, 1))}
    assert changelogs[first_in] == 60 and changelogs[second_in] == 40, "each topic's state in its own changelog"

    _produce(endpoints.bootstrap_servers, first_in, codec, [f"a{i % 3}" for i in range(30)])
    _produce(endpoints.bootstrap_servers, second_in, codec, [f"b{i % 2}" for i in range(20)])
    successor, stage = make("two")
    run_to_end(successor)
    assert sorted(stage.restored) == sorted([(first_in, 0), (first_in, 1), (second_in, 0)])
    latest: dict[str, int] = {}
    for o in _read_committed(endpoints.bootstrap_servers, out, 2):
        value = codec.decode(o["raw"])
        latest[value["key"]] = max(latest.get(value["key"], 0), value["n"])
    assert latest == {"a0": 30, "a1": 30, "a2": 30, "b0": 30, "b1": 30}, "each topic counted on from its own state"


class _Sizes(Counter):
    """A counter that notes the size of every batch it is given."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sizes: list[int] = []

    def process(self, batch: Sequence[InRecord]) -> StageOutput:
        self.sizes.append(len(batch))
        return super().process(batch)


@pytest.mark.parametrize("linger_s", [0.02, None], ids=["natural", "full-batch"])
def test_natural_batching_goes_on_with_a_trickle_and_fills_batches_from_a_backlog(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
    group_factory: Callable[[], str], linger_s: float | None,
) -> None:
    """A record that arrives alone is processed after ``linger_s``, not after the idle wait a full batch would
    take (``batch_timeout_s``, long here); a backlog still comes in full batches. The full-batch mode, which
    waits, is the control: it must not see the lone record in time."""
    source, out, dlq, group = topic_factory("rt-nat"), topic_factory("rt-out"), topic_factory("rt-dlq"), group_factory()
    codec = AvroCodec(registry_client, topic_subject(source), SCHEMA)
    stage = _Sizes(source, out, codec)
    opts = RuntimeOptions(kafka=endpoints.kafka, group_id=group, transactional_id=f"{group}-a", dlq_topic=dlq,
                          batch_size=100, batch_timeout_s=6.0, linger_s=linger_s)
    runtime = TransactionalRuntime(stage, opts, DeadLetterWriter(None, registry_client, dlq))
    _produce(endpoints.bootstrap_servers, source, codec, [f"k{i}" for i in range(1000)])
    thread = _run(runtime)
    try:
        wait_until(lambda: group_lag(endpoints.kafka, group, [source]) == 0, 60, what="the backlog to be committed")
        assert max(stage.sizes) == 100, "a backlog fills a batch"
        before = runtime.records
        _produce(endpoints.bootstrap_servers, source, codec, ["lone"])
        try:
            wait_until(lambda: runtime.records > before, 3, what="the lone record to be processed")
            seen = True
        except AssertionError:
            seen = False
        assert seen == (linger_s is not None), "natural batching takes a lone record; a full-batch wait holds it"
    finally:
        runtime.stop()
        thread.join(30)


class _Order(_OneCodec):
    """Produces nothing; notes the topic of every record of every committed batch, in order."""

    name = "sink"

    def __init__(self, topics: Sequence[str], first: Sequence[str], codec: AvroCodec, work_s: float = 0.0) -> None:
        self.sources, self.first_topics, self.codec = list(topics), list(first), codec
        #: What a batch takes, as a sink's write of it does: with none, a batch of this stage costs only its
        #: transaction (1-2 ms), and a backlog the tests time their steps against is read before they act.
        self.work_s = work_s
        self.batches: list[list[str]] = []
        self._pending: list[str] = []
        self.processed = 0
        #: Once ``hold_at`` records were processed, the next batch waits until ``go`` is set (``held`` is set
        #: then): the test's producer acts while the backlog is known to be unread, however busy the machine.
        self.hold_at: int | None = None
        self.held, self.go = threading.Event(), threading.Event()

    def process(self, batch: Sequence[InRecord]) -> StageOutput:
        if self.hold_at is not None and self.processed >= self.hold_at and not self.go.is_set():
            self.held.set()
            self.go.wait(120)
        self.processed += len(batch)
        self._pending = [r.topic for r in batch]
        time.sleep(self.work_s)
        return StageOutput()

    def committed(self, output: StageOutput) -> None:
        self.batches.append(self._pending)  # a batch whose transaction failed is processed again: noted once


def _first_topic_runtime(endpoints: Endpoints, registry_client: SchemaRegistryClient,
                         topic_factory: Callable[..., str], group_factory: Callable[[], str], parents: int,
                         children: int, batch_size: int = 100, fetch_bytes: int = 1024,
                         **opts: Any) -> tuple[TransactionalRuntime, _Order, str, str, str]:
    parent, child = topic_factory("rt-parent", partitions=2), topic_factory("rt-child", partitions=2)
    dlq, group = topic_factory("rt-dlq"), group_factory()
    codec = AvroCodec(registry_client, topic_subject(parent), SCHEMA)
    _produce(endpoints.bootstrap_servers, child, codec, [f"c{i}" for i in range(children)])
    _produce(endpoints.bootstrap_servers, parent, codec, [f"p{i}" for i in range(parents)])
    # 20 ms a batch: the backlogs below last at least 2.5 s (50,000 children in batches of 400) and 4 s (20,000
    # parents in batches of 100) however fast the machine is, several times first_hold_max_s (0.5 s) and a turn.
    stage = _Order([child, parent], [parent], codec, work_s=0.02)
    # Small fetches (a few dozen records per partition), so that the topics' records would interleave from the
    # first batches on, as a large backlog's do.
    runtime = TransactionalRuntime(stage, RuntimeOptions(
        kafka=endpoints.kafka, group_id=group, transactional_id=f"{group}-a", dlq_topic=dlq, batch_size=batch_size,
        batch_timeout_s=0.1, client_config={"max.partition.fetch.bytes": fetch_bytes}, **opts),
        DeadLetterWriter(None, registry_client, dlq))
    return runtime, stage, parent, child, group


def test_the_first_topics_backlog_is_read_before_the_other_topics(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
) -> None:
    """The sink's parents first: a backlog of the first topic that arrives while the other topic's own backlog
    is being read is read before the rest of it (the other topics' partitions are paused while the first topic
    holds a batch or more of unread records); every record is still read exactly once."""
    runtime, stage, parent, child, group = _first_topic_runtime(
        endpoints, registry_client, topic_factory, group_factory, parents=0, children=50_000, batch_size=400)
    thread = _run(runtime)
    try:
        wait_until(lambda: runtime.records >= 800, 60, what="the children's backlog to be read")
        _produce(endpoints.bootstrap_servers, parent, stage.codec, [f"p{i}" for i in range(2000)])
        produced = runtime.records  # children read by the time every parent is in Kafka
        wait_until(lambda: group_lag(endpoints.kafka, group, [parent, child]) == 0, 120,
                   what="both topics to be committed")
    finally:
        runtime.stop()
        thread.join(30)
    seen = [t for b in stage.batches for t in b]
    assert seen.count(parent) == 2000 and seen.count(child) == 50_000, "every record once"
    assert produced < 40_000, f"the children's backlog was still being read when the parents came ({produced})"
    last_parent = len(seen) - seen[::-1].index(parent)
    before = seen[:last_parent].count(child)
    assert before < produced + 5 * 400, (
        f"{before - produced} children read after the parents came, before the last parent: they waited")
    arrived = next(i for i, b in enumerate(stage.batches) if parent in b)
    parents_read = stage.batches[arrived].count(parent)
    for batch in stage.batches[arrived + 1:]:  # the batch they arrived in was taken before their backlog was seen
        if child in batch:
            assert 2000 - parents_read < 400, (
                f"a child record was read while {2000 - parents_read} parent records were still unread")
        parents_read += batch.count(parent)


def test_a_first_topic_that_never_runs_dry_does_not_starve_the_others(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
) -> None:
    """After ``first_hold_max_s`` of pause, it is the other topics' turn although the first topic still holds
    a backlog: records that come to the other topic while a long backlog of the first is read are read before
    that backlog is. The stage holds its batch after 400 parents until the children are in Kafka (CI once
    produced them only after the whole backlog was read); small batches that take 20 ms each make the rest of
    the backlog outlast several holds and turns (without the 20 ms, CI read it in less than one hold). The
    children have two partitions: a turn lasts until each of them is read to its end, not only until a first
    batch brought some children."""
    runtime, stage, parent, child, group = _first_topic_runtime(
        endpoints, registry_client, topic_factory, group_factory, parents=20_000, children=0, batch_size=100,
        fetch_bytes=4 * 1024 * 1024, first_hold_max_s=0.5)
    stage.hold_at = 400
    thread = _run(runtime)
    try:
        wait_until(stage.held.is_set, 60, what="the parents' backlog to be read")
        _produce(endpoints.bootstrap_servers, child, stage.codec, [f"c{i}" for i in range(300)])
        stage.go.set()
        wait_until(lambda: group_lag(endpoints.kafka, group, [parent, child]) == 0, 120,
                   what="both topics to be committed")
    finally:
        stage.go.set()
        runtime.stop()
        thread.join(30)
    seen = [t for b in stage.batches for t in b]
    assert seen.count(parent) == 20_000 and seen.count(child) == 300, "every record once"
    last_child = len(seen) - seen[::-1].index(child)
    unread = 20_000 - seen[:last_child].count(parent)
    assert unread >= 1000, f"the children waited until the parents' backlog was down to {unread}"
    # One turn reads both children's partitions (a turn that ended at its first batch of children left the
    # other partition to later turns: 300-600 parents read in between, 4 turns).
    between = seen[seen.index(child):last_child].count(parent)
    assert between < 100, f"{between} parents read between the first and the last child"
    # A turn is given only while the children have records to read: once they are read, the parents' backlog
    # is read on without pausing it for a turn that would find nothing (~75 turns of 1.5 s before).
    assert 1 <= runtime.turns <= 2, f"{runtime.turns} turns for 300 children"


def test_a_paused_partition_that_leaves_and_comes_back_is_read_again(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
) -> None:
    """Children's partitions paused (parents first) move to a second member and come back when it leaves: they
    are read again (librdkafka keeps a pause across a revocation), and every record is read once."""
    parent, child = topic_factory("rt-parent", partitions=1), topic_factory("rt-child", partitions=4)
    dlq, group = topic_factory("rt-dlq"), group_factory()
    codec = AvroCodec(registry_client, topic_subject(parent), SCHEMA)
    _produce(endpoints.bootstrap_servers, child, codec, [f"c{i}" for i in range(2000)])
    _produce(endpoints.bootstrap_servers, parent, codec, [f"p{i}" for i in range(30_000)])

    def member(name: str) -> tuple[TransactionalRuntime, _Order]:
        stage = _Order([child, parent], [parent], codec)
        return TransactionalRuntime(stage, RuntimeOptions(
            kafka=endpoints.kafka, group_id=group, transactional_id=f"{group}-{name}", dlq_topic=dlq,
            batch_size=200, batch_timeout_s=0.1, session_timeout_ms=6000),
            DeadLetterWriter(None, registry_client, dlq)), stage

    first, first_stage = member("a")
    second, second_stage = member("b")
    threads = [_run(first)]
    try:
        wait_until(lambda: first._paused, 60, what="the children's partitions to be paused")
        threads.append(_run(second))
        wait_until(lambda: second._assigned, 60, what="the second member to take partitions")
        second.stop()
        threads[1].join(30)
        wait_until(lambda: group_lag(endpoints.kafka, group, [parent, child]) == 0, 90,
                   what="every partition to be read to its end by the first member")
    finally:
        first.stop()
        second.stop()
        for t in threads:
            t.join(30)
    seen = [t for s in (first_stage, second_stage) for b in s.batches for t in b]
    assert seen.count(parent) == 30_000 and seen.count(child) == 2000, "every record once"


def test_an_eager_rebalance_keeps_the_state_of_partitions_that_come_back_and_restores_the_rest(
    endpoints: Endpoints, setup: Any,
) -> None:
    """With the range assignor every rebalance revokes all: a partition that comes back with nothing committed on
    it meanwhile keeps its state; one another member wrote on is read again from the changelog."""
    def produce_round() -> None:  # 10 records of each of k0..k4 on each partition
        producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers})
        for i in range(100):
            key = f"k{i % 5}"
            value = setup.codec.encode({"key": key, "n": 0})
            producer.produce(setup.source, partition=i % 2, key=key.encode(), value=value)
        assert producer.flush(30) == 0

    def drained(what: str) -> None:
        wait_until(lambda: group_lag(endpoints.kafka, setup.group, [setup.source]) == 0, 90, what=what)

    def member(instance: str) -> tuple[TransactionalRuntime, Counter]:
        runtime, stage = setup(instance, client_config={"partition.assignment.strategy": "range"})
        return runtime, stage

    produce_round()
    a, a_stage = member("a")
    threads = [_run(a)]
    b, b_stage = member("b")
    try:
        drained("the first member alone")
        assert sorted(a_stage.restored) == [(setup.source, 0), (setup.source, 1)]
        threads.append(_run(b))
        wait_until(lambda: len(b._assigned) == 1 and len(a._assigned) == 1, 60, what="one partition each")
        (mine,) = a._assigned
        (theirs,) = b._assigned
        produce_round()
        drained("both members")
        assert a_stage.restored == [(setup.source, 0), (setup.source, 1)], "a's partition kept its state"
        assert b_stage.restored == [theirs]
        b.stop()
        threads[1].join(30)
        wait_until(lambda: len(a._assigned) == 2, 60, what="the first member to take both again")
        produce_round()
        drained("the first member alone again")
    finally:
        for r in (a, b):
            r.stop()
        for t in threads:
            t.join(30)
    assert a_stage.restored == [(setup.source, 0), (setup.source, 1), theirs], (
        f"{mine} kept, {theirs} (b counted on it) read again")
    counts = [setup.codec.decode(o["raw"])["n"] for o in _read_committed(endpoints.bootstrap_servers, setup.out, 2)]
    assert len(counts) == 300
    assert max(counts) == 30, "every key's count went on from the right state on both partitions"
    assert sorted(counts).count(30) == 10, "each of 5 keys on each of 2 partitions reached 30"
