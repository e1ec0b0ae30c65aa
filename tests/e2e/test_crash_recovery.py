"""SIGKILL a stage mid-run, restart it, and prove the target ends exactly right: nothing lost, nothing doubled.

The stages run as the same child processes `crmflow migrate` and `deploy/` run. The kill lands while the
victim has done part of its work (polled, with a deadline): the processor after it committed some raw
offsets, the sink after it wrote some rows. The faust engine's kill is in test_dedupe.py (its restart also
recovers the deduper's state and must land every record once); here the batch engine, the default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import load_config
from crmflow.pipeline.migrate import drain_sink, prepare
from crmflow.pipeline.services import Service, group_lag, wait_drained
from crmflow.stack import Endpoints
from producers.snapshot import run_snapshot
from tests.e2e.conftest import Dataset, Run, assert_target_matches_truth
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def _slow_batches(raw: dict) -> None:  # type: ignore[type-arg]
    raw["target"]["batch_size"] = 200  # many small transactions, so a kill lands between and inside them


def _rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        try:
            return int(conn.execute("select (select count(*) from crm.accounts) + (select count(*) from crm.sales)"
                                    " + (select count(*) from crm.contacts) + (select count(*) from crm.cases)"
                                    ).fetchone()[0])  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            return 0


def _poll(what: str, cond: Callable[[], bool], services: list[Service], timeout_s: float = 300) -> None:
    """Wait for ``cond`` while the services run (each is sampled on every poll: a crash fails at once)."""

    def check() -> bool:
        for s in services:
            s.sample()
        return cond()

    wait_until(check, timeout_s, interval_s=0.05, what=what)


@pytest.mark.also_secure  # make test runs it on the secure stack too
@pytest.mark.parametrize("victim", ["process", "sink"])
def test_sigkill_mid_run_loses_and_doubles_nothing(
    victim: str, small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, tmp_path: Path,
) -> None:
    run = run_factory(small_dataset, _slow_batches)
    cfg = load_config(run.config)
    prepare(cfg, endpoints, registry_client, run.target_dsn)
    stats = run_snapshot(cfg, kafka=endpoints.kafka, registry_client=registry_client,
                         state_dir=tmp_path / "state")
    produced = sum(s.produced for s in stats.sources.values())
    raw_topics = [cfg.kafka.raw_topic(s) for s in cfg.sources]
    process_group = f"crmflow-process-{cfg.kafka.topic_prefix}"

    def start(name: str, n: int) -> Service:
        args = ["process", "-c", str(run.config), "--metrics-port", "0", "--batch-size", "300", "--engine", "batch"] \
            if name == "process" else ["sink", "-c", str(run.config)]
        return Service(f"{name}-{n}", args, tmp_path / f"{name}-{n}.log", {k: run.env[k] for k in run.env})

    processor, sink = start("process", 1), start("sink", 1)
    services = [processor, sink]
    try:
        if victim == "process":
            _poll("the processor to commit part of its input",
                  lambda: 0 < group_lag(endpoints.kafka, process_group, raw_topics) < produced * 0.8,
                  services)
            processor.proc.kill()
            processor.proc.wait(10)
            processor = start("process", 2)
        else:
            _poll("the sink to write part of the records", lambda: 0 < _rows(run.target_dsn) < produced * 0.6,
                  services)
            sink.proc.kill()
            sink.proc.wait(10)
            sink = start("sink", 2)
        services = [processor, sink]
        assert _rows(run.target_dsn) < produced, "the kill came too late to test anything"
        wait_drained(endpoints.kafka, process_group, raw_topics, services, 600)
    finally:
        for s in services:
            s.stop()
    drain_sink(cfg, endpoints, run.target_dsn)

    counts = assert_target_matches_truth(run.target_dsn, small_dataset)
    with psycopg.connect(run.target_dsn) as conn:
        xref = dict(conn.execute("select entity, count(*) from crm.xref group by entity").fetchall())
    assert xref == counts  # one cross-reference per landed record: nothing doubled
