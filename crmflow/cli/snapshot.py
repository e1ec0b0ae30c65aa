"""`crmflow snapshot` — read every configured legacy source once into its raw Kafka topic.

Resumable: re-running with the same ``--run-id`` continues after the last acknowledged record of each
source; ``--restart`` reads from the beginning again. Ctrl-C (or SIGTERM) stops after the current batch,
waits for Kafka's acknowledgements and saves the checkpoint.

Exit codes: 0 done (also with ``--limit``), 1 Kafka did not acknowledge records (run again to resume),
2 configuration or source error, 130 stopped by a signal (run again with the same ``--run-id``).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crmflow.cli.progress import RichProgress
from crmflow.exceptions import CrmflowError, TransientError
from producers.report import SnapshotStats

err_console = Console(stderr=True)


def summary_table(stats: SnapshotStats) -> Table:
    table = Table(
        "source",
        "read",
        "produced",
        "rejected",
        "filtered",
        "status",
        title=f"snapshot {stats.run_id}: {stats.records_per_second:,.0f} records/s",
    )
    for name, s in stats.sources.items():
        status = "skipped (complete)" if s.skipped else "complete" if s.complete else "partial"
        table.add_row(name, f"{s.read:,}", f"{s.produced:,}", f"{s.rejected:,}", f"{s.filtered:,}", status)
    return table


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C: give up at once
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        err_console.print("[yellow]stopping after the current batch; waiting for acknowledgements…[/yellow]")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def snapshot(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    source: Annotated[list[str] | None, typer.Option("--source", "-s", help="Only this source (repeatable).")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Produce at most N records per source.")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id; reuse one to resume. Default: new.")] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore checkpoints: read sources from the start.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary object on stdout.")] = False,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Checkpoint directory.")] = None,
    partitions: Annotated[
        int | None, typer.Option("--partitions", min=1, help="Partitions of topics it creates.")
    ] = None,
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka; default: the stack's.")] = None,
    registry_url: Annotated[str | None, typer.Option(help="Schema registry; default: the stack's.")] = None,
    metrics_port: Annotated[int, typer.Option(help="Serve /metrics on this port (0: off).")] = 0,
) -> None:
    """Snapshot the legacy sources of the migration config into Kafka (one raw topic per source), resumably."""
    from crmflow import metrics
    from crmflow.cli.connect import stage_connections
    from crmflow.config import load_config
    from producers.runs import resolve_run_id
    from producers.snapshot import run_snapshot

    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        cfg = load_config(config)
        rid = resolve_run_id(cfg, run_id)
        kafka, registry, _ = stage_connections("snapshot", bootstrap_servers, registry_url)
        metrics.serve(metrics_port)
        err_console.print(f"run id [bold]{rid}[/bold] (resume with --run-id {rid})")
        kwargs: dict[str, Any] = {
            "kafka": kafka,
            "registry_client": registry.client(),
            "run_id": rid,
            "limit": limit,
            "sources": source or None,
            "restart": restart,
            "stop_event": stop,
            "state_dir": state_dir,
            "partitions": partitions,
        }
        if err_console.is_terminal:
            with RichProgress(err_console) as progress:
                stats = run_snapshot(cfg, progress=progress, **kwargs)
        else:
            stats = run_snapshot(cfg, **kwargs)
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1 if isinstance(exc, TransientError) else 2) from exc
    if as_json:
        err_console.print(summary_table(stats))
        sys.stdout.write(json.dumps(stats.to_json()) + "\n")
    else:
        Console().print(summary_table(stats))
    if stats.stopped:
        raise typer.Exit(130)
