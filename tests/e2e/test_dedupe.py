"""Deduplication end to end: golden accounts and golden contacts in the target, and the clusters survive a
SIGKILL of the processor.

The clusters are read back from the target (crm.xref: every source account, every source contact → its golden
id) and scored pairwise against the generator's truth clusters; a processor killed mid-run and restarted
recovers its state from the changelog topics and must end with the same clusters as an uninterrupted run (the
session's ``dedupe_migration``, and ``hard_dedupe_migration`` for contacts). The hard profile's contact
clusters must also be exactly what the contact matcher alone makes of the same clean contacts in the order the
processor read them (its dedupe topic).
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import MigrationConfig, load_config
from crmflow.pipeline.migrate import drain_sink, prepare
from crmflow.pipeline.services import Service, wait_drained
from crmflow.stack import Endpoints
from processors.dedupe import Deduper
from processors.dedupe.quality import pairwise_scores
from processors.service import build_stage
from producers.snapshot import run_snapshot
from tests.e2e.conftest import HARD_CONFIG, Dataset, Run, assert_target_matches_truth
from tests.e2e.probe import Probe
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def golden_of(dsn: str, entity: str = "account") -> dict[str, str]:
    """Source customer (or contact) id → golden id, as the target's cross-reference says."""
    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute("select source_id, golden_id from crm.xref where entity = %s", (entity,)).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {str(s): str(g) for s, g in rows}


def assert_golden_contacts(dsn: str, dataset: Dataset) -> dict[str, str]:
    """One contact row per golden contact id (its external id), every source contact cross-referenced to its
    golden contact's row, every row on the account its parent's cross-reference names; returns source contact
    → golden contact id."""
    truth = {t["source_key"] for t in dataset.ok("contact")}
    golden = golden_of(dsn, "contact")
    missing, extra = sorted(truth - set(golden)), sorted(set(golden) - truth)
    assert not missing and not extra, f"contact xref: {len(missing)} missing {missing[:5]}, {len(extra)} extra"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select external_id, contact_golden_id from crm.contacts").fetchall()
        assert sorted(e for e, _ in rows) == sorted(set(golden.values())), "one contact row per golden contact id"
        assert all(e == g for e, g in rows), "a golden contact's row carries its golden contact id"
        wrong = conn.execute(
            "select count(*) from crm.xref x left join crm.contacts c on c.id = x.target_id "
            "where x.entity = 'contact' and (c.id is null or c.external_id <> x.golden_id)").fetchone()
        assert wrong == (0,), "every contact cross-reference points at its golden contact's row"
        parents = conn.execute(
            "select count(*), count(*) filter (where a.external_id is distinct from x.golden_id "
            "or c.golden_id is distinct from x.golden_id) from crm.contacts c "
            "join crm.accounts a on a.id = c.account_id "
            "left join crm.xref x on x.entity = 'account' and x.source_id = c.customer_id").fetchone()
        assert parents == (len(rows), 0), "every golden contact on its parent's golden account"
    return golden


def committed_values(endpoints: Endpoints, topic: str) -> list[bytes]:
    """The committed values of ``topic`` (one partition), in offset order, from its beginning to its end."""
    consumer = Consumer({"bootstrap.servers": endpoints.bootstrap_servers, "group.id": f"read-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})
    out: list[bytes] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assert list(partitions) == [0], "the hard config keeps the dedupe topics to one partition"
        consumer.assign([TopicPartition(topic, 0, -2)])  # -2: from the beginning
        done: list[bool] = []

        def read_some() -> bool:
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is None:
                    out.append(msg.value() or b"")
                elif err.code() == KafkaError._PARTITION_EOF:
                    done.append(True)
            return bool(done)

        wait_until(read_some, timeout_s=60, interval_s=0, what=f"reading {topic} to its end")
    finally:
        consumer.close()
    return out


def matcher_contact_clusters(run: Run, endpoints: Endpoints, registry_client: SchemaRegistryClient,
                             cfg: MigrationConfig) -> dict[str, str]:
    """Source contact → golden contact id, as the contact matcher alone makes it of the clean contacts the
    processor read, in the order it read them (its one dedupe partition, committed records only)."""
    assert cfg.dedupe is not None
    topic = cfg.kafka.dedupe_topic("contact")
    decoder = build_stage(cfg, registry_client).decoder(topic)  # opens sealed values, as the processor does
    values = committed_values(endpoints, topic)
    deduper = Deduper(cfg.dedupe.contact_matcher())
    for i, raw in enumerate(values):
        deduper.process(decoder.decode(raw, origin=f"{topic}@{i}"))
    return dict(deduper.state.clusters)


def partition(assignment: dict[str, str]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    for record, cluster in assignment.items():
        groups[cluster].add(record)
    return {frozenset(g) for g in groups.values()}


def assert_golden_target(dsn: str, dataset: Dataset) -> dict[str, float]:
    """One account per golden id, every source account cross-referenced to it, every child attached to the
    golden account of its customer; returns the pairwise scores against the truth clusters."""
    truth = {t["source_key"]: t["cluster"] for t in dataset.ok("account")}
    golden = golden_of(dsn)
    missing, extra = sorted(set(truth) - set(golden)), sorted(set(golden) - set(truth))
    assert not missing and not extra, (
        f"cross-references: {len(missing)} missing {missing[:5]}, {len(extra)} extra {extra[:5]}")
    with psycopg.connect(dsn) as conn:
        accounts = dict(conn.execute("select external_id, id from crm.accounts").fetchall())
        assert set(accounts) == set(golden.values()), "one account per golden id, and no other"
        dangling = conn.execute(
            "select count(*) from crm.xref x left join crm.accounts a on a.id = x.target_id "
            "where x.entity = 'account' and (a.id is null or a.external_id <> x.golden_id)").fetchone()
        assert dangling == (0,), "every cross-reference points at its golden account"
        for table, entity in (("contacts", "contact"), ("sales", "sale"), ("cases", "case")):
            expected = len(dataset.ok(entity))
            landed, wrong = conn.execute(
                f"select count(*), count(*) filter (where a.external_id is distinct from x.golden_id "
                f"or c.golden_id is distinct from x.golden_id) from crm.{table} c "
                "join crm.accounts a on a.id = c.account_id "
                "left join crm.xref x on x.entity = 'account' and x.source_id = c.customer_id").fetchone()  # type: ignore[misc]
            assert (landed, wrong) == (expected, 0), f"{table}: every child once, on its customer's golden account"
    scores = pairwise_scores(golden, truth)
    return {"precision": scores.precision, "recall": scores.recall, "f1": scores.f1,
            "clusters": float(len(accounts)), "true_clusters": float(scores.true_clusters)}


def _migrate_killing_the_processor(run: Run, dataset: Dataset, endpoints: Endpoints,
                                   registry_client: SchemaRegistryClient, tmp_path: Path, engine: str,
                                   entity: str = "account", batch_size: int = 200) -> None:
    """Migrate with the processor SIGKILLed once it committed part of ``entity``'s golden records, and restarted
    at once. ``batch_size``: the processor's; small enough that the rest of the entity's records take a few dozen
    transactions, so that the kill finds them unresolved."""
    cfg = load_config(run.config)
    prepare(cfg, endpoints, registry_client, run.target_dsn)
    run_snapshot(cfg, kafka=endpoints.kafka, registry_client=registry_client,
                 state_dir=tmp_path / f"state-{run.prefix}")
    group = f"crmflow-process-{cfg.kafka.topic_prefix}"
    topics = [cfg.kafka.raw_topic(s) for s in cfg.sources] + [cfg.kafka.dedupe_topic(e) for e in ("account", "contact")]

    def start(name: str, n: int) -> Service:
        args = (["process", "-c", str(run.config), "--metrics-port", "0", "--batch-size", str(batch_size),
                 "--engine", engine]
                if name == "process" else ["sink", "-c", str(run.config)])
        return Service(f"{name}-{n}-{run.prefix}", args, tmp_path / f"{run.prefix}-{name}-{n}.log", dict(run.env))

    processor, sink = start("process", 1), start("sink", 1)
    services = [processor, sink]
    probe = Probe(endpoints, cfg)
    golden = [cfg.kafka.mapped_topic(entity)]
    try:
        def part_done() -> bool:
            for s in services:
                s.sample()
            # Kill once the processor committed its first golden records of the entity: the deduper has then
            # sent and committed part of its input, and its state is partly in the changelog. The topic's
            # committed end (its last stable offset) is asked, not the group's offsets: fetching those waits
            # while the group's transactions keep coming, and a poll took up to 1.4 s, longer than the
            # processor needed for every contact of this data set. (Waiting for golden records in the target
            # came too late too: the sink lags.)
            return probe.stable(golden) > 0

        wait_until(part_done, 300, interval_s=0.02, what=f"the deduper to commit part of the {entity} records")
        processor.proc.kill()
        processor.proc.wait(10)
        killed_at = probe.stable(golden)  # what the killed worker committed (its open transaction is not)
        # Restart at once: the dead member still holds its partitions until its session times out, so the
        # new worker runs through two rebalances (join, then the dead member's eviction) with events in
        # flight, the case where faust skips and re-reads events (processors/acks.py guards it).
        processor = start("process", 2)
        services = [processor, sink]
        wait_drained(endpoints.kafka, group, topics, services, 600)
        assert probe.stable(golden) > killed_at, "the kill came too late: the restarted worker resolved nothing"
    finally:
        probe.close()
        for s in services:
            s.stop()
    drain_sink(cfg, endpoints, run.target_dsn)


def test_demo_migration_keeps_one_golden_account_per_true_cluster(
    small_dataset: Dataset, dedupe_migration: Run,
) -> None:
    run = dedupe_migration
    scores = assert_golden_target(run.target_dsn, small_dataset)
    assert scores["precision"] >= 0.99 and scores["f1"] >= 0.97, scores
    assert scores["clusters"] < len(small_dataset.ok("account")), "the demo data has duplicates to merge"
    with psycopg.connect(run.target_dsn) as conn:
        evidence = conn.execute("select count(*) from crm.xref where entity = 'account' and evidence is not null"
                                ).fetchone()
    assert evidence is not None and evidence[0] >= len(small_dataset.ok("account")) - scores["clusters"]


@pytest.mark.parametrize("engine", ["batch", "faust"])
def test_killing_the_processor_mid_run_yields_the_same_clusters(
    engine: str, small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, tmp_path: Path, dedupe_migration: Run,
) -> None:
    """The faust engine's only kill test: besides the clusters, every child lands once with the truth's fields
    (what test_crash_recovery.py checks for the batch engine)."""
    killed = run_factory(small_dataset, dedupe=True)
    _migrate_killing_the_processor(killed, small_dataset, endpoints, registry_client, tmp_path, engine)
    assert_golden_target(killed.target_dsn, small_dataset)
    assert_target_matches_truth(killed.target_dsn, small_dataset, entities=("contact", "sale", "case"))
    assert partition(golden_of(killed.target_dsn)) == partition(golden_of(dedupe_migration.target_dsn))
    assert golden_of(killed.target_dsn) == golden_of(dedupe_migration.target_dsn), "golden ids are the founders' ids"
    # Contacts are resolved in the stream too (dedupe.contacts, the default): the demo profile has no duplicate
    # contact, so each stays its own golden contact, through the kill as without it.
    contacts = assert_golden_contacts(killed.target_dsn, small_dataset)
    assert contacts == golden_of(dedupe_migration.target_dsn, "contact") == {c: c for c in contacts}


def test_demo_profile_contacts_are_each_their_own_golden_contact(small_dataset: Dataset,
                                                                 dedupe_migration: Run) -> None:
    """No duplicate contacts in the demo profile: none merged, every contact lands once with its own values."""
    contacts = assert_golden_contacts(dedupe_migration.target_dsn, small_dataset)
    assert contacts == {c: c for c in contacts}, "no contact merged"
    assert_target_matches_truth(dedupe_migration.target_dsn, small_dataset, entities=("contact",))
    with psycopg.connect(dedupe_migration.target_dsn) as conn:
        assert conn.execute("select count(*) from crm.golden_merges where entity = 'contact'").fetchone() == (0,)


def test_hard_profile_contacts_resolve_in_the_stream_as_the_matcher_alone_does(
    hard_dataset: Dataset, hard_dedupe_migration: Run, endpoints: Endpoints, registry_client: SchemaRegistryClient,
    tmp_path: Path,
) -> None:
    run = hard_dedupe_migration
    cfg = load_config(run.config)
    golden = assert_golden_contacts(run.target_dsn, hard_dataset)
    everything = matcher_contact_clusters(run, endpoints, registry_client, cfg)
    # The matcher saw every clean contact; the sink dead-letters those whose account never comes (orphans).
    not_landed = {t["source_key"] for t in hard_dataset.truth if t["entity"] == "contact" and t["outcome"] != "ok"}
    assert set(golden) <= set(everything) and set(everything) - set(golden) <= not_landed
    alone = {c: g for c, g in everything.items() if c in golden}
    differ = sorted((c, golden.get(c), alone.get(c)) for c in {*golden, *alone} if golden.get(c) != alone.get(c))
    assert not differ, f"the stream's contact clusters are the matcher's on the same records: {len(differ)} differ, " \
        f"first {differ[:10]}, stream {len(set(golden.values()))} clusters, matcher {len(set(alone.values()))}"
    truth = {t["source_key"]: t["cluster"] for t in hard_dataset.ok("contact")}
    scores = pairwise_scores(golden, truth)
    assert scores.precision >= 0.99, scores
    assert len(set(golden.values())) < len(golden), "the hard profile has duplicate contacts to merge"
    assert scores.correct_pairs > 0, scores
    with psycopg.connect(run.target_dsn) as conn:
        evidence = conn.execute("select count(*) from crm.xref where entity = 'contact' and evidence is not null"
                                ).fetchone()
    assert evidence is not None and evidence[0] >= len(golden) - len(set(golden.values())), "merges carry evidence"
    # What reads the target agrees: validate finds every source contact through its golden contact.
    done = run.cli("validate", "-c", str(run.config), "--json", "--out", str(tmp_path))
    report = json.loads(done.stdout)
    assert done.returncode == 0, (report["reasons"], report["discrepancies"][:5])
    contact = report["entities"]["contact"]
    assert contact["missing"] == 0 and contact["merged"] == len(golden) - len(set(golden.values())), contact


def test_killing_the_processor_mid_run_yields_the_same_contact_clusters(
    hard_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, tmp_path: Path, hard_dedupe_migration: Run,
) -> None:
    killed = run_factory(hard_dataset, dedupe=True, base=HARD_CONFIG)
    _migrate_killing_the_processor(killed, hard_dataset, endpoints, registry_client, tmp_path, "batch", "contact",
                                   batch_size=20)
    golden = assert_golden_contacts(killed.target_dsn, hard_dataset)
    cfg = load_config(killed.config)
    alone = matcher_contact_clusters(killed, endpoints, registry_client, cfg)
    assert golden == {c: g for c, g in alone.items() if c in golden}, (
        "restored from the changelog, the contact deduper decided as if never killed")
    assert partition(golden) == partition(golden_of(hard_dedupe_migration.target_dsn, "contact"))
    assert golden == golden_of(hard_dedupe_migration.target_dsn, "contact")
