"""`crmflow bench --stage sink`: the sink alone, on mapped topics filled beforehand.

Generate N customers, run the snapshot and one processor worker until the processor's group committed
everything (the mapped topics are then full and stay so), and then, ``runs`` times: a fresh target database
and a fresh sink consumer group with ``members`` sink processes (the ``crmflow sink`` service migrate runs),
timed from their start until the group has committed every mapped record. Figures per run: records/s, records
per CPU-second of the sink processes (user + system, start-up included), and their peak RSS. The records
counted are those the sink's audit says it wrote, parked or rejected (``crm.migration_audit``), i.e. every
mapped record.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any

from crmflow.config import load_config
from crmflow.demo_data.run import generate
from crmflow.pipeline.bench import _bench_config, _cpu_seconds, forget_run
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkBench:
    """One timed sink run: from its processes' start until its group committed every mapped record."""

    members: int
    batch_size: int
    records: int
    elapsed_s: float
    cpu_s: float
    peak_rss_bytes: int
    parked: int = 0  # records parked for a while because their parent was not written yet

    def to_json(self) -> dict[str, Any]:
        return {"members": self.members, "batch_size": self.batch_size, "records": self.records,
                "parked": self.parked,
                "elapsed_s": round(self.elapsed_s, 2), "cpu_s": round(self.cpu_s, 2),
                "records_per_second": round(self.records / self.elapsed_s, 1) if self.elapsed_s else 0.0,
                "records_per_cpu_second": round(self.records / self.cpu_s, 1) if self.cpu_s else 0.0,
                "peak_rss_bytes": self.peak_rss_bytes}


def run_sink_bench(ep: Endpoints, customers: int, *, seed: int = 1, partitions: int = 4, runs: int = 1,
                   members: int = 1, batch_size: int = 5000) -> list[SinkBench]:
    """Fill the mapped topics once (snapshot + one processor worker), then time ``runs`` fresh sinks on them."""
    from crmflow.pipeline.migrate import prepare, processor_topics
    from crmflow.pipeline.services import Service, stop_all, wait_drained
    from producers.snapshot import run_snapshot

    tag = uuid.uuid4().hex[:8]
    root = stack_settings().home / "bench" / f"sink-{tag}"
    data = root / "data"
    generate(data, customers, seed)
    config = _bench_config(root, data, tag, partitions, dedupe=False)
    registry = ep.registry.client()
    databases: list[str] = []

    def fresh_database() -> str:
        database = f"bench_{tag}_{len(databases)}"
        with ep.postgres.connect(autocommit=True) as conn:
            conn.execute(f'create database "{database}"')
        databases.append(database)
        os.environ["CRMFLOW_BENCH_TARGET_DSN"] = ep.dsn(database)  # the stages resolve it from the config (env)
        return database

    results: list[SinkBench] = []
    try:
        cfg = load_config(config)
        prepare(cfg, ep, registry, ep.database(fresh_database()))
        run_snapshot(cfg, kafka=ep.kafka.for_stage("snapshot"), registry_client=registry, run_id=f"bench-{tag}",
                     state_dir=root / "state")
        worker = Service("process", ["process", "-c", str(config), "--metrics-port", "0",
                                     "--instance", f"bench-{tag}"],
                         root / "process.log", ep.kafka.stage_env("process"))
        try:
            wait_drained(ep.kafka.for_stage("ops"), f"crmflow-process-{cfg.kafka.topic_prefix}",
                         processor_topics(cfg), [worker], 3600)
        finally:
            worker.stop()
        topics = [cfg.kafka.mapped_topic(e) for e in cfg.entities]
        log.info("sink bench: mapped topics filled (%s)", ", ".join(topics))
        for run in range(runs):
            database = fresh_database()
            group = f"crmflow-sink.bench-{tag}-{run}"
            started = time.monotonic()
            sinks = [Service(f"sink-{i}", ["sink", "-c", str(config), "--group", group,
                                           "--instance", f"bench-{tag}-{run}-{i}", "--batch-size", str(batch_size)],
                             root / f"sink-{run}-{i}.log", ep.kafka.stage_env("sink"))
                     for i in range(members)]
            try:
                done = wait_drained(ep.kafka.for_stage("ops"), group, topics, sinks, 3600)
                cpu = sum(_cpu_seconds(s.proc.pid) for s in sinks)
                for s in sinks:
                    s.sample()
            finally:
                stop_all(sinks)
            records, parked = _audited(ep, database)
            results.append(SinkBench(members, batch_size, records, done - started, cpu,
                                     max(s.peak_rss for s in sinks), parked))
            log.info("sink bench: %s", results[-1].to_json())
    finally:
        with ep.postgres.connect(autocommit=True) as conn:
            for database in databases:
                conn.execute(f'drop database if exists "{database}" with (force)')
        shutil.rmtree(data, ignore_errors=True)
        forget_run(ep, f"bench-{tag}", tag)
    return results


def _audited(ep: Endpoints, database: str) -> tuple[int, int]:
    """Mapped records the sink's batches handled (written, unchanged, parked or refused), and how many of them
    it parked, from its audit."""
    with ep.database(database).connect() as conn:
        row = conn.execute("select coalesce(sum(records), 0), coalesce(sum(parked), 0) from crm.migration_audit "
                           "where stage = 'sink'").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
