"""`crmflow bench`'s runs (never a speed assertion): `--stage sink`, the sink timed alone on mapped topics filled once;
`--dedupe-cost`, pairs of whole runs, plain then with dedupe.

The tests that run benches of `bench-<tag>` topics share this file, so that they share a worker (the suite
distributes whole files) and never run beside each other: the sink bench's check that it left nothing behind
counts every such topic, group and subject on the stack."""

from __future__ import annotations

import re

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.pipeline.bench import run_dedupe_cost
from crmflow.pipeline.bench_sink import run_sink_bench
from crmflow.pipeline.services import consumer_groups
from crmflow.stack import Endpoints

pytestmark = pytest.mark.e2e


def _left(admin: AdminClient, registry: SchemaRegistryClient) -> tuple[set[str], set[str], set[str]]:
    """The sink benches' topics, consumer groups and registry subjects now on the stack."""
    topics = {t for t in admin.list_topics(timeout=10).topics if re.match(r"bench-[0-9a-f]{8}\.", t)}
    groups = {g for g in consumer_groups(admin) if re.match(r"crmflow-(sink\.bench-|process-bench-)[0-9a-f]{8}", g)}
    subjects = {s for s in registry.get_subjects() if re.match(r"bench-[0-9a-f]{8}\.", s)}
    return topics, groups, subjects


def test_each_run_is_a_fresh_sink_that_writes_every_mapped_record_into_its_own_database(
    endpoints: Endpoints, admin: AdminClient, registry_client: SchemaRegistryClient
) -> None:
    with endpoints.postgres.connect(autocommit=True) as conn:
        before = {r[0] for r in conn.execute("select datname from pg_database where datname like 'bench\\_%'")}
    kafka_before = _left(admin, registry_client)

    rows = run_sink_bench(endpoints, 30, runs=2, batch_size=200)

    assert len(rows) == 2
    # A run that reused the group or the database of the one before would find nothing left to write.
    assert rows[0].records > 30
    assert rows[1].records == rows[0].records
    for r in rows:
        assert r.elapsed_s > 0 and r.cpu_s > 0 and r.peak_rss_bytes > 0
        assert r.to_json()["records_per_second"] > 0
    with endpoints.postgres.connect(autocommit=True) as conn:
        after = {r[0] for r in conn.execute("select datname from pg_database where datname like 'bench\\_%'")}
    # bench_<tag>_<run> are this bench's (other tests' benches run alongside, e.g. bench_legacy_<tag> of --cdc)
    ours = {d for d in after - before if re.fullmatch(r"bench_[0-9a-f]+_\d+", d)}
    assert not ours, "the bench's target databases were dropped"
    # Nor does it leave its topics, groups or subjects on the cluster (a dozen topics and their data per run).
    left = [after_ - before_ for after_, before_ in zip(_left(admin, registry_client), kafka_before, strict=True)]
    assert left == [set(), set(), set()], "the bench deleted its topics, consumer groups and subjects"


def test_a_pair_is_a_plain_run_and_a_dedupe_run_of_the_same_data_and_its_cost_is_read_from_both(
    endpoints: Endpoints,
) -> None:
    cost = run_dedupe_cost(endpoints, 120, 1, workers=1)

    [(plain, dedupe)] = cost.pairs
    assert plain.summary.reconciled and dedupe.summary.reconciled
    assert plain.summary.records == dedupe.summary.records > 120, "the same generated data both times"
    assert plain.dedupe is None, "the plain run does not deduplicate"
    assert dedupe.dedupe is not None and dedupe.dedupe["clusters"] <= dedupe.dedupe["true_clusters"] + 5
    p, d = plain.summary.records_per_second, dedupe.summary.records_per_second
    assert p > 0 and d > 0
    figures = cost.to_json()
    assert figures["plain_records_per_second"] == [p] and figures["dedupe_records_per_second"] == [d]
    assert figures["cost_percent"] == {"mean_of_rates": round(100 * (1 - d / p), 1),
                                       "per_pair": [round(100 * (1 - d / p), 1)],
                                       "median_pair": round(100 * (1 - d / p), 1)}
    assert figures["pairs"][1 - 1]["dedupe"]["dedupe"] == dedupe.dedupe
