"""`crmflow migrate`: register schemas, run snapshot → process → sink until drained, and reconcile.

The processor and the sink run as child processes (the same commands `deploy/` runs as services); the
snapshot runs in this process. When the processor's consumer group has committed every raw record, the
processors and the live sink stop, and a final in-process sink pass drains what is left, resolving or
dead-lettering parked children. Then every entity is reconciled:
``read = written + rejected + filtered + merged``, counted from the snapshot, the target's cross-reference
(which run last delivered each record) and the dead-letter topic (letters of this run, one per source record).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import MigrationConfig
from crmflow.dlq import read_dead_letters
from crmflow.pipeline.services import Service, wait_drained
from crmflow.registry import register_all
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints
from producers.kafka import ensure_topics
from producers.runs import new_run_id
from producers.snapshot import run_snapshot
from sinks.params import SinkParams
from sinks.postgres.migrate import apply_migrations
from sinks.runner import run_sink

log = logging.getLogger(__name__)


@dataclass
class EntityCounts:
    """Per entity: ``read`` = ``written`` (cross-referenced in the target) + ``rejected`` + ``filtered``.

    With deduplication, ``written`` still counts every source record (each has its cross-reference);
    ``golden`` is how many target accounts they became and ``merged`` how many of them were folded into
    another record's golden account (``written - golden``)."""

    read: int = 0
    written: int = 0
    rejected: int = 0
    filtered: int = 0
    merged: int = 0
    golden: int | None = None

    @property
    def reconciled(self) -> bool:
        return self.read == self.written + self.rejected + self.filtered


@dataclass
class MigrationSummary:
    run_id: str
    entities: dict[str, EntityCounts]
    elapsed_s: float
    stage_done_s: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    rejected_by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(c.read for c in self.entities.values())

    @property
    def reconciled(self) -> bool:
        return all(c.reconciled for c in self.entities.values())

    @property
    def records_per_second(self) -> float:
        return round(self.records / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "reconciled": self.reconciled,
            "entities": {
                e: {"read": c.read, "written": c.written, "rejected": c.rejected, "filtered": c.filtered,
                    "merged": c.merged, **({"golden": c.golden} if c.golden is not None else {})}
                for e, c in sorted(self.entities.items())
            },
            "rejected_by_rule": dict(sorted(self.rejected_by_rule.items())),
            "records_per_second": self.records_per_second,
        }


@dataclass(frozen=True)
class MigrateOptions:
    run_id: str | None = None
    limit: int | None = None
    workers: int = 1
    drain_timeout_s: float = 1800.0
    progress: bool = True
    logs_dir: Path | None = None


def prepare(cfg: MigrationConfig, ep: Endpoints, registry: SchemaRegistryClient, target_dsn: str) -> None:
    """Schemas registered (BACKWARD), every topic created, the target schema migrated."""
    register_all(registry)
    k = cfg.kafka
    topics = [k.raw_topic(s) for s in cfg.sources] + [k.mapped_topic(e) for e in cfg.entities] + [k.dlq_topic]
    if cfg.dedupe_enabled:
        topics.append(k.dedupe_topic("account"))
    ensure_topics(ep.bootstrap_servers, topics, k.partitions, k.replication_factor)
    apply_migrations(target_dsn)


def run_migration(
    cfg: MigrationConfig, config_path: Path, ep: Endpoints, target_dsn: str, opts: MigrateOptions = MigrateOptions()
) -> MigrationSummary:
    started = time.monotonic()
    registry = SchemaRegistryClient({"url": ep.registry_url})
    prepare(cfg, ep, registry, target_dsn)
    run_id = opts.run_id or new_run_id(cfg.run.name)
    logs = opts.logs_dir or stack_settings().home / "runs" / run_id
    env = _service_env(cfg, target_dsn)
    log.info("run %s: logs in %s", run_id, logs, extra={"run_id": run_id})
    processors = [
        Service(f"process-{i}", ["process", "-c", str(config_path), "--metrics-port", "0"],
                logs / f"process-{i}.log", env)
        for i in range(opts.workers)
    ]
    sink = Service("sink", ["sink", "-c", str(config_path)], logs / "sink.log", env)
    services = [*processors, sink]
    done: dict[str, float] = {}
    try:
        stats = run_snapshot(cfg, bootstrap_servers=ep.bootstrap_servers, registry_client=registry,
                             run_id=run_id, limit=opts.limit)
        done["snapshot"] = time.monotonic() - started
        done["process"] = wait_drained(ep.bootstrap_servers, f"crmflow-process-{cfg.kafka.topic_prefix}",
                                       processor_topics(cfg), services, opts.drain_timeout_s) - started
        for s in services:
            s.sample()
            s.stop()
        drain_sink(cfg, ep, target_dsn)
        done["sink"] = time.monotonic() - started
    finally:
        for s in services:
            s.stop()
    elapsed = time.monotonic() - started
    summary = MigrationSummary(run_id, {}, elapsed, done)
    for name, src in stats.sources.items():
        counts = summary.entities.setdefault(cfg.sources[name].entity, EntityCounts())
        counts.read += src.read
        counts.filtered += src.filtered
    _count_written(summary, target_dsn, run_id)
    _count_rejected(summary, ep, registry, cfg.kafka.dlq_topic, run_id)
    summary.peak_rss_bytes = {s.name: s.peak_rss for s in services}
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    summary.peak_rss_bytes["migrate (snapshot + final sink)"] = own_peak
    return summary


def processor_topics(cfg: MigrationConfig) -> list[str]:
    """The topics the processor's consumer group reads: the raw topics, and the dedupe topic if on."""
    topics = [cfg.kafka.raw_topic(s) for s in cfg.sources]
    if cfg.dedupe_enabled:
        topics.append(cfg.kafka.dedupe_topic("account"))
    return topics


def drain_sink(cfg: MigrationConfig, ep: Endpoints, target_dsn: str) -> None:
    """The final sink pass: write what the mapped topics still hold, resolve or dead-letter parked children."""
    run_sink(SinkParams.from_config(cfg, bootstrap_servers=ep.bootstrap_servers, registry_url=ep.registry_url,
                                    target_dsn=target_dsn), drain=True)


def _service_env(cfg: MigrationConfig, target_dsn: str) -> dict[str, str]:
    """The child services read the target DSN from the env var the config names."""
    env = {"PYTHONUNBUFFERED": "1"}
    if cfg.target is not None and not os.environ.get(cfg.target.dsn_env):
        env[cfg.target.dsn_env] = target_dsn
    return env


def _count_written(summary: MigrationSummary, target_dsn: str, run_id: str) -> None:
    with psycopg.connect(target_dsn) as conn:
        for entity, n in conn.execute(
            "select entity, count(*) from crm.xref where run_id = %s group by entity", (run_id,)
        ):
            summary.entities.setdefault(entity, EntityCounts()).written = int(n)
        row = conn.execute(
            "select count(*), count(distinct golden_id) from crm.xref "
            "where entity = 'account' and run_id = %s and golden_id is not null", (run_id,)
        ).fetchone()
    if row is not None and row[0]:
        counts = summary.entities.setdefault("account", EntityCounts())
        counts.golden = int(row[1])
        counts.merged = int(row[0]) - int(row[1])


def _count_rejected(
    summary: MigrationSummary, ep: Endpoints, registry: SchemaRegistryClient, dlq_topic: str, run_id: str
) -> None:
    """One rejection per source record of this run: a record re-delivered after a crash may have been
    dead-lettered twice, so letters are keyed by where the record came from."""
    seen: dict[tuple[str, str], str] = {}
    for letter in read_dead_letters(ep.bootstrap_servers, registry, dlq_topic):
        r = letter.record
        if r["run_id"] != run_id:
            continue
        origin = r["source_position"] or f'{r["source_topic"]}[{r["source_partition"]}]@{r["source_offset"]}'
        seen[(r["entity"] or "unknown", origin)] = r["rule"]
    by_rule: dict[str, int] = defaultdict(int)
    for (entity, _), rule in seen.items():
        summary.entities.setdefault(entity, EntityCounts()).rejected += 1
        by_rule[rule] += 1
    summary.rejected_by_rule = dict(by_rule)
