"""`crmflow sink` — write the mapped topics into the target CRM (PostgreSQL), exactly once in effect.

Runs on the core batch runtime: each batch is written into the target, then its dead letters and offsets
commit in one Kafka transaction. Applies the target schema migrations at start-up, then consumes until
stopped (SIGTERM/SIGINT: finish the batch, commit, exit 0) or, with ``--drain``, until every partition is
read to its end and orphaned children are dead-lettered (exit 0). A service retries a target that is away
for as long as it takes; a drain gives up after the retry policy.

Exit codes: 0 done or stopped cleanly, 1 the target or Kafka stayed unavailable during a drain (run again:
nothing uncommitted is lost), 2 configuration or other terminal error, 130 a drain stopped by a signal before it
finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crmflow.exceptions import ConfigError, CrmflowError, TransientError

err_console = Console(stderr=True)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: give up at once (nothing uncommitted is lost)
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        err_console.print("[yellow]stopping: flushing the current batch and committing…[/yellow]")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _parse_topics(pairs: list[str]) -> dict[str, str]:
    from sinks.params import ENTITIES

    topics: dict[str, str] = {}
    for pair in pairs:
        topic, sep, entity = pair.rpartition("=")
        if not sep or not topic or entity not in ENTITIES:
            raise ConfigError(f"--topic {pair!r}: expected TOPIC=ENTITY with ENTITY one of {', '.join(ENTITIES)}")
        topics[topic] = entity
    return topics


def sink(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")
    ] = None,
    topic_prefix: Annotated[
        str | None, typer.Option(help="Without --config: read <prefix>.mapped.<entity>, DLQ <prefix>.dlq.")
    ] = None,
    topic: Annotated[
        list[str] | None, typer.Option("--topic", help="TOPIC=ENTITY to read instead (repeatable).")
    ] = None,
    dlq_topic: Annotated[str | None, typer.Option(help="Dead-letter topic; default <prefix>.dlq.")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group; default crmflow-sink[.<run name>].")] = None,
    instance: Annotated[str | None, typer.Option(
        help="This sink's unique, stable name (a pod's name): its Kafka transactional id is <group>-<instance>, "
             "so a restart fences its predecessor at once. Default: host, pid and a random suffix.")] = None,
    target_dsn_env: Annotated[
        str | None,
        typer.Option(help="NAME of the env var holding the target DSN; default: the config's, else the stack's."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Records per partition buffer.")] = None,
    max_batch_age: Annotated[float | None, typer.Option(min=0.01, help="Flush after this many seconds.")] = None,
    orphan_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds a child waits for its account before it is dead-lettered.")
    ] = 3600.0,
    drain: Annotated[bool, typer.Option("--drain", help="Exit once everything is read and written.")] = False,
    start_when: Annotated[Path | None, typer.Option(
        hidden=True, help="Connect, then wait until this file exists before reading (migrate's final pass).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary object on stdout.")] = False,
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka; default: the stack's.")] = None,
    registry_url: Annotated[str | None, typer.Option(help="Schema registry; default: the stack's.")] = None,
    metrics_port: Annotated[int, typer.Option(help="Serve /metrics on this port (0: off).")] = 0,
) -> None:
    """Write the mapped records of Kafka into the target CRM database; commit offsets only after it."""
    from crmflow import metrics
    from sinks.runner import SinkParams, run_sink

    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        cfg = None
        if config is not None:
            from crmflow.config import load_config

            cfg = load_config(config)
        from crmflow.cli.connect import stage_connections
        from crmflow.connections import PostgresConnection

        dsn: PostgresConnection | None = None
        ep = None
        if target_dsn_env:
            raw = os.environ.get(target_dsn_env)
            if not raw:
                raise ConfigError(f"environment variable {target_dsn_env} (--target-dsn-env) is not set")
            dsn = PostgresConnection.from_env(target_dsn_env, raw)
        kafka, registry, ep = stage_connections("sink", bootstrap_servers, registry_url)
        if ep is None and dsn is None and (cfg is None or cfg.target is None or cfg.target.uses_stack):
            from crmflow.stack import get_stack

            ep = get_stack().endpoints()
        if dsn is None and cfg is not None:
            from crmflow.pipeline.targets import resolve_target

            dsn = resolve_target(cfg, ep).dsn  # the same resolution as migrate's
        elif dsn is None:
            assert ep is not None
            dsn = ep.target
        overrides: dict[str, Any] = {"orphan_timeout_s": orphan_timeout}
        if group:
            overrides["group_id"] = group
        if instance:
            overrides["instance"] = instance
        if batch_size:
            overrides["batch_size"] = batch_size
        if max_batch_age:
            overrides["max_batch_age_s"] = max_batch_age
        if topic:
            overrides["topics"] = _parse_topics(topic)
        if dlq_topic:
            overrides["dlq_topic"] = dlq_topic
        conn: dict[str, Any] = {"kafka": kafka, "registry": registry, "target_dsn": dsn}
        if cfg is not None:
            params = SinkParams.from_config(cfg, **conn, **overrides)
        else:
            params = SinkParams.for_prefix(topic_prefix or "crmflow", **conn, **overrides)
        metrics.serve(metrics_port)
        stats = run_sink(params, stop_event=stop, drain=drain, start_when=start_when)
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1 if isinstance(exc, TransientError) or _is_unavailable(exc) else 2) from exc
    summary = dataclasses.asdict(stats)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        table = Table("", "records")
        for key, value in summary.items():
            if key != "committed":
                table.add_row(key, str(value))
        Console().print(table)
    if drain and stop.is_set():
        raise typer.Exit(130)


def _is_unavailable(exc: CrmflowError) -> bool:
    from sinks.exceptions import RetriesExhaustedError

    return isinstance(exc, RetriesExhaustedError)


if __name__ == "__main__":  # `python -m crmflow.cli.sink --help`: the sink alone, the options of `crmflow sink`
    from crmflow.logs import configure_logging

    configure_logging()
    typer.run(sink)
