"""`crmflow migrate`: register schemas, run snapshot → process → sink until drained, and reconcile.

The processors and the sinks run as child processes (the same commands `deploy/` runs as services; ``workers``
processors and ``sink_workers`` sinks, by default as many as processors, members of one consumer group each);
the snapshot runs in this process. When the processors' group has committed every raw record, the processors
stop; when the sinks' group has committed every mapped record, the sinks stop, and a final sink pass (one
process) drains what is left, resolving or dead-lettering parked children. Then every entity is reconciled:
``read = inserted + updated + unchanged + rejected + filtered``, counted from the snapshot (over the whole
run, also what an earlier invocation of the same run id read), the sink's audit of this run, and the
dead-letter topic (letters of this run, one per source record).

Before anything moves, every part of the stack must answer (:func:`~crmflow.pipeline.health.require_reachable`).
While the run goes on, a :class:`~crmflow.pipeline.health.KafkaWatch` reports outages of Kafka, the
registry and the target (the stages wait with backoff and carry on; a stage that exits because of one is
started again) and decides when a broker outage is final (``--infra-grace``); the run then stops its
stages and raises :class:`~crmflow.exceptions.InfrastructureError`, and ``crmflow migrate --run-id ID``
resumes it once Kafka is back. A signal stops it the same way
(:class:`~crmflow.exceptions.RunInterruptedError`). Each run keeps ``run.json`` (its state and, at the
end, its summary) and ``summary.txt`` in its run directory, which ``crmflow runs`` lists.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import KafkaException
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import MigrationConfig
from crmflow.connections import KafkaConnection, PostgresConnection, as_postgres
from crmflow.dlq import read_dead_letters
from crmflow.exceptions import CrmflowError, InfrastructureError
from crmflow.pipeline.health import KafkaWatch, require_reachable
from crmflow.pipeline.letters import update_ledger
from crmflow.pipeline.run_report import write_run_report
from crmflow.pipeline.runs import RunStore
from crmflow.pipeline.services import (
    Service,
    busy_cpu_s,
    group_lag,
    run_to_completion,
    stop_all,
    wait_drained,
)
from crmflow.pipeline.targets import Target
from crmflow.pipeline.timeline import ThroughputSampler
from crmflow.registry import register_all
from crmflow.stack import Endpoints
from producers.kafka import ensure_topics
from producers.runs import new_run_id
from producers.snapshot import run_snapshot
from sinks.params import SinkParams
from sinks.postgres.migrate import apply_migrations
from sinks.postgres.report import run_counts
from sinks.runner import run_sink

log = logging.getLogger(__name__)


@dataclass
class EntityCounts:
    """Per entity: ``read`` = ``inserted`` + ``updated`` + ``unchanged`` + ``rejected`` + ``filtered``.

    ``inserted``/``updated``/``unchanged`` count source records by what their delivery did to the target
    (a re-run of the same data is all unchanged). With deduplication every source account (and contact, with
    ``dedupe.contacts``) is counted (each has its cross-reference); ``golden`` is how many target accounts
    (contacts) they became and ``merged`` how many were folded into another record's golden record.
    ``flagged`` counts values the cleansing nulled or kept with a quality flag, by flag."""

    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    filtered: int = 0
    merged: int = 0
    golden: int | None = None
    flagged_records: int = 0
    flagged: dict[str, int] = field(default_factory=dict)

    @property
    def written(self) -> int:
        """Records whose delivery changed the target (inserted or updated)."""
        return self.inserted + self.updated

    @property
    def landed(self) -> int:
        """Records that are in the target after this run, changed or not."""
        return self.inserted + self.updated + self.unchanged

    @property
    def reconciled(self) -> bool:
        return self.read == self.landed + self.rejected + self.filtered

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "read": self.read, "inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged,
            "written": self.written, "rejected": self.rejected, "filtered": self.filtered, "merged": self.merged,
            "flagged_records": self.flagged_records, "flagged": dict(sorted(self.flagged.items())),
            "reconciled": self.reconciled,
        }
        if self.golden is not None:
            out["golden"] = self.golden
        return out


@dataclass
class MigrationSummary:
    run_id: str
    entities: dict[str, EntityCounts]
    elapsed_s: float
    stage_done_s: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    #: CPU seconds per stage process (and the snapshot's own), and the whole machine's busy CPU seconds over
    #: the run (every process: the stack's too), to read a throughput figure against what it cost.
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine_busy_cpu_s: float | None = None
    rejected_by_rule: dict[str, int] = field(default_factory=dict)
    target: str = ""
    resumed: bool = False
    #: Dependencies that went away during the run and came back (the stages waited): dependency, down_s.
    outages: list[dict[str, Any]] = field(default_factory=list)

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
            "resumed": self.resumed,
            "target": self.target,
            "entities": {e: c.to_json() for e, c in sorted(self.entities.items())},
            "rejected_by_rule": dict(sorted(self.rejected_by_rule.items())),
            "records": self.records,
            "elapsed_s": round(self.elapsed_s, 1),
            "records_per_second": self.records_per_second,
            "stage_done_s": {k: round(v, 1) for k, v in self.stage_done_s.items()},
            "peak_rss_bytes": dict(self.peak_rss_bytes),
            "cpu_s": {k: round(v, 1) for k, v in self.cpu_s.items()},
            "machine_busy_cpu_s": None if self.machine_busy_cpu_s is None else round(self.machine_busy_cpu_s, 1),
            "outages": list(self.outages),
        }


class StageProgress(Protocol):
    """What the orchestration tells a front end (see ``crmflow.cli.progress``)."""

    def start(self, source: str, *, total: int | None, completed: int, unit: str) -> None: ...

    def update(self, source: str, completed: int) -> None: ...

    def finish(self, source: str) -> None: ...

    def stage(self, name: str, completed: int, total: int | None) -> None: ...

    def done(self, name: str) -> None: ...


@dataclass(frozen=True)
class MigrateOptions:
    run_id: str | None = None
    limit: int | None = None
    workers: int = 1
    sink_workers: int | None = None  # None: as many as workers
    engine: str = "batch"
    drain_timeout_s: float = 1800.0
    infra_grace_s: float = 900.0
    logs_dir: Path | None = None


def extra_sinks(backlog: int | None, batch_size: int, sink_workers: int) -> int:
    """How many sinks join the first one for the mapped backlog left when the processors are done: up to
    ``sink_workers - 1``, one per two batches of backlog (a sink costs a process start and a rebalance; a
    backlog the first sink writes in a batch or two is not worth them); all of them when the backlog is
    unknown."""
    if backlog is None:
        return sink_workers - 1
    return max(0, min(sink_workers - 1, backlog // (2 * batch_size)))


#: About how long a sink takes from its spawn to its first batch (a process start, then a rebalance that waits for
#: the first sink to finish the batch it writes): the others are started that long before the processors are
#: done, so their start-up overlaps the processors' last seconds instead of the sinks' tail.
SINK_START_S = 5.0


class DrainForecast:
    """Whether a group is due to drain within a lead time, from the lags it is fed (one per poll): the lag over
    its rate of fall in the last few seconds."""

    def __init__(self, lead_s: float = SINK_START_S, window_s: float = 3.0) -> None:
        self.lead_s = lead_s
        self.window_s = window_s
        self._seen: deque[tuple[float, int]] = deque()

    def due(self, lag: int, now: float) -> bool:
        seen = self._seen
        seen.append((now, lag))
        while len(seen) > 2 and now - seen[1][0] >= self.window_s:
            seen.popleft()
        if lag == 0:
            return True
        (t0, lag0) = seen[0]
        if now - t0 < self.window_s / 2 or lag0 <= lag:  # not enough readings yet, or the lag is not falling
            return False
        return lag / ((lag0 - lag) / (now - t0)) <= self.lead_s


def _lag_or_none(kafka: KafkaConnection | str, group: str, topics: list[str]) -> int | None:
    try:
        return group_lag(kafka, group, topics, timeout_s=10.0)
    except (KafkaException, RuntimeError) as exc:
        log.debug("lag of %s not readable: %s", group, exc)
        return None


class RunControl:
    """Why a run must stop early, set from a signal handler or the Kafka watch; read by every stage."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reason: CrmflowError | None = None

    def request_stop(self, reason: CrmflowError) -> None:
        if self.reason is None:
            self.reason = reason
        self.stop.set()

    def check(self) -> CrmflowError | None:
        return self.reason if self.stop.is_set() else None


TargetLike = Target | PostgresConnection | str


def as_target(cfg: MigrationConfig, target: TargetLike) -> Target:
    """A :class:`Target`, also from a bare DSN (tests and tools that made their own database)."""
    if isinstance(target, Target):
        return target
    return Target(as_postgres(target), cfg.target.schema_name if cfg.target else "crm", "given DSN")


def prepare(cfg: MigrationConfig, ep: Endpoints, registry: SchemaRegistryClient, target: TargetLike) -> None:
    """Schemas registered (BACKWARD), every topic created, the target schema migrated."""
    target = as_target(cfg, target)
    register_all(registry)
    k = cfg.kafka
    topics = [k.raw_topic(s) for s in cfg.sources] + [k.mapped_topic(e) for e in cfg.entities] + [k.dlq_topic]
    ensure_topics(ep.kafka.for_stage("ops"), topics, k.partitions, k.replication_factor)
    if cfg.dedupe_enabled and cfg.dedupe is not None:
        from processors.service import dedupe_entities

        ensure_topics(ep.kafka.for_stage("ops"), [k.dedupe_topic(e) for e in dedupe_entities(cfg)],
                      cfg.dedupe.partitions or k.partitions, k.replication_factor)  # fmt: skip
    apply_migrations(target.dsn, schema=target.schema)


def run_migration(
    cfg: MigrationConfig,
    config_path: Path,
    ep: Endpoints,
    target: Target,
    opts: MigrateOptions = MigrateOptions(),
    *,
    control: RunControl | None = None,
    progress: StageProgress | None = None,
    runs: RunStore | None = None,
) -> MigrationSummary:
    """Run (or resume, with ``opts.run_id``) a migration; see the module docs. Raises
    :class:`InfrastructureError` or :class:`RunInterruptedError` when it stopped early; the run can then be
    resumed with the same run id."""
    started, busy_at_start = time.monotonic(), busy_cpu_s()
    control = control or RunControl()
    runs = runs or RunStore()
    run_id = opts.run_id or new_run_id(cfg.run.name)
    require_reachable(ep, target.dsn)  # before the run is recorded: a run that never started is no run
    resumed = runs.exists(run_id)
    record = runs.begin(run_id, config_path, target.describe(), resumed=resumed)
    registry = ep.registry.client()
    prepare(cfg, ep, registry, target)
    logs = opts.logs_dir or runs.dir(run_id)
    env = service_env(cfg, target)
    ops = ep.kafka.for_stage("ops")
    log.info("run %s: writing to %s; logs in %s", run_id, target.describe(), logs, extra={"run_id": run_id})
    processors = [
        Service(f"process-{i}", ["process", "-c", str(config_path), "--metrics-port", "0",
                                 "--instance", f"{run_id}-{i}", "--engine", opts.engine],
                logs / f"process-{i}.log", {**env, **ep.kafka.stage_env("process")})
        for i in range(opts.workers)
    ]
    # The first live sink and the final pass share one stable instance name: the pass fences a sink that did not
    # stop in time (and aborts its open transaction at once instead of waiting for it to time out).
    def sink_service(i: int) -> Service:
        return Service("sink" if i == 0 else f"sink-{i}",
                       ["sink", "-c", str(config_path), "--instance", f"{run_id}-sink" + (f"-{i}" if i else "")],
                       logs / ("sink.log" if i == 0 else f"sink-{i}.log"), {**env, **ep.kafka.stage_env("sink")})

    # One sink while the processors run: reading the whole account topic first, it writes nearly every account
    # before its children come (several sinks would each hold some partitions of each topic and park the
    # children whose account another one holds). The others join for the backlog once the processors are done.
    sinks = [sink_service(0)]
    services = [*processors, *sinks]
    done: dict[str, float] = {}
    group = f"crmflow-process-{cfg.kafka.topic_prefix}"
    sink_group = f"crmflow-sink.{cfg.run.name}"
    mapped = [cfg.kafka.mapped_topic(e) for e in cfg.entities]
    sampler = ThroughputSampler(ops, raw_topics=[cfg.kafka.raw_topic(s) for s in cfg.sources],
                                process_group=group, mapped_topics=mapped, sink_group=sink_group)
    try:
        with KafkaWatch(ops, opts.infra_grace_s, on_fail=lambda w: control.request_stop(w.error()),
                        registry=ep.registry, target=target.dsn) as watch, sampler:
            stats = run_snapshot(cfg, kafka=ep.kafka.for_stage("snapshot"), registry_client=registry,
                                 run_id=run_id, limit=opts.limit, stop_event=control.stop, progress=progress)
            _raise_if_stopped(control)
            done["snapshot"] = time.monotonic() - started
            total = _produced_total(stats)
            # The sinks (several, side by side) write the mapped backlog; the final pass then has only the
            # parked children left to resolve or dead-letter. The others start about a sink's start-up before the
            # processors are done (their start overlaps the processors' last seconds), for the backlog left then.
            batch = cfg.target.batch_size if cfg.target is not None else SinkParams.batch_size
            forecast, asked = DrainForecast(), []

            def start_sinks(why: str) -> None:
                """Once when the forecast says so, once more when the processors are done if none started then."""
                if len(sinks) > 1 or why in asked:
                    return
                asked.append(why)
                more = [sink_service(i) for i in range(1, 1 + extra_sinks(_lag_or_none(ops, sink_group, mapped),
                                                                           batch, opts.sink_workers or opts.workers))]
                sinks.extend(more)
                services.extend(more)

            def on_lag(lag: int) -> None:
                if progress:
                    progress.stage("process", max(0, total - lag), total)
                if forecast.due(lag, time.monotonic()):
                    start_sinks("forecast")

            done["process"] = wait_drained(ops, group, processor_topics(cfg), services,
                                           opts.drain_timeout_s, should_stop=control.check, on_lag=on_lag) - started
            if progress:
                progress.done("process")
            start_sinks("drained")
            # The processors' group is drained: every output they wrote is committed. They close and exit while
            # the sinks write (one SIGTERM each; stop_all below only waits for them).
            for s in processors:
                s.note_rss()
                s.terminate()
            # The final pass runs as a child too: a stalled Kafka call or an outage that outlasts the drain's
            # retries ends the child, never this process, and the child is started again. It starts now and
            # connects, but joins the sinks' group only once `go` exists: after the sinks left it, so it is
            # alone there and gets every partition.
            go = logs / "sink-drain.go"
            go.unlink(missing_ok=True)
            final = Service("sink-drain", [*sinks[0].args, "--drain", "--start-when", str(go)],
                            logs / "sink-drain.log", env)
            services.append(final)
            wait_drained(ops, sink_group, mapped, sinks, opts.drain_timeout_s, should_stop=control.check)
            for s in sinks:  # memory only: a sink that just exited (a stalled call) is replaced by the final pass
                s.note_rss()
            stop_all(sinks, timeout_s=30.0)  # each finishes the batch it is writing
            go.touch()
            stop_all(processors, timeout_s=30.0)
            run_to_completion(final, opts.drain_timeout_s, should_stop=control.check)
            _raise_if_stopped(control)
            done["sink"] = time.monotonic() - started
    except CrmflowError:
        record.timeline = sampler.timeline()
        runs.fail(record, control.reason)
        write_run_report(runs, record)
        raise
    finally:
        stop_all(services)
    summary = MigrationSummary(run_id, {}, time.monotonic() - started, done, target=target.describe(), resumed=resumed,
                               outages=[{"dependency": d, "down_s": s} for d, s in watch.outages])
    for name, src in stats.sources.items():
        counts = summary.entities.setdefault(cfg.sources[name].entity, EntityCounts())
        counts.read += src.run_read  # the whole run: a resume also counts what earlier starts read
        counts.filtered += src.run_filtered
    for entity, w in run_counts(target.dsn, target.schema, run_id).items():
        c = summary.entities.setdefault(entity, EntityCounts())
        c.inserted, c.updated, c.unchanged = w.inserted, w.updated, w.unchanged
        c.golden, c.merged = w.golden, w.merged
        c.flagged_records, c.flagged = w.flagged_records, dict(w.flagged_values)
    count_rejected(summary, ep, registry, cfg.kafka.dlq_topic, run_id)
    update_ledger(cfg, ep, target)  # `crmflow dlq list` right after the run shows its letters at once
    summary.elapsed_s = time.monotonic() - started
    summary.peak_rss_bytes = {s.name: s.peak_rss for s in services}
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    summary.peak_rss_bytes["migrate (snapshot)"] = own_peak
    own = resource.getrusage(resource.RUSAGE_SELF)
    summary.cpu_s = {**{s.name: s.cpu_s for s in services}, "migrate (snapshot)": own.ru_utime + own.ru_stime}
    summary.machine_busy_cpu_s = busy_cpu_s() - busy_at_start
    record.timeline = sampler.timeline()
    runs.finish(record, summary.to_json())
    write_run_report(runs, record)
    return summary


def _produced_total(stats: Any) -> int:
    """Records the snapshot put on the raw topics (what the processor has to get through)."""
    return int(sum(s.run_counts.get("produced", s.produced) for s in stats.sources.values()))


def _raise_if_stopped(control: RunControl) -> None:
    reason = control.check()
    if reason is not None:
        raise reason


def processor_topics(cfg: MigrationConfig) -> list[str]:
    """The topics the processor's consumer group reads: the raw topics, the change topics of the tables the
    ``cdc`` section captures, and the dedupe topics if on (accounts', and contacts' with ``dedupe.contacts``)."""
    from processors.service import cdc_sources, dedupe_entities

    topics = [cfg.kafka.raw_topic(s) for s in cfg.sources]
    topics.extend(cdc_sources(cfg))
    topics.extend(cfg.kafka.dedupe_topic(e) for e in dedupe_entities(cfg))
    return topics


def drain_sink(
    cfg: MigrationConfig, ep: Endpoints, target: TargetLike, stop_event: threading.Event | None = None,
    instance: str | None = None,
) -> None:
    """The final sink pass: write what the mapped topics still hold, resolve or dead-letter parked children."""
    target = as_target(cfg, target)
    run_sink(SinkParams.from_config(cfg, kafka=ep.kafka.for_stage("sink"), registry=ep.registry,
                                    target_dsn=target.dsn, instance=instance), drain=True, stop_event=stop_event)


def service_env(cfg: MigrationConfig, target: Target) -> dict[str, str]:
    """What the child services need beyond this process's environment. Their target is resolved the same
    way as here (:func:`crmflow.pipeline.targets.resolve_target`), from the same config and environment;
    when the config names ``target.dsn_env``, the variable carries the DSN this process resolved."""
    env = {"PYTHONUNBUFFERED": "1"}
    if cfg.target is not None and cfg.target.dsn_env:
        env[cfg.target.dsn_env] = target.dsn.conninfo()  # the child's own resolve_target reads it back
    return env


def sink_lag(cfg: MigrationConfig, ep: Endpoints) -> int:
    """Mapped records the sink's group has not committed yet."""
    return group_lag(ep.kafka.for_stage("ops"), f"crmflow-sink.{cfg.run.name}",
                     [cfg.kafka.mapped_topic(e) for e in cfg.entities])


def count_rejected(
    summary: MigrationSummary, ep: Endpoints, registry: SchemaRegistryClient, dlq_topic: str, run_id: str
) -> None:
    """One rejection per source record of this run: a record re-delivered after a crash may have been
    dead-lettered twice, so letters are keyed by where the record came from."""
    seen: dict[tuple[str, str], str] = {}
    for letter in read_dead_letters(ep.kafka.for_stage("ops"), registry, dlq_topic, complete=True):
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


__all__ = ["EntityCounts", "InfrastructureError", "MigrateOptions", "MigrationSummary", "RunControl", "run_migration"]

