"""`crmflow cdc` — stream the legacy database's changes into Kafka (the ``cdc`` section of the config).

The first start needs ``--init``: it creates the publication and the replication slot, and loads the tables
from the slot's exported snapshot (op ``r``; ``--no-load`` skips it) before streaming on from there. Every later
start resumes from the slot's confirmed position (everything before it is in Kafka); a missing or invalidated
slot is an error, never a silent new start. A restart of PostgreSQL or a dropped connection is waited out (reconnect
with backoff, resume from the slot). To re-snapshot one table while it runs, emit the signal
``select pg_logical_emit_message(true, 'crmflow.cdc.signal', '{"snapshot": "schema.table"}')``.
SIGTERM or Ctrl-C: flush Kafka, confirm the acknowledged LSN, exit 130.

Exit codes: 2 config (or slot) must be fixed, 3 Kafka, the registry or PostgreSQL unreachable (run again),
130 stopped by a signal.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from crmflow.exceptions import CrmflowError, TransientError
from crmflow.exitcodes import ExitCode

err_console = Console(stderr=True)


def cdc(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    init: Annotated[
        bool, typer.Option("--init", help="First start: create the publication and the slot, load the tables.")
    ] = False,
    load: Annotated[
        bool, typer.Option("--load/--no-load", help="With --init: load the tables' rows as op r events first.")
    ] = True,
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka; default: the stack's.")] = None,
    registry_url: Annotated[str | None, typer.Option(help="Schema registry; default: the stack's.")] = None,
    metrics_port: Annotated[int, typer.Option(help="Serve /metrics on this port (0: off).")] = 0,
) -> None:
    """Capture the legacy database's changes (logical replication, pgoutput) into Kafka, one topic per table."""
    from crmflow import metrics
    from crmflow.cli.connect import stage_connections
    from crmflow.config import load_config
    from producers.cdc.stream import run_cdc

    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        err_console.print("[yellow]stopping: flushing Kafka and confirming the acknowledged position…[/yellow]")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        cfg = load_config(config)
        if cfg.cdc is None:
            err_console.print(f"[red]error:[/red] {config}: no cdc section (dsn_env, tables, slot, publication)")
            raise typer.Exit(ExitCode.CONFIG)
        kafka, registry, _ = stage_connections("cdc", bootstrap_servers, registry_url)
        metrics.serve(metrics_port)
        stats = run_cdc(cfg.cdc, cfg.kafka, connection=kafka, init=init, load=load, stop_event=stop,
                        registry_client=registry.client())  # fmt: skip
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(ExitCode.INFRASTRUCTURE if isinstance(exc, TransientError) else ExitCode.CONFIG) from exc
    from producers.cdc.pgoutput import format_lsn

    err_console.print(f"stopped: {stats.loaded} row(s) loaded, {stats.transactions} transaction(s), "
                      f"events {stats.events}, confirmed {format_lsn(stats.confirmed_lsn)}")  # fmt: skip
    raise typer.Exit(ExitCode.INTERRUPTED if stats.stopped else ExitCode.OK)
