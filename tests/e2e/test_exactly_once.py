"""Exactly-once between topics, proven on the real stack (issue 9): SIGKILLs in the middle of transactions,
and workers added and removed while a migration runs.

The invariant, per committed record: every raw record's output is committed exactly once. The processor
turns each raw record into exactly one record (a mapped child, or a clean account on the dedupe topic) or
one dead letter, and each dedupe-topic record into exactly one golden-record update on the mapped account
topic or one dead letter. A golden record may legitimately be sent many times (once per member that
reaches its cluster), but each update comes from one input record and carries its ``source_position``.
So, read ``read_committed`` from the beginning to the end, the outputs counted by ``source_position``
must equal the inputs counted the same way, each exactly once: a batch whose transaction was cut by a kill
and then processed again by the successor shows up as a count of 2 if its outputs leaked. The same
topics read ``read_uncommitted`` do show those aborted copies: that is the control that the kills landed
inside transactions and that the check would see a leak.

The target must then hold exactly what an uninterrupted run of the same data holds: every source account
cross-referenced to the same golden id, one account per golden id, every child once on its golden
account, every child's fields as the ground truth says.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import MigrationConfig, load_config
from crmflow.pipeline.migrate import drain_sink, prepare, processor_topics
from crmflow.pipeline.services import Service, group_lag, wait_drained
from crmflow.serialization import AvroDecoder
from crmflow.stack import Endpoints
from processors.service import build_stage, dedupe_entities
from producers.snapshot import run_snapshot
from tests.e2e.conftest import Dataset, Run, assert_target_matches_truth
from tests.e2e.probe import Probe
from tests.e2e.test_dedupe import assert_golden_target, golden_of
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SEED = 20261203
KILLS = 3
BATCH_SIZE = "200"  # ~75 transactions for the demo data: most of the run is in flight
PROCESSOR_STAGES = ("process", "dedupe")  # the dead-letter stages the processor writes, in its transactions
CHILDREN = ("contact", "sale", "case")


# ----------------------------------------------------------------------------------- reading topics


@dataclass
class Audit:
    """One read of the processor's inputs and outputs, every record counted by where it came from."""

    raw: Counter[str] = field(default_factory=Counter)  # raw records by position (file:line)
    dedupe_in: Counter[str] = field(default_factory=Counter)  # clean accounts (and contacts) on the dedupe topics
    first: Counter[str] = field(default_factory=Counter)  # outputs of raw records, by source position
    second: Counter[str] = field(default_factory=Counter)  # outputs of dedupe-topic records
    letters: Counter[tuple[str, int, int]] = field(default_factory=Counter)  # processor letters by source
    records: int = 0  # output records read (mapped, dedupe, processor letters)

    def doubled(self) -> dict[str, int]:
        """Outputs committed more than once: position → copies."""
        return {p: n for c in (self.first, self.second) for p, n in c.items() if n > 1}


def read_topics(ep: Endpoints, topics: list[str], *, committed: bool = True) -> dict[str, list[bytes]]:
    """Every value of each topic, from the beginning to its end, ``read_committed`` unless told otherwise."""
    consumer = Consumer({
        "bootstrap.servers": ep.bootstrap_servers, "group.id": f"audit-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "isolation.level": "read_committed" if committed else "read_uncommitted",
    })
    out: dict[str, list[bytes]] = {t: [] for t in topics}
    try:
        md = consumer.list_topics(timeout=10)
        pending = {(t, p) for t in topics for p in md.topics[t].partitions}
        consumer.assign([TopicPartition(t, p, -2) for t, p in pending])  # -2: from the beginning

        def read_some() -> bool:
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is None:
                    out[msg.topic() or ""].append(msg.value() or b"")
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic() or "", msg.partition() or 0))
            return not pending

        wait_until(read_some, timeout_s=60, interval_s=0, what=f"reading {topics} to their end")
    finally:
        consumer.close()
    return out


def audit(ep: Endpoints, registry: SchemaRegistryClient, cfg: MigrationConfig, *, committed: bool = True) -> Audit:
    k = cfg.kafka
    decode = AvroDecoder(registry).decode  # each record in its writer's shape
    raw = [k.raw_topic(name) for name in cfg.sources]
    deduped = dedupe_entities(cfg)  # accounts, and contacts with dedupe.contacts (the default)
    mapped = {e: k.mapped_topic(e) for e in ("account", *CHILDREN)}
    dedupe = [k.dedupe_topic(e) for e in deduped]
    values = read_topics(ep, [*raw, *mapped.values(), *dedupe, k.dlq_topic], committed=committed)
    a = Audit()
    for topic in raw:
        a.raw.update(decode(v)["position"] for v in values[topic])
    stage = build_stage(cfg, registry)  # the dedupe topics carry the processor's own encoding, as it reads them
    for topic in dedupe:
        a.dedupe_in.update(stage.decoder(topic).decode(v)["source_position"] for v in values[topic])
    a.first.update(a.dedupe_in)
    # A deduplicated entity's mapped records are the second stage's outputs (golden updates), the others' the
    # first's. Without dedupe there is no dedupe topic.
    for entity, topic in mapped.items():
        (a.second if entity in deduped else a.first).update(decode(v)["source_position"] for v in values[topic])
    a.records = sum(len(values[t]) for t in (*mapped.values(), *dedupe))
    for value in values[k.dlq_topic]:
        letter = decode(value)
        if letter["stage"] not in PROCESSOR_STAGES:
            continue  # the snapshot's and the sink's letters are not written in the processor's transactions
        a.letters[(letter["source_topic"], letter["source_partition"], letter["source_offset"])] += 1
        (a.first if letter["stage"] == "process" else a.second)[letter["source_position"]] += 1
        a.records += 1
    return a


def assert_exactly_once(ep: Endpoints, registry: SchemaRegistryClient, cfg: MigrationConfig) -> Audit:
    """Read committed, every raw record's output is there exactly once (see the module docs)."""
    a = audit(ep, registry, cfg)
    assert a.raw and max(a.raw.values()) == 1, "the snapshot put every source line on the raw topics once"
    doubled = a.doubled()
    assert not doubled, f"{len(doubled)} inputs have their output committed more than once: {list(doubled.items())[:5]}"
    assert a.first == a.raw, (
        f"raw records without an output: {sorted(set(a.raw) - set(a.first))[:5]}; "
        f"outputs of no raw record: {sorted(set(a.first) - set(a.raw))[:5]}")
    assert a.second == a.dedupe_in, (
        f"clean records without a golden update: {sorted(set(a.dedupe_in) - set(a.second))[:5]}; "
        f"golden updates of no clean account: {sorted(set(a.second) - set(a.dedupe_in))[:5]}")
    twice = {s: n for s, n in a.letters.items() if n > 1}
    assert a.letters and not twice, f"processor dead letters committed more than once: {list(twice.items())[:5]}"
    return a


# --------------------------------------------------------------------------------- the reference run


@dataclass(frozen=True)
class Reference:
    golden: dict[str, str]  # source account → golden id, as an uninterrupted run leaves the target
    audit: Audit


@pytest.fixture(scope="module")
def reference(dedupe_migration: Run, endpoints: Endpoints, registry_client: SchemaRegistryClient) -> Reference:
    """An uninterrupted ``crmflow migrate`` of the same data, with dedupe (the session's, which no test changes)."""
    # The invariant holds on an uninterrupted run (nothing vacuous or mis-keyed in the check itself).
    return Reference(golden_of(dedupe_migration.target_dsn),
                     assert_exactly_once(endpoints, registry_client, load_config(dedupe_migration.config)))


# ------------------------------------------------------------------------------------ watching a run


def _committed_at_least(probe: Probe, topics: list[str], target: int) -> Callable[[], int | None]:
    """The committed count on ``topics`` once it reached ``target``."""
    def check() -> int | None:
        n = probe.committed(topics)
        return n if n is not None and n >= target else None
    return check


def _stable_at_least(probe: Probe, topics: list[str], target: int) -> Callable[[], int | None]:
    """The committed records on ``topics`` once they reached ``target``."""
    def check() -> int | None:
        n = probe.stable(topics)
        return n if n >= target else None
    return check


def _cut_or_done(probe: Probe, inputs: list[str], outputs: list[str], first: bool) -> Callable[[], int | None]:
    """The partitions of ``outputs`` holding an open transaction, once there are any; after the first kill of a
    stratum also -1 once the group committed all of ``inputs`` (asked at most once a second)."""
    asked = [0.0]

    def check() -> int | None:
        if cut := probe.in_flight(outputs):
            return cut
        if not first and time.monotonic() - asked[0] >= 1:
            asked[0] = time.monotonic()
            if group_lag(probe.ep.kafka, probe.group, inputs) == 0:
                return -1
        return None
    return check


def _alive(services: list[Service], cond: Callable[[], Any]) -> Callable[[], Any]:
    """``cond``, after checking that no service died (a dead one raises with its log's tail)."""
    def check() -> Any:
        for s in services:
            s.sample()
        return cond()
    return check


def _restored(log_file: Path) -> list[int]:
    """The state entries a processor restored from the changelog, per restore, from its log."""
    return [int(n) for n in re.findall(r"restored (\d+) state entries", log_file.read_text(errors="replace"))]


@dataclass
class Pipeline:
    run: Run
    cfg: MigrationConfig
    ep: Endpoints
    tmp_path: Path
    produced: int
    sink: Service  # the live sink, running from the start
    started: float = field(default_factory=time.monotonic)

    def processor(self, instance: str, n: int, batch_size: str = BATCH_SIZE) -> Service:
        args = ["process", "-c", str(self.run.config), "--metrics-port", "0", "--batch-size", batch_size,
                "--instance", instance]
        return Service(f"process-{instance}-{n}", args, self.tmp_path / f"process-{instance}-{n}.log",
                       dict(self.run.env))

    def lag(self) -> int:
        return group_lag(self.ep.kafka, f"crmflow-process-{self.cfg.kafka.topic_prefix}",
                         processor_topics(self.cfg))

    def drain(self, processors: list[Service]) -> None:
        """Wait until the group committed everything, stop every stage (SIGTERM), run the final sink pass."""
        try:
            wait_drained(self.ep.kafka, f"crmflow-process-{self.cfg.kafka.topic_prefix}",
                         processor_topics(self.cfg), [*processors, self.sink], 180)
        finally:
            codes = [s.stop(20) for s in [*processors, self.sink]]
        assert codes == [0] * len(codes), f"exit codes of the stages stopped by SIGTERM: {codes}"
        drain_sink(self.cfg, self.ep, self.run.target_dsn)


@pytest.fixture
def pipeline(small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
             registry_client: SchemaRegistryClient, tmp_path: Path) -> Iterator[Pipeline]:
    """The demo data with dedupe on, snapshotted onto this test's raw topics, with a live sink running."""
    run = run_factory(small_dataset, dedupe=True)
    cfg = load_config(run.config)
    prepare(cfg, endpoints, registry_client, run.target_dsn)
    stats = run_snapshot(cfg, kafka=endpoints.kafka, registry_client=registry_client,
                         state_dir=tmp_path / "state")
    sink = Service("sink", ["sink", "-c", str(run.config)], tmp_path / "sink.log", dict(run.env))
    p = Pipeline(run, cfg, endpoints, tmp_path, sum(s.produced for s in stats.sources.values()), sink)
    yield p
    p.sink.stop()


def _batches(log_file: Path) -> int:
    """Batches a processor committed, from its stop message (0 if it never stopped cleanly)."""
    found = re.findall(r"stopped after (\d+) batches", log_file.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def assert_target_as_uninterrupted(p: Pipeline, dataset: Dataset, reference: Reference) -> dict[str, float]:
    scores = assert_golden_target(p.run.target_dsn, dataset)
    golden = golden_of(p.run.target_dsn)
    differing = sorted(s for s in golden if golden[s] != reference.golden.get(s))
    assert not differing, f"{len(differing)} accounts with another golden id than uninterrupted: {differing[:5]}"
    assert golden == reference.golden
    assert_target_matches_truth(p.run.target_dsn, dataset, entities=CHILDREN)
    return scores


# ------------------------------------------------------------------------------------------- tests


def test_sigkills_inside_transactions_commit_every_output_exactly_once(
    pipeline: Pipeline, small_dataset: Dataset, registry_client: SchemaRegistryClient, reference: Reference,
) -> None:
    """KILLS SIGKILLs at seeded random points of the run, each the moment a transaction of the processor is
    seen open on its output topics; each time a worker with the same --instance starts at once (it fences
    the dead one's transactional id, which aborts its open transaction). The processor reads accounts first
    (their raw and dedupe topics), so the first kill lands while clean accounts are resolved (the deduper's
    state is then in the changelog, and the transaction cut holds changelog writes too), the others while
    raw records are mapped."""
    p = pipeline
    k = p.cfg.kafka
    rng = random.Random(SEED)
    probe = Probe(p.ep, p.cfg)
    raw = [k.raw_topic(s) for s in p.cfg.sources]
    dedupe = [k.dedupe_topic("account")]
    accounts = len(small_dataset.ok("account"))
    mapping_outputs = [*(k.mapped_topic(e) for e in CHILDREN), *dedupe, k.dedupe_topic("contact"), k.dlq_topic]
    resolving_outputs = [k.mapped_topic("account"), f"{dedupe[0]}.state"]
    # Where each kill may land, in the order the processor gets there: a random point of the accounts'
    # resolution (accounts go first), then one in each stratum of the mapping.
    plan = [(dedupe, int(accounts * rng.uniform(0.15, 0.6)), resolving_outputs)]
    plan += [(raw, int(p.produced * (0.05 + 0.6 * (i + rng.random()) / (KILLS - 1))), mapping_outputs)
             for i in range(KILLS - 1)]
    processor = p.processor("solo", 1)
    starts = 1
    kills: list[dict[str, Any]] = []
    try:
        for inputs, target, outputs in plan:
            services = [processor, p.sink]
            # The accounts' resolution is counted by its committed outputs (a golden account each on the mapped
            # topic): the group's offsets on the dedupe topic were unreadable through most of it (pending in
            # back-to-back transactions), and were first read with every account resolved.
            reached = (_stable_at_least(probe, [k.mapped_topic("account")], target) if inputs == dedupe
                       else _committed_at_least(probe, inputs, target))
            wait_until(_alive(services, reached), timeout_s=120, interval_s=0.02,
                       what=f"the processor to get {target} records of {inputs} through")
            # Then the first moment a transaction is open: its records are in the log, not committed yet. The
            # transaction seen open may commit before the signal lands (a loaded machine); the dead worker's
            # transaction stays open until its successor fences it, so a kill that missed is seen at once and
            # tried again on the successor's next transaction (at most four times more: a kill between
            # transactions is a crash point too), unless the stratum's inputs are done by then.
            for attempt in range(5):
                cut = wait_until(_alive(services, _cut_or_done(probe, inputs, outputs, first=not attempt)),
                                 timeout_s=60, interval_s=0, what=f"a transaction in flight on {outputs}")
                if cut < 0:
                    break  # this stratum's work is done: no transaction left to cut
                processor.proc.kill()
                processor.proc.wait(10)
                landed = probe.in_flight(outputs)
                starts += 1
                processor = p.processor("solo", starts)  # at once, the same instance: fences the dead one
                services = [processor, p.sink]
                kills.append({"at_s": round(time.monotonic() - p.started, 1), "inputs": inputs[0].rsplit(".", 2)[1],
                              "target": target, "open_partitions": cut, "left_open": landed})
                if landed:
                    break
        assert p.lag() > 0, "the last kill came after the processor had committed everything"
        p.drain([processor])
    finally:
        probe.close()
        processor.stop()
    restored = _restored(processor.log_file)
    print(f"\nkills (of {p.produced} raw records, {accounts} accounts): {json.dumps(kills)}; "
          f"the last worker restored {restored} state entries")
    assert restored and restored[0] > 0, "the worker started after the last kill restored the deduper's state"

    scores = assert_target_as_uninterrupted(p, small_dataset, reference)
    committed = assert_exactly_once(p.ep, registry_client, p.cfg)
    assert committed.records == reference.audit.records, "as many committed outputs as an uninterrupted run"
    uncommitted = audit(p.ep, registry_client, p.cfg, committed=False)
    aborted = uncommitted.records - committed.records
    # The control: the log holds the outputs of the cut transactions, and the successor's copies of them.
    assert aborted > 0 and uncommitted.doubled(), "no kill landed inside a transaction"
    print(f"committed outputs {committed.records}, aborted records in the log {aborted} "
          f"({len(uncommitted.doubled())} inputs with an aborted copy), dedupe scores {scores}")


def test_a_worker_added_and_one_removed_mid_run_commit_every_output_exactly_once(
    pipeline: Pipeline, small_dataset: Dataset, registry_client: SchemaRegistryClient, reference: Reference,
) -> None:
    """One worker starts; once it committed its first batch a second joins (its own --instance); once both
    work and one of them has resolved accounts on its dedupe partitions, that one is stopped (SIGTERM), and
    the other finishes the run alone, restoring the leaver's deduper state from the changelog. The first
    worker takes small batches (a transaction each), so that it is still far from the end of the input when the
    second has started, however long that takes on a busy machine (CI once saw the input done by then)."""
    p = pipeline
    k = p.cfg.kafka
    probe = Probe(p.ep, p.cfg)
    raw = [k.raw_topic(s) for s in p.cfg.sources]
    dedupe = k.dedupe_topic("account")
    accounts = len(small_dataset.ok("account"))
    workers = {"a": p.processor("a", 1, batch_size="25")}
    try:
        joined_at = wait_until(_alive([*workers.values(), p.sink], _committed_at_least(probe, raw, 1)),
                               timeout_s=120, interval_s=0.05, what="the first worker to commit its first batch")
        workers["b"] = p.processor("b", 1)
        services = [*workers.values(), p.sink]

        def resolving_worker() -> str | None:
            """A worker whose dedupe partitions hold committed deduper state (changelog entries on its partitions
            of the state topic: the group's offsets on the dedupe topic are withheld while transactions hold
            pending ones, see ``Probe.stable``)."""
            owned = probe.owned(dedupe)
            for w in workers:
                mine = owned.get(f"{probe.group}-{w}-consumer", [])
                if len(owned) == 2 and mine and probe.stable_of(f"{dedupe}.state", mine) >= accounts // 20:
                    return w
            return None

        # Both in the group, and one of them has resolved accounts on its own dedupe partitions: it leaves.
        leaving = wait_until(_alive(services, resolving_worker), timeout_s=120, interval_s=0.02,
                             what="a worker of two to hold deduper state")
        staying = "b" if leaving == "a" else "a"
        removed_at = probe.committed(raw)
        assert workers[leaving].stop(20) == 0, "the worker stops cleanly on SIGTERM"
        assert p.lag() > 0, "the worker left before the end of the input"
        p.drain([workers[staying]])
    finally:
        probe.close()
        for w in workers.values():
            w.stop()
    batches = {name: _batches(w.log_file) for name, w in workers.items()}
    restored = _restored(workers[staying].log_file)
    print(f"\n{p.produced} raw records: b joined at {joined_at}, {leaving} left at {removed_at}; batches {batches}; "
          f"{staying} restored {restored} state entries")
    assert batches["a"] > 0 and batches["b"] > 0, f"both workers committed batches: {batches}"
    assert any(n > 0 for n in restored), f"{staying} took over the deduper's state from the changelog"

    assert_target_as_uninterrupted(p, small_dataset, reference)
    committed = assert_exactly_once(p.ep, registry_client, p.cfg)
    assert committed.records == reference.audit.records
