"""`crmflow bench`: generate N customers and migrate them on the real stack, measuring the whole run.

Each run gets its own topic prefix, consumer groups and target database, so benchmarks never disturb
(or profit from) earlier runs. Figures: end-to-end records/s, per stage the records it handled divided by
the time from the start until that stage had finished them (stages run concurrently, so a stage's figure
includes waiting for the one before it), and the peak RSS of every process.

Deduplication is off unless ``dedupe=True`` (``crmflow bench --dedupe``); then the clusters the target
ends with (crm.xref: source account → golden id) are scored pairwise against the generator's truth.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from crmflow.config import load_config
from crmflow.connections import PostgresConnection, as_postgres, kafka_config
from crmflow.demo_data.run import generate
from crmflow.pipeline.migrate import MigrateOptions, MigrationSummary, run_migration
from crmflow.pipeline.services import consumer_groups
from crmflow.pipeline.targets import resolve_target
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints
from processors.dedupe.quality import pairwise_scores

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "crmflow.yaml"


@dataclass(frozen=True)
class BenchResult:
    customers: int
    generate_s: float
    summary: MigrationSummary
    dedupe: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    parked: int | None = None  # children the sink parked for a while (their account was not written yet)

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        written = sum(c.landed for c in s.entities.values())
        stages: dict[str, dict[str, float]] = {}
        for stage, done_s in s.stage_done_s.items():
            n = s.records if stage != "sink" else written
            stages[stage] = {"records_per_second": round(n / done_s, 1) if done_s > 0 else 0.0,
                             "done_after_s": round(done_s, 2)}
        return {
            "customers": self.customers,
            "records": s.records,
            "records_per_second": s.records_per_second,
            "elapsed_s": round(s.elapsed_s, 2),
            "reconciled": s.reconciled,
            "stages": stages,
            "peak_rss_bytes": s.peak_rss_bytes,
            "cpu_s": {k: round(v, 1) for k, v in s.cpu_s.items()},
            "machine_busy_cpu_s": None if s.machine_busy_cpu_s is None else round(s.machine_busy_cpu_s, 1),
            "generate_s": round(self.generate_s, 2),
            **({"sink_parked": self.parked} if self.parked is not None else {}),
            **({"dedupe": self.dedupe} if self.dedupe is not None else {}),
            **({"baseline": {**self.baseline, "ratio": round(
                self.baseline["rows_per_second"] / s.records_per_second, 1) if s.records_per_second else None}}
               if self.baseline is not None else {}),
        }


def _bench_config(root: Path, data: Path, tag: str, partitions: int, dedupe: bool) -> Path:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["run"]["name"] = f"bench{tag}"
    raw["kafka"].update(topic_prefix=f"bench-{tag}", partitions=partitions)
    for src in raw["sources"].values():
        src["path"] = str(data / Path(src["path"]).name)
    raw["target"]["batch_size"] = 5000
    raw["target"]["dsn_env"] = "CRMFLOW_BENCH_TARGET_DSN"
    raw.setdefault("dedupe", {})["enabled"] = dedupe
    config = root / f"crmflow-{tag}.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def run_bench(ep: Endpoints, customers: int, *, seed: int = 1, workers: int = 1, partitions: int = 4,
              keep: bool = False, dedupe: bool = False, engine: str = "batch",
              baseline: Callable[[Path], dict[str, Any] | None] | None = None,
              sink_workers: int | None = None) -> BenchResult:
    """Generate, migrate, score; ``baseline`` (the seeds' pandas script) is timed on the same files after."""
    tag = uuid.uuid4().hex[:8]
    root = stack_settings().home / "bench" / tag
    data = root / "data"
    t0 = time.monotonic()
    generate(data, customers, seed)
    generate_s = time.monotonic() - t0
    config = _bench_config(root, data, tag, partitions, dedupe)

    database = f"bench_{tag}"
    with ep.postgres.connect(autocommit=True) as conn:
        conn.execute(f'create database "{database}"')
    quality: dict[str, Any] | None = None
    parked: int | None = None
    try:
        os.environ["CRMFLOW_BENCH_TARGET_DSN"] = ep.dsn(database)  # the stages resolve it from the config (env)
        cfg = load_config(config)
        summary = run_migration(cfg, config, ep, resolve_target(cfg, ep),
                                MigrateOptions(workers=workers, sink_workers=sink_workers, engine=engine,
                                               logs_dir=root / "logs"))
        if dedupe:
            quality = dedupe_quality(ep.database(database), data / "truth.jsonl")
        with ep.database(database).connect() as conn:
            row = conn.execute("select coalesce(sum(parked), 0) from crm.migration_audit "
                               "where stage = 'sink'").fetchone()
            parked = int(row[0]) if row else None
        measured = baseline(data) if baseline is not None else None
    finally:
        if not keep:
            with ep.postgres.connect(autocommit=True) as conn:
                conn.execute(f'drop database if exists "{database}" with (force)')
            shutil.rmtree(data, ignore_errors=True)
            forget_run(ep, f"bench-{tag}", tag)
    return BenchResult(customers, generate_s, summary, quality, measured, parked)


def forget_run(ep: Endpoints, prefix: str, tag: str) -> None:
    """Delete what a benchmark run left in Kafka and the registry: its topics (named ``prefix.…``), the consumer
    groups whose id holds its ``tag``, and the subjects named after its topics. Without it every run of
    ``crmflow bench`` would leave a dozen topics and their data on the cluster. Best effort: by then the figures
    are measured, so a cluster or registry that refuses only gets a warning naming what was left."""
    admin = AdminClient(kafka_config(ep.kafka.for_stage("ops")))
    try:
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{prefix}.")]
        for future in (admin.delete_topics(topics, operation_timeout=30).values() if topics else ()):
            future.result()
        groups = [g for g in consumer_groups(admin) if tag in g]
        for future in (admin.delete_consumer_groups(groups).values() if groups else ()):
            future.result()
    except KafkaException as exc:
        log.warning("could not delete the benchmark's topics or groups (%s.*): %s", prefix, exc.args[0])
    try:
        registry = ep.registry.client()
        for subject in registry.get_subjects():
            if subject.startswith(f"{prefix}."):
                registry.delete_subject(subject)
                registry.delete_subject(subject, permanent=True)
    except Exception as exc:  # noqa: BLE001 - best effort, see above
        log.warning("could not delete the benchmark's subjects (%s.*): %s", prefix, type(exc).__name__)


def dedupe_quality(target_dsn: PostgresConnection | str, truth_file: Path) -> dict[str, Any]:
    """Pairwise precision, recall and F1 of the target's clusters against the generator's truth clusters; with
    golden contacts in the target (``dedupe.contacts``) and contact clusters in the truth, the same for contacts
    under ``"contacts"``."""
    truth: dict[str, str] = {}
    contact_truth: dict[str, str] = {}
    with truth_file.open() as fh:
        for line in fh:
            t = json.loads(line)
            if t["entity"] == "account" and t["outcome"] == "ok":
                truth[t["source_key"]] = t["cluster"]
            elif t["entity"] == "contact" and t["outcome"] == "ok" and t.get("cluster"):
                contact_truth[t["source_key"]] = t["cluster"]
    with as_postgres(target_dsn).connect() as conn:
        rows = conn.execute("select source_id, golden_id from crm.xref where entity = 'account'").fetchall()
        (accounts,) = conn.execute("select count(*) from crm.accounts").fetchone() or (0,)
        contact_rows = conn.execute(
            "select x.source_id, x.golden_id from crm.xref x join crm.contacts c on c.id = x.target_id "
            "where x.entity = 'contact' and c.contact_golden_id is not null").fetchall()
    predicted = {str(source): str(golden) for source, golden in rows}
    s = pairwise_scores(predicted, truth)
    out: dict[str, Any] = {
        "precision": round(s.precision, 4), "recall": round(s.recall, 4), "f1": round(s.f1, 4),
        "clusters": len(set(predicted.values())), "true_clusters": s.true_clusters,
        "target_accounts": int(accounts), "true_pairs": s.true_pairs, "predicted_pairs": s.predicted_pairs}
    if contact_rows and contact_truth:
        contacts = {str(source): str(golden) for source, golden in contact_rows}
        c = pairwise_scores(contacts, contact_truth)
        out["contacts"] = {"precision": round(c.precision, 4), "recall": round(c.recall, 4), "f1": round(c.f1, 4),
                           "clusters": len(set(contacts.values())), "true_clusters": c.true_clusters}
    return out


@dataclass(frozen=True)
class DedupeCost:
    """``crmflow bench --dedupe-cost N``: N pairs of whole runs, plain then with dedupe, one right after the other.

    A machine's speed drifts (on a small VM by a quarter within minutes), so a dedupe figure is only read against
    a plain run measured beside it: per pair, and mean rate against mean rate over all pairs."""

    pairs: list[tuple[BenchResult, BenchResult]]

    def to_json(self) -> dict[str, Any]:
        plain = [p.summary.records_per_second for p, _ in self.pairs]
        dedupe = [d.summary.records_per_second for _, d in self.pairs]
        per_pair = [_cost(d, p) for p, d in zip(plain, dedupe, strict=True)]
        return {
            "customers": self.pairs[0][0].customers if self.pairs else 0,
            "plain_records_per_second": plain,
            "dedupe_records_per_second": dedupe,
            "cost_percent": {
                "mean_of_rates": _cost(statistics.fmean(dedupe), statistics.fmean(plain)) if self.pairs else None,
                "per_pair": per_pair,
                "median_pair": statistics.median(per_pair) if per_pair else None,
            },
            "dedupe": [d.dedupe for _, d in self.pairs],
            "pairs": [{"plain": p.to_json(), "dedupe": d.to_json()} for p, d in self.pairs],
        }


def _cost(dedupe_rate: float, plain_rate: float) -> float:
    """The share of the plain rate that dedupe costs, in percent."""
    return round(100 * (1 - dedupe_rate / plain_rate), 1) if plain_rate else 0.0


def run_dedupe_cost(ep: Endpoints, customers: int, pairs: int, **options: Any) -> DedupeCost:
    """``pairs`` times :func:`run_bench` plain, then with dedupe, each on its own data and stack objects."""
    done: list[tuple[BenchResult, BenchResult]] = []
    for i in range(pairs):
        plain = run_bench(ep, customers, dedupe=False, **options)
        with_dedupe = run_bench(ep, customers, dedupe=True, **options)
        done.append((plain, with_dedupe))
        log.info("dedupe cost, pair %d of %d: plain %.0f rec/s, dedupe %.0f rec/s, cost %.1f%%", i + 1, pairs,
                 plain.summary.records_per_second, with_dedupe.summary.records_per_second,
                 _cost(with_dedupe.summary.records_per_second, plain.summary.records_per_second))
    return DedupeCost(done)


@dataclass(frozen=True)
class StageBench:
    """The processor alone on raw topics filled beforehand: from its start until its group committed all."""

    engine: str
    dedupe: bool
    records: int  # raw records it consumed (its dedupe topic's are extra work, not counted)
    elapsed_s: float
    cpu_s: float
    peak_rss_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "dedupe": self.dedupe, "records": self.records,
                "elapsed_s": round(self.elapsed_s, 2), "cpu_s": round(self.cpu_s, 2),
                "records_per_second": round(self.records / self.elapsed_s, 1) if self.elapsed_s else 0.0,
                "records_per_cpu_second": round(self.records / self.cpu_s, 1) if self.cpu_s else 0.0,
                "peak_rss_bytes": self.peak_rss_bytes}


def run_stage_bench(ep: Endpoints, customers: int, *, seed: int = 1, partitions: int = 4,
                    engines: tuple[str, ...] = ("batch", "faust"), dedupe: tuple[bool, ...] = (False, True),
                    batch_size: int = 2000) -> list[StageBench]:
    """``crmflow bench --stage process``: per engine and dedupe setting, fill fresh raw topics with the
    snapshot, then run ONE processor worker until its group has committed everything, and time it."""
    from crmflow.pipeline.migrate import prepare, processor_topics
    from crmflow.pipeline.services import Service, wait_drained
    from producers.snapshot import run_snapshot

    root = stack_settings().home / "bench" / f"stage-{uuid.uuid4().hex[:8]}"
    data = root / "data"
    generate(data, customers, seed)
    registry = ep.registry.client()
    results: list[StageBench] = []
    try:
        for engine in engines:
            for with_dedupe in dedupe:
                tag = uuid.uuid4().hex[:8]
                config = _bench_config(root, data, tag, partitions, with_dedupe)
                database = f"bench_{tag}"
                with ep.postgres.connect(autocommit=True) as conn:
                    conn.execute(f'create database "{database}"')
                try:
                    os.environ["CRMFLOW_BENCH_TARGET_DSN"] = ep.dsn(database)
                    cfg = load_config(config)
                    prepare(cfg, ep, registry, ep.database(database))
                    stats = run_snapshot(cfg, kafka=ep.kafka.for_stage("snapshot"), registry_client=registry,
                                         run_id=f"bench-{tag}", state_dir=root / f"state-{tag}")
                    produced = int(sum(s.produced for s in stats.sources.values()))
                    log.info("stage bench %s dedupe=%s: %d raw records ready", engine, with_dedupe, produced)
                    started = time.monotonic()
                    worker = Service(f"process-{engine}", [
                        "process", "-c", str(config), "--metrics-port", "0", "--engine", engine,
                        "--instance", f"bench-{tag}", "--batch-size", str(batch_size)],
                        root / f"process-{tag}.log", ep.kafka.stage_env("process"))
                    try:
                        done = wait_drained(ep.kafka.for_stage("ops"), f"crmflow-process-{cfg.kafka.topic_prefix}",
                                            processor_topics(cfg), [worker], 1800)
                        cpu = _cpu_seconds(worker.proc.pid)
                        worker.sample()
                    finally:
                        worker.stop()
                    results.append(StageBench(engine, with_dedupe, produced, done - started, cpu, worker.peak_rss))
                    r = results[-1]
                    # Figures in words and MiB: a bare 10-digit byte count reads like a phone number to the
                    # log's PII filter, which masks it.
                    log.info("stage bench %s dedupe=%s: %.0f rec/s, %.0f rec/CPU-s, peak RSS %.0f MiB", engine,
                             with_dedupe, r.records / r.elapsed_s, r.records / max(r.cpu_s, 1e-9),
                             r.peak_rss_bytes / 2**20)
                finally:
                    with ep.postgres.connect(autocommit=True) as conn:
                        conn.execute(f'drop database if exists "{database}" with (force)')
                    forget_run(ep, f"bench-{tag}", tag)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return results


def _cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)
