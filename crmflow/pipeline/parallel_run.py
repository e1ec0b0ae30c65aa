"""`crmflow parallel-run`: the three CDC services keep the target in step with the legacy database, measured.

``crmflow cdc`` (the slot created and the tables loaded on the first start), ``crmflow process`` and ``crmflow
sink`` run as child processes, as ``deploy/`` runs them. The run:

1. waits until the target has caught up with the legacy database (the initial load, or what happened since the
   last run): the slot's confirmed LSN has passed the WAL position read at the start, then the processor's and
   the sink's consumer groups have no lag. Read in that order, the three mean every change committed before
   that position is in the target;
2. for ``seconds``, lets the legacy database change: the demo's change workload at ``changes`` rows/s
   (:func:`crmflow.demo_data.changes.run_changes`, each commit logged to ``changes.jsonl``), or whatever else
   writes to it;
3. waits until the target has caught up with the WAL position read when the changes stopped, and measures how
   long after the last change that was, and, from ``changes.jsonl``, the latency of each id's last change:
   its commit time to the write of its row in the target (``updated_at``, or ``deleted_at`` of
   ``<schema>.deletions`` for a delete; changes that altered no mapped value leave no trace there and are
   not measured);
4. stops the services and lets a final sink pass settle parked children (dead-lettering orphans). The CLI then
   compares the target with the legacy tables after mapping (:func:`crmflow.quality.legacy.compare_with_legacy`).

The slot stays: the next run resumes from it (``reset`` drops it, the publication and the target schema first).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from crmflow.config import MigrationConfig
from crmflow.connections import PostgresConnection, as_postgres, kafka_config
from crmflow.exceptions import ConfigError, StackError
from crmflow.pipeline.health import require_reachable
from crmflow.pipeline.letters import update_ledger
from crmflow.pipeline.migrate import RunControl, prepare, processor_topics, service_env
from crmflow.pipeline.runs import RunStore
from crmflow.pipeline.services import Service, group_lag, run_to_completion, stop_all
from crmflow.pipeline.targets import Target
from crmflow.stack import Endpoints
from crmflow.topics import cdc_topic
from producers.cdc.initial import COMPLETE
from producers.cdc.snapshot import read_comment
from producers.runs import new_run_id
from sinks.postgres.migrate import check_schema
from sinks.postgres.tables import TABLES

log = logging.getLogger(__name__)

__all__ = ["CatchUp", "ParallelRunOptions", "ParallelRunResult", "change_latencies", "percentile", "run_parallel"]


@dataclass(frozen=True)
class ParallelRunOptions:
    changes: float | None = None  # rows/s of the demo change workload; None: no workload, only watch
    seconds: float = 30.0
    reset: bool = False
    timeout_s: float = 900.0  # for each catch-up
    seed: int = 42
    logs_dir: Path | None = None


@dataclass
class CatchUp:
    """Where the target had to get (``wal_lsn``) and when (monotonic) it got there."""

    wal_lsn: int
    reached_at: float


@dataclass
class ParallelRunResult:
    run_id: str
    logs: Path
    target: str
    initial_s: float = 0.0
    initial_rows: dict[str, int] = field(default_factory=dict)
    workload: dict[str, Any] | None = None
    caught_up: bool = False
    caught_up_after_s: float | None = None  # after the last change's commit
    latency: dict[str, Any] | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # entity -> legacy rows, target rows
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def in_step(self) -> bool:
        """Caught up, and the target equals the legacy tables after mapping (nothing missing, extra or wrong)."""
        v = self.validation
        return self.caught_up and bool(v) and v.get("missing") == 0 and v.get("extra") == 0 and v.get("wrong") == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "in_step": self.in_step, "caught_up": self.caught_up,
            "caught_up_after_s": None if self.caught_up_after_s is None else round(self.caught_up_after_s, 2),
            "initial_s": round(self.initial_s, 1), "initial_rows": self.initial_rows, "workload": self.workload,
            "latency": self.latency,
            "counts": self.counts, "validation": self.validation, "target": self.target, "logs": str(self.logs),
        }  # fmt: skip


# ------------------------------------------------------------------------------------------- pure parts


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, nearest rank; values must not be empty."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def last_changes(lines: Iterable[str]) -> dict[tuple[str, str], tuple[str, float]]:
    """(table, id) -> (op, commit time) of each id's last change in a ``changes.jsonl`` log."""
    out: dict[tuple[str, str], tuple[str, float]] = {}
    for line in lines:
        if line.strip():
            c = json.loads(line)
            key = (str(c["table"]), str(c["id"]))
            if key not in out or float(c["committed_at"]) >= out[key][1]:
                out[key] = (str(c["op"]), float(c["committed_at"]))
    return out


def change_latencies(
    last: Mapping[tuple[str, str], tuple[str, float]],
    written: Callable[[str, str, list[str]], dict[str, float]],
    entities: Mapping[str, str],
) -> list[float]:
    """Seconds from each id's last change to its write in the target.

    ``entities`` maps a captured table to the entity it feeds; ``written(entity, kind, ids)`` returns, per id,
    when the target last wrote its row (kind ``row``) or its delete (kind ``delete``), as Unix seconds. A write
    older than the change means the change altered no mapped value: not measured.
    """
    wanted: dict[tuple[str, str], dict[str, float]] = {}
    for (table, ident), (op, committed) in last.items():
        entity = entities.get(table)
        if entity is not None:
            wanted.setdefault((entity, "delete" if op == "d" else "row"), {})[ident] = committed
    out: list[float] = []
    for (entity, kind), ids in wanted.items():
        at = written(entity, kind, list(ids))
        out += [at[i] - committed for i, committed in ids.items() if i in at and at[i] >= committed]
    return out


def latency_summary(values: list[float], changes: int) -> dict[str, Any]:
    if not values:
        return {"measured": 0, "changes": changes}
    return {"measured": len(values), "changes": changes, "p50_s": round(percentile(values, 50), 3),
            "p99_s": round(percentile(values, 99), 3), "max_s": round(max(values), 3),
            "mean_s": round(statistics.fmean(values), 3)}  # fmt: skip


# -------------------------------------------------------------------------------------- database reads


def _legacy(cfg: MigrationConfig) -> PostgresConnection:
    if cfg.cdc is None:
        raise ConfigError(f"{cfg.file or 'the config'}: no cdc section (dsn_env, tables, slot, publication); "
                          "the parallel run captures the legacy database's changes")  # fmt: skip
    return as_postgres(cfg.cdc.dsn().get_secret_value(), setting=f"cdc.dsn_env ({cfg.cdc.dsn_env})")


def captured_tables(cfg: MigrationConfig) -> dict[str, str]:
    """Captured table (``schema.table``) -> the entity its table source feeds."""
    tables = set(cfg.cdc.tables) if cfg.cdc else set()
    out: dict[str, str] = {}
    for src in cfg.sources.values():
        if src.kind == "table" and src.table:
            table = src.table if "." in src.table else f"public.{src.table}"
            if table in tables:
                out[table] = src.entity
    return out


def _wal_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def _confirmed(conn: psycopg.Connection[Any], slot: str) -> int | None:
    row = conn.execute("select confirmed_flush_lsn - '0/0'::pg_lsn from pg_replication_slots where slot_name = %s",
                       (slot,)).fetchone()  # fmt: skip
    return None if row is None or row[0] is None else int(row[0])


def _reset(cfg: MigrationConfig, legacy: PostgresConnection, target: Target) -> None:
    """Drop the slot (once no one reads it), the publication and the target schema: a fresh start."""
    assert cfg.cdc is not None
    with legacy.connect(autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while (row := conn.execute("select active_pid from pg_replication_slots where slot_name = %s",
                                   (cfg.cdc.slot,)).fetchone()) is not None and row[0] is not None:  # fmt: skip
            if time.monotonic() > deadline:
                raise StackError(f"replication slot {cfg.cdc.slot} is in use by pid {row[0]}; stop that crmflow cdc")
            time.sleep(0.5)
        if row is not None:
            conn.execute("select pg_drop_replication_slot(%s)", (cfg.cdc.slot,))
        conn.execute(sql.SQL("drop publication if exists {}").format(sql.Identifier(cfg.cdc.publication)))
    with target.dsn.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(check_schema(target.schema))))
    log.info("reset: slot %s, publication %s and schema %s dropped", cfg.cdc.slot, cfg.cdc.publication,
             target.schema)  # fmt: skip


def _written(target: Target) -> Callable[[str, str, list[str]], dict[str, float]]:
    schema = check_schema(target.schema)

    def written(entity: str, kind: str, ids: list[str]) -> dict[str, float]:
        if kind == "delete":
            query = (f"select external_id, extract(epoch from deleted_at) from {schema}.deletions "
                     "where entity = %s and external_id = any(%s)")  # fmt: skip
            params: tuple[Any, ...] = (entity, ids)
        else:
            query = (f"select external_id, extract(epoch from updated_at) from {schema}.{TABLES[entity].table} "
                     "where external_id = any(%s)")  # fmt: skip
            params = (ids,)
        with target.dsn.connect() as conn:
            return {str(r[0]): float(r[1]) for r in conn.execute(query, params).fetchall()}

    return written


def entity_counts(cfg: MigrationConfig, legacy: PostgresConnection, target: Target) -> dict[str, dict[str, int]]:
    """Per entity: rows of its legacy tables, and live rows of the target."""
    schema = check_schema(target.schema)
    out: dict[str, dict[str, int]] = {}
    with legacy.connect() as conn:
        for table, entity in captured_tables(cfg).items():
            s, t = table.split(".", 1)
            row = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(s, t))).fetchone()
            out.setdefault(entity, {"legacy": 0, "target": 0})["legacy"] += int(row[0]) if row else 0
    with target.dsn.connect() as conn:
        for entity in out:
            row = conn.execute(f"select count(*) from {schema}.{TABLES[entity].table} "
                               "where deleted_at is null").fetchone()  # fmt: skip
            out[entity]["target"] = int(row[0]) if row else 0
    return out


# ------------------------------------------------------------------------------------------- the run


class _Services:
    """The cdc, process and sink children; ``supervise`` restarts one that exited with a retriable code."""

    def __init__(self, cfg: MigrationConfig, config_path: Path, ep: Endpoints, target: Target, logs: Path,
                 run_id: str, init: bool) -> None:  # fmt: skip
        self.cfg, self.ep = cfg, ep
        env = service_env(cfg, target)
        self.env = env
        args = ["-c", str(config_path), "--metrics-port", "0"]
        self.cdc = Service("cdc", ["cdc", *args, *(["--init"] if init else [])], logs / "cdc.log",
                           {**env, **ep.kafka.stage_env("cdc")})  # fmt: skip
        self.all = [self.cdc]
        self.args, self.logs, self.run_id = args, logs, run_id

    def start_rest(self) -> None:
        env, ep = self.env, self.ep
        self.all += [
            Service("process", ["process", *self.args, "--instance", f"{self.run_id}-process"],
                    self.logs / "process.log", {**env, **ep.kafka.stage_env("process")}),
            Service("sink", ["sink", "-c", self.args[1], "--instance", f"{self.run_id}-sink"], self.logs / "sink.log",
                    {**env, **ep.kafka.stage_env("sink")}),
        ]  # fmt: skip

    def supervise(self) -> None:
        if self.cdc.running and "--init" in self.cdc.args:
            # A restart must resume from the slot, never try to create it again.
            self.cdc.args = [a for a in self.cdc.args if a != "--init"]
        for s in self.all:
            s.supervise()


def _wait_topics(ep: Endpoints, topics: list[str], services: _Services, timeout_s: float,
                 control: RunControl) -> None:  # fmt: skip
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_config(ep.kafka.for_stage("ops")))
    deadline = time.monotonic() + timeout_s
    while not set(topics) <= set(admin.list_topics(timeout=10).topics):
        services.supervise()
        _check(control)
        if time.monotonic() > deadline:
            raise StackError(f"crmflow cdc had not created {', '.join(topics)} after {timeout_s:.0f}s "
                             f"(log: {services.cdc.log_file})")  # fmt: skip
        time.sleep(0.5)


def _check(control: RunControl) -> None:
    reason = control.check()
    if reason is not None:
        raise reason


def wait_caught_up(cfg: MigrationConfig, ep: Endpoints, legacy: PostgresConnection, services: _Services,
                   timeout_s: float, control: RunControl) -> CatchUp:  # fmt: skip
    """Wait until every change committed before now is in the target (see the module docs, step 1)."""
    assert cfg.cdc is not None
    ops = ep.kafka.for_stage("ops")
    process_group, sink_group = f"crmflow-process-{cfg.kafka.topic_prefix}", f"crmflow-sink.{cfg.run.name}"
    mapped = [cfg.kafka.mapped_topic(e) for e in cfg.entities]
    with legacy.connect(autocommit=True) as conn:
        goal = _wal_lsn(conn)
        deadline = time.monotonic() + timeout_s
        while True:
            services.supervise()
            _check(control)
            confirmed = _confirmed(conn, cfg.cdc.slot)
            if confirmed is not None and confirmed >= goal and _loaded(conn, cfg.cdc.publication):
                try:
                    if group_lag(ops, process_group, processor_topics(cfg), timeout_s=10) == 0 and group_lag(
                        ops, sink_group, mapped, timeout_s=10
                    ) == 0:
                        return CatchUp(goal, time.monotonic())
                except Exception as exc:  # noqa: BLE001 - a lag read that failed is read again
                    log.debug("lag not readable yet: %s", exc)
            if time.monotonic() > deadline:
                raise StackError(f"the target had not caught up with the legacy database after {timeout_s:.0f}s "
                                 f"(logs: {services.logs})")  # fmt: skip
            time.sleep(0.25)


def _loaded(conn: psycopg.Connection[Any], publication: str) -> bool:
    """Whether the cdc service's initial load is in Kafka (the publication's comment says so). Until it is, the
    slot stays at the load's consistent point, which may equal the goal when nothing else wrote to the WAL: the
    groups then show no lag only because the loaded rows are not in their topics yet."""
    state, _ = read_comment(conn, publication)
    return state is not None and state.startswith(COMPLETE)


def _workload(legacy: PostgresConnection, opts: ParallelRunOptions, log_path: Path, services: _Services,
              control: RunControl) -> dict[str, Any]:  # fmt: skip
    """The change workload in a thread while this one looks after the services; its summary."""
    from crmflow.demo_data.changes import run_changes

    assert opts.changes is not None
    stop = threading.Event()
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            stats = run_changes(legacy, opts.changes or 0.0, opts.seconds, log_path=log_path, seed=opts.seed,
                                stop=stop)  # fmt: skip
            result.update(changes=stats.total, transactions=stats.transactions, seconds=round(stats.seconds, 1),
                          rate=round(stats.rate, 1), by_table_op=dict(stats.changes))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - raised in the calling thread
            result["error"] = exc

    thread = threading.Thread(target=work, name="change-workload")
    thread.start()
    try:
        while thread.is_alive():
            services.supervise()
            _check(control)
            thread.join(0.5)
    finally:
        stop.set()
        thread.join()
    if "error" in result:
        err = result["error"]
        raise StackError(f"the change workload failed: {type(err).__name__}: {str(err).splitlines()[0]}")
    return result


def run_parallel(
    cfg: MigrationConfig,
    config_path: Path,
    ep: Endpoints,
    target: Target,
    opts: ParallelRunOptions = ParallelRunOptions(),
    *,
    control: RunControl | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> ParallelRunResult:
    """Run the parallel run of ``cfg``; see the module docs. ``say`` gets a line per step (progress)."""
    control = control or RunControl()
    legacy = _legacy(cfg)
    assert cfg.cdc is not None
    tables = captured_tables(cfg)
    if not tables:
        raise ConfigError(f"{cfg.file or 'the config'}: no table source reads a table of cdc.tables "
                          f"({', '.join(cfg.cdc.tables)}): nothing would reach the target")  # fmt: skip
    require_reachable(ep, target.dsn)
    run_id = new_run_id(cfg.run.name)
    logs = opts.logs_dir or RunStore().dir(run_id)
    logs.mkdir(parents=True, exist_ok=True)
    result = ParallelRunResult(run_id, logs, target.describe())
    if opts.reset:
        _reset(cfg, legacy, target)
    with legacy.connect() as conn:
        init = _confirmed(conn, cfg.cdc.slot) is None and conn.execute(
            "select 1 from pg_replication_slots where slot_name = %s", (cfg.cdc.slot,)).fetchone() is None
    prepare(cfg, ep, ep.registry.client(), target)
    started = time.monotonic()
    services = _Services(cfg, config_path, ep, target, logs, run_id, init)
    say(f"{'capture started (slot ' + cfg.cdc.slot + ' created, tables loaded)' if init else 'capture resumed'}; "
        f"logs in {logs}")  # fmt: skip
    try:
        _wait_topics(ep, [cdc_topic(cfg.kafka.topic_prefix, t) for t in tables], services, 120, control)
        services.start_rest()
        wait_caught_up(cfg, ep, legacy, services, opts.timeout_s, control)
        result.initial_s = time.monotonic() - started
        result.initial_rows = {e: c["target"] for e, c in entity_counts(cfg, legacy, target).items()}
        say(f"target caught up with the legacy database in {result.initial_s:.1f}s: {result.initial_rows}")
        changes_log = logs / "changes.jsonl"
        if opts.changes is not None:
            say(f"change workload: {opts.changes:g} rows/s for {opts.seconds:g}s")
            result.workload = _workload(legacy, opts, changes_log, services, control)
            say(f"{result.workload['changes']} changes in {result.workload['transactions']} transactions")
        else:
            say(f"watching for {opts.seconds:g}s")
            until = time.monotonic() + opts.seconds
            while time.monotonic() < until:
                services.supervise()
                _check(control)
                time.sleep(0.5)
        stopped_wall, stopped = time.time(), time.monotonic()
        caught = wait_caught_up(cfg, ep, legacy, services, opts.timeout_s, control)
        last = last_changes(changes_log.read_text().splitlines()) if changes_log.exists() else {}
        last_commit = max((t for _, t in last.values()), default=None)
        # After the last change's commit (its wall clock), else after the watch ended.
        lag_from = last_commit if last_commit is not None else stopped_wall
        result.caught_up, result.caught_up_after_s = True, max(0.0, caught.reached_at - stopped + stopped_wall
                                                              - lag_from)  # fmt: skip
        say(f"caught up {result.caught_up_after_s:.1f}s after the last change")
        if last:
            values = change_latencies(last, _written(target), tables)
            result.latency = latency_summary(values, len(last))
        stop_all(services.all, timeout_s=30.0)
        # Children whose account never came are dead letters now (as at the end of a migration), not "missing".
        drain = Service("sink-drain", ["sink", "-c", str(config_path), "--instance", f"{run_id}-sink", "--drain"],
                        logs / "sink-drain.log", services.env)  # fmt: skip
        services.all.append(drain)
        run_to_completion(drain, opts.timeout_s, should_stop=control.check)
    finally:
        stop_all(services.all)
    result.counts = entity_counts(cfg, legacy, target)
    update_ledger(cfg, ep, target)  # `crmflow dlq list` shows the changes that failed a rule
    return result
