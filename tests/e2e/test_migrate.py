"""`crmflow migrate` on generated data: the target matches the ground truth field by field, every reject
is in the DLQ with the truth's rule, and the counts reconcile."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.dlq import read_dead_letters
from crmflow.pipeline.runs import RunStore
from crmflow.stack import Endpoints
from sinks.postgres.migrate import apply_migrations
from tests.e2e.conftest import Dataset, Migrated, Run, assert_target_matches_truth
from tests.e2e.test_dedupe import assert_golden_target, golden_of
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.also_secure  # make test runs it on the secure stack too (TLS, SASL/SCRAM, ACLs, least-privilege roles)
def test_migration_lands_the_ground_truth(
    small_dataset: Dataset, small_migration: Migrated, endpoints: Endpoints,
    registry_client: SchemaRegistryClient,
) -> None:
    run, summary = small_migration.run, small_migration.summary  # the session's, which no test changes
    assert summary["reconciled"] is True

    written = assert_target_matches_truth(run.target_dsn, small_dataset)
    for entity, n in written.items():
        assert summary["entities"][entity]["written"] == n
        assert summary["entities"][entity]["read"] == sum(1 for t in small_dataset.truth if t["entity"] == entity)

    # Every reject of the truth is a dead letter of this run with the same rule, and nothing else is.
    letters = [lt.record for lt in read_dead_letters(endpoints.kafka, registry_client,
                                                     f"{run.prefix}.dlq")]
    got = Counter((r["source_position"], r["rule"]) for r in letters if r["run_id"] == summary["run_id"])
    want = Counter((f'{t["source_file"]}:{t["line"]}', t["rule"]) for t in small_dataset.rejects())
    assert got == want
    assert summary["rejected_by_rule"] == dict(sorted(Counter(t["rule"] for t in small_dataset.rejects()).items()))


def test_test_migration_of_the_first_100_records(small_dataset: Dataset, run_factory: Callable[..., Run]) -> None:
    """The seeds' "migrate 100 records first": --limit 100 reconciles on its own subset."""
    run = run_factory(small_dataset)
    res = run.cli("migrate", "-c", str(run.config), "--json", "--limit", "100")
    assert res.returncode == 0, res.stderr[-3000:]
    summary: dict[str, Any] = json.loads(res.stdout)
    assert summary["reconciled"] is True
    per_entity = summary["entities"]
    # --limit counts produced records; rejected lines before them are read too.
    assert all(100 <= c["read"] <= 110 for c in per_entity.values()), per_entity
    assert per_entity["account"]["written"] >= 95


@pytest.mark.parametrize("dedupe", [False, True], ids=["plain", "dedupe"])
def test_sinks_side_by_side_land_the_ground_truth(
    small_dataset: Dataset, run_factory: Callable[..., Run], request: pytest.FixtureRequest, dedupe: bool,
) -> None:
    """``--sink-workers 3``: once the processor is done, two more sinks join the first one's group for the mapped
    backlog; the target still equals the truth exactly (with dedupe: the same golden records as the session's
    one-sink run, golden merges included) and the run reconciles. The backlog is made certain by holding the
    sinks' writer lock of the target schema (as a merging batch of another sink would) until the two have
    started."""
    run = run_factory(small_dataset, dedupe=dedupe)
    apply_migrations(run.target_dsn)
    run_id = f"sinks-{uuid.uuid4().hex[:8]}"
    logs = RunStore().dir(run_id)
    with psycopg.connect(run.target_dsn, autocommit=True) as lock:
        lock.execute("select pg_advisory_lock(hashtext('crmflow-sink:crm'))")
        proc = subprocess.Popen([sys.executable, "-m", "crmflow", "migrate", "-c", str(run.config), "--json",
                                 "--run-id", run_id, "--sink-workers", "3"],
                                env=run.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for name in ("sink-1.log", "sink-2.log"):
                wait_until(lambda n=name: (logs / n).is_file() and "sink reading" in (logs / n).read_text(), 120,
                           what=f"{name}: the sink to start")
            lock.execute("select pg_advisory_unlock(hashtext('crmflow-sink:crm'))")
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    summary: dict[str, Any] = json.loads(out)
    assert summary["reconciled"] is True
    assert set(summary["peak_rss_bytes"]) >= {"process-0", "sink", "sink-1", "sink-2", "sink-drain"}
    # What each stage cost: every process that worked used CPU, and the machine was busy at least as long.
    cpu = summary["cpu_s"]
    assert all(cpu[name] > 0 for name in ("process-0", "sink", "migrate (snapshot)")), cpu
    assert summary["machine_busy_cpu_s"] >= sum(cpu.values()) * 0.9, (summary["machine_busy_cpu_s"], cpu)
    for name in ("sink", "sink-1", "sink-2", "process-0"):  # each stopped on one SIGTERM, its consumer closed
        assert re.search(r" stopped after \d+ batches", (logs / f"{name}.log").read_text()), name
    if dedupe:
        one_sink = request.getfixturevalue("dedupe_migration")
        assert golden_of(run.target_dsn) == golden_of(one_sink.target_dsn)
        assert golden_of(run.target_dsn, "contact") == golden_of(one_sink.target_dsn, "contact")
        assert_golden_target(run.target_dsn, small_dataset)
        return
    written = assert_target_matches_truth(run.target_dsn, small_dataset)
    for entity, n in written.items():
        assert summary["entities"][entity]["written"] == n
