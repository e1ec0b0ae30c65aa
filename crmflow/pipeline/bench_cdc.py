"""``crmflow bench --cdc``: the parallel run (cdc → process → sink) under a change workload, measured per change.

One run: a fresh legacy database with clean demo data (no injected quality problems, so every change is mappable),
a fresh target, its own topic prefix, slot and groups. ``crmflow cdc --init``, ``crmflow process`` and
``crmflow sink`` run as child services (as ``crmflow migrate`` runs its stages); once the initial load has landed,
the change workload of ``crmflow demo-data --changes`` (without its ``large`` kind) runs at the asked rate
(``run_changes``; it logs each change's source commit), then the bench waits until every change has landed in the
target.

Each change's latency is exact: the sink, asked by ``$CRMFLOW_SINK_COMMIT_LOG``, appends per committed batch its
commit time and its change records (with the source commit time the processor put in the record's header); see
:mod:`crmflow.pipeline.bench_stats`. ``--max`` steps the rate up while crmflow keeps up (:data:`P99_BOUND_S`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from crmflow.config import MigrationConfig, load_config
from crmflow.demo_data.changes import KINDS, run_changes
from crmflow.demo_data.legacy_db import load_legacy_db
from crmflow.demo_data.rates import QualityRates
from crmflow.demo_data.run import generate
from crmflow.exceptions import CrmflowError, StackError
from crmflow.pipeline.bench import DEMO_CONFIG, forget_run
from crmflow.pipeline.bench_stats import Landing, Stamp, lag_growth, landings, percentiles, stage_split
from crmflow.pipeline.cpu import CpuMeter
from crmflow.pipeline.services import Service, stop_all, wait_drained
from crmflow.serialization import AvroDecoder
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints, get_stack
from crmflow.stack.tools import free_port
from crmflow.topics import SOURCE_COMMIT_HEADER, cdc_topic, mapped_topic

log = logging.getLogger(__name__)

TABLES: Final = {"customers": "account", "contacts": "contact", "sales": "sale", "tickets": "case"}
TARGET_TABLES: Final = {"account": "accounts", "contact": "contacts", "sale": "sales", "case": "cases"}
#: ``--max``: crmflow keeps up with a rate when every change landed, its lag did not grow and p99 stayed under this.
P99_BOUND_S: Final = 2.0
#: The workload's transaction kinds: those of ``demo-data --changes`` but ``large`` (its 8–24 kB ticket subjects
#: break the mapping's 500-character rule: the DLQ, by design, is not a landing the bench could time).
BENCH_KINDS: Final = tuple((k, w) for k, w in KINDS if k != "large")
MAX_WORKERS: Final = 32
COMMIT_LOG_ENV: Final = "CRMFLOW_SINK_COMMIT_LOG"  # sinks.telemetry.COMMIT_LOG_ENV (a stage the CLI layer spawns)


@dataclass
class Step:
    """One workload at one rate, and what crmflow made of it."""

    rate: float
    seconds: float
    source: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def keeps_up(self) -> bool:
        f = self.figures
        return bool(f.get("all_landed") and not f["lag_growth"]["growing"] and f["latency"]
                    and f["latency"]["p99_s"] < P99_BOUND_S)

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "seconds": self.seconds, "source": self.source, **self.figures,
                "keeps_up": self.keeps_up()}


def _bench_config(root: Path, tag: str, partitions: int) -> Path:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["run"]["name"] = f"benchcdc{tag}"
    raw["kafka"].update(topic_prefix=f"bench-cdc-{tag}", partitions=partitions)
    for name, src in raw["sources"].items():
        src.pop("path", None)
        src.update(kind="table", dsn_env="CRMFLOW_BENCH_LEGACY_DSN", table=f"legacy.{name}")
    raw["cdc"] = {"dsn_env": "CRMFLOW_BENCH_LEGACY_DSN", "tables": [f"legacy.{t}" for t in TABLES],
                  "slot": f"bench_cdc_{tag}", "publication": f"bench_cdc_{tag}", "feedback_interval_s": 0.5}
    raw["target"].update(dsn_env="CRMFLOW_BENCH_TARGET_DSN", batch_size=5000)
    raw.setdefault("dedupe", {})["enabled"] = False
    config = root / f"crmflow-cdc-{tag}.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def workers(rate: float) -> int:
    """Connections of the change workload: each waits for its statements' round trips (a few hundred changes/s at
    best, fewer on a busy machine), so one per 150 changes/s, up to :data:`MAX_WORKERS`."""
    return max(1, min(MAX_WORKERS, math.ceil(rate / 150)))



def _counts(dsn: str, tables: dict[str, str], schema: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {name: int(conn.execute(f"select count(*) from {schema}.{table}").fetchone()[0])  # type: ignore[index]
                for name, table in tables.items()}


def _topic_messages(ep: Endpoints, topics: list[str]) -> int:
    """Messages in ``topics`` (0 while a just-created topic has no leader yet: asked again on the next poll)."""
    try:
        return _count_messages(ep, topics)
    except KafkaException as exc:
        log.debug("watermarks not readable yet: %s", exc)
        return 0


def _count_messages(ep: Endpoints, topics: list[str]) -> int:
    consumer = Consumer({**ep.kafka.for_stage("ops").client_config(), "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        total = 0
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            for p in (meta.partitions if meta is not None and meta.error is None else {}):
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                total += hi - lo
        return total
    finally:
        consumer.close()


def _read_all(ep: Endpoints, topics: list[str]) -> list[Message]:
    """Every committed message now in ``topics`` (read_committed, to each partition's end)."""
    consumer = Consumer({**ep.kafka.for_stage("ops").client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})  # fmt: skip
    try:
        parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                 for p in consumer.list_topics(t, timeout=10).topics[t].partitions]  # fmt: skip
        consumer.assign(parts)
        todo, out = {(tp.topic, tp.partition) for tp in parts}, []
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(5000, 0.5):
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    todo.discard((msg.topic() or "", msg.partition() or 0))
        return out
    finally:
        consumer.close()


def kafka_stamps(ep: Endpoints, prefix: str, registry: Any) -> tuple[dict[Stamp, int], dict[Stamp, int]]:
    """The Kafka timestamps (ms) of each change's change event and of its mapped record, by (entity, id, source
    commit ms); snapshot reads carry no commit time and are left out."""
    decoder = AvroDecoder(registry)
    events: dict[Stamp, int] = {}
    for msg in _read_all(ep, [cdc_topic(prefix, f"legacy.{t}") for t in TABLES]):
        raw = msg.value()
        if raw is None:  # the tombstone after a delete
            continue
        value, key = decoder.decode(raw), decoder.decode(msg.key() or b"")
        if value.get("op") == "r":
            continue
        entity = TABLES[(msg.topic() or "").rsplit(".", 1)[-1]]
        events.setdefault((entity, str(next(iter(key.values()))), int(value["source"]["ts_ms"])), msg.timestamp()[1])
    mapped: dict[Stamp, int] = {}
    for entity in TABLES.values():
        for msg in _read_all(ep, [mapped_topic(prefix, entity)]):
            committed = dict(msg.headers() or []).get(SOURCE_COMMIT_HEADER)
            if committed is not None and msg.key():
                mapped.setdefault((entity, (msg.key() or b"").decode(), int(committed)), msg.timestamp()[1])
    return events, mapped


def histogram_count(metrics_url: str, name: str = "crmflow_cdc_end_to_end_latency_seconds") -> int:
    """Observations of a histogram on a /metrics page, over every label set."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:  # noqa: S310 - our own child's http endpoint
        text = resp.read().decode()
    return int(sum(s.value for fam in text_string_to_metric_families(text) if fam.name == name
                   for s in fam.samples if s.name == f"{name}_count"))


class CdcBench:
    """The services and databases of one ``crmflow bench --cdc`` run; :meth:`step` runs one workload."""

    def __init__(self, ep: Endpoints, *, customers: int, seed: int, partitions: int) -> None:
        self.ep, self.seed = ep, seed
        self.tag = uuid.uuid4().hex[:8]
        self.root = stack_settings().home / "bench" / f"cdc-{self.tag}"
        self.legacy_db, self.target_db = f"bench_legacy_{self.tag}", f"bench_{self.tag}"
        self.commit_log = self.root / "sink-commits.jsonl"
        self.changes_log = self.root / "changes.jsonl"
        self.customers, self.partitions = customers, partitions
        self.services: list[Service] = []
        self.metrics_url = ""
        self.cfg: MigrationConfig | None = None
        self._log_pos = 0
        self._landed: dict[tuple[str, str, int], Landing] = {}
        self._refused = self._parked = 0
        self._log_lines: list[str] = []

    # ---------------------------------------------------------------------------------------- set up

    def start(self) -> float:
        """Databases, demo data, config, the three services; returns when the initial load has landed
        (seconds it took)."""
        ep = self.ep
        data = self.root / "data"
        generate(data, self.customers, self.seed, QualityRates(**{f: 0.0 for f in QualityRates.model_fields}))
        with ep.postgres.connect(autocommit=True) as conn:
            conn.execute(f'create database "{self.legacy_db}"')
            conn.execute(f'create database "{self.target_db}"')
        os.environ["CRMFLOW_BENCH_LEGACY_DSN"] = ep.dsn(self.legacy_db)
        os.environ["CRMFLOW_BENCH_TARGET_DSN"] = ep.dsn(self.target_db)
        rows = sum(load_legacy_db(ep.dsn(self.legacy_db), data).values())
        shutil.rmtree(data, ignore_errors=True)
        config = _bench_config(self.root, self.tag, self.partitions)
        self.cfg = cfg = load_config(config)
        from crmflow.pipeline.migrate import prepare

        prepare(cfg, ep, ep.registry.client(), ep.database(self.target_db))
        started = time.monotonic()
        logs = self.root / "logs"
        self.services.append(Service("cdc", ["cdc", "-c", str(config), "--init"], logs / "cdc.log",
                                     ep.kafka.stage_env("cdc")))
        cdc_topics = [cdc_topic(cfg.kafka.topic_prefix, f"legacy.{t}") for t in TABLES]
        self._wait(lambda: _topic_messages(ep, cdc_topics) >= rows, 1800, "the initial load in the change topics")
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.services.append(Service("process", ["process", "-c", str(config), "--metrics-port", "0", "--instance",
                                                 f"bench-{self.tag}"], logs / "process.log",
                                     ep.kafka.stage_env("process")))
        self.services.append(Service("sink", ["sink", "-c", str(config), "--metrics-port", str(port)],
                                     logs / "sink.log", {**ep.kafka.stage_env("sink"),
                                                         COMMIT_LOG_ENV: str(self.commit_log)}))
        ops = ep.kafka.for_stage("ops")
        wait_drained(ops, f"crmflow-process-{cfg.kafka.topic_prefix}", cdc_topics, self.services, 1800)
        wait_drained(ops, f"crmflow-sink.{cfg.run.name}", [cfg.kafka.mapped_topic(e) for e in TABLES.values()],
                     self.services, 1800)
        took = time.monotonic() - started
        log.info("cdc bench %s: initial load of %d rows landed in %.1fs", self.tag, rows, took)
        return took

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            for s in self.services:
                s.supervise()
            if time.monotonic() > deadline:
                raise StackError(f"cdc bench: {what} not reached after {timeout_s:.0f}s (logs: {self.root / 'logs'})")
            time.sleep(0.5)

    # ------------------------------------------------------------------------------------ one step

    def _read_commits(self) -> None:
        if not self.commit_log.exists():
            return
        with self.commit_log.open(encoding="utf-8") as fh:
            fh.seek(self._log_pos)
            chunk = fh.read()
        complete, _, _rest = chunk.rpartition("\n")
        if complete:
            self._log_pos += len(complete.encode()) + 1
            self._log_lines += complete.split("\n")
            self._landed, self._refused, self._parked = landings(self._log_lines)

    def step(self, rate: float, seconds: float, *, catch_up_s: float | None = None) -> Step:
        """Drive ``rate`` changes/s for ``seconds``, wait until every change landed (or ``catch_up_s`` passed),
        and measure."""
        assert self.cfg is not None
        step = Step(rate, seconds)
        self._read_commits()
        before = set(self._landed)
        self.changes_log.unlink(missing_ok=True)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                for s in self.services:
                    s.note_rss()

        sampler = threading.Thread(target=sample, name="rss", daemon=True)
        sampler.start()
        meter = CpuMeter(self.cpu_parts())
        meter.start()
        t0 = time.time()
        try:
            stats = run_changes(self.ep.dsn(self.legacy_db), rate, seconds, log_path=self.changes_log,
                                seed=self.seed + int(rate), kinds=BENCH_KINDS, workers=workers(rate))
        finally:
            stop.set()
            sampler.join()
        step.source = {"changes": stats.total, "transactions": stats.transactions, "seconds": round(stats.seconds, 2),
                       "rate": round(stats.rate, 1), "reached_rate": stats.rate >= 0.95 * rate,
                       "failed_transactions": stats.failed}
        if not step.source["reached_rate"]:
            log.warning("the change workload reached %.0f changes/s of the %.0f asked (the legacy database or this "
                        "machine is the limit)", stats.rate, rate)
        wanted: Counter[tuple[str, str, bool]] = Counter()  # (entity, id, deleted) → changes
        with self.changes_log.open(encoding="utf-8") as fh:
            for line in fh:
                c = json.loads(line)
                wanted[(TABLES[c["table"].split(".", 1)[1]], c["id"], c["op"] == "d")] += 1
        deadline = time.monotonic() + (catch_up_s if catch_up_s is not None else max(120.0, 2 * seconds))
        missing = sum(wanted.values())
        while True:
            for s in self.services:
                s.supervise()
            self._read_commits()
            new = [v for k, v in self._landed.items() if k not in before]
            have = Counter((v.entity, v.id, v.deleted) for v in new)
            missing = sum(max(0, n - have[k]) for k, n in wanted.items())
            if missing == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if missing:
            gone = [k for k, n in wanted.items() if n > have[k]][:10]
            log.warning("cdc bench: %d changes not in the target after the catch-up wait, e.g. %s", missing, gone)
        new = [v for k, v in self._landed.items() if k not in before and v.source_s >= t0 - 1]
        landed_span = (max(v.landed_s for v in new) - t0) if new else 0.0
        step.figures = {
            "changes_landed": len(new), "changes_missing": missing, "all_landed": missing == 0,
            "landed_after_parking": sum(1 for v in new if v.parked),
            "refused": self._refused, "still_parked": self._parked,
            "crmflow_rate": round(len(new) / landed_span, 1) if landed_span > 0 else 0.0,
            "latency": percentiles(v.latency_s for v in new),
            "lag_growth": lag_growth(new),
            "stages": stage_split(new, *kafka_stamps(self.ep, self.cfg.kafka.topic_prefix, self.ep.registry.client())),
            # average cores busy from the workload's start until the last change landed: where the CPU went
            "cpu_cores": meter.cores(),
        }
        log.info("cdc bench step %.0f/s: %s", rate, step.to_json())
        return step

    def cpu_parts(self) -> dict[str, tuple[int, bool]]:
        """The processes whose CPU a step reports: the three services, this process (the change workload and the
        bench itself), and the stack's Kafka, registry and PostgreSQL (with its backends) when they run here."""
        parts = {s.name: (s.proc.pid, False) for s in self.services}
        parts["workload"] = (os.getpid(), False)
        with contextlib.suppress(CrmflowError, OSError):  # no local stack: its parts' CPU is not reported
            for part in get_stack().status():
                if part.pid:
                    parts[part.name] = (part.pid, part.name == "postgres")
        return parts

    # -------------------------------------------------------------------------------------- results

    def reconcile(self) -> dict[str, Any]:
        """Rows per table in the legacy database and in the target (every source row is clean: equal)."""
        source = _counts(self.ep.dsn(self.legacy_db), {TABLES[t]: t for t in TABLES}, "legacy")
        target = _counts(self.ep.dsn(self.target_db), TARGET_TABLES, "crm")
        return {"source": source, "target": target, "equal": source == target}

    def peak_rss(self) -> dict[str, int]:
        for s in self.services:
            s.note_rss()
        return {s.name: s.peak_rss for s in self.services}

    def close(self, *, keep: bool) -> None:
        stop_all(self.services)
        assert self.ep is not None
        slot = f"bench_cdc_{self.tag}"
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.ep.dsn(self.legacy_db), autocommit=True) as c:
            c.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s "
                      "and not active", (slot,))
        if not keep:
            with self.ep.postgres.connect(autocommit=True) as conn:
                for db in (self.legacy_db, self.target_db):
                    conn.execute(f'drop database if exists "{db}" with (force)')
            forget_run(self.ep, f"bench-cdc-{self.tag}", self.tag)


def run_cdc_bench(ep: Endpoints, rate: float, seconds: float, *, max_rate: bool = False, customers: int = 2000,
                  seed: int = 1, partitions: int = 4, keep: bool = False) -> dict[str, Any]:
    """One workload at ``rate`` (or, with ``max_rate``, steps from ``rate`` up ×1.5 while crmflow keeps up) and
    the figures as one JSON-ready dict."""
    bench = CdcBench(ep, customers=customers, seed=seed, partitions=partitions)
    try:
        load_s = bench.start()
        steps: list[Step] = []
        if not max_rate:
            steps.append(bench.step(rate, seconds))
        else:
            r = rate
            while True:
                s = bench.step(r, seconds, catch_up_s=max(60.0, seconds))
                steps.append(s)
                if not s.keeps_up() or not s.source["reached_rate"]:
                    break
                r = round(r * 1.5)
        metric = histogram_count(bench.metrics_url)
        out: dict[str, Any] = {"initial_load_s": round(load_s, 1), "customers": customers,
                               "steps" if max_rate else "run": [s.to_json() for s in steps] if max_rate
                               else steps[0].to_json(),
                               "latency_metric_count": metric, "peak_rss_bytes": bench.peak_rss(),
                               "reconcile": bench.reconcile(), "logs": str(bench.root / "logs")}
        if max_rate:
            kept = [s for s in steps if s.keeps_up()]
            out["max_rate_kept_up"] = kept[-1].source["rate"] if kept else 0.0
            out["keeps_up_means"] = (f"every change landed, no lag growth (last tenth's p50 ≤ 2× the first's or < "
                                     f"0.25 s above it) and p99 < {P99_BOUND_S:g} s")
            out["limited_by"] = ("source" if steps and not steps[-1].source["reached_rate"] and steps[-1].keeps_up()
                                 else "crmflow")
        return out
    finally:
        bench.close(keep=keep)
