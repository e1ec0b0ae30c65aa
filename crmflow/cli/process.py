"""`crmflow process` — the faust-streaming worker that cleanses and maps raw records.

Runs until SIGTERM/SIGINT. Several workers with the same config share the raw topics' partitions (one
consumer group per config), which is how the stage scales out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from crmflow import metrics
from crmflow.config import load_config
from crmflow.exceptions import CrmflowError

err_console = Console(stderr=True)


def process(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    batch_size: Annotated[int, typer.Option(min=1, help="Records per batch (noack_take size).")] = 2000,
    batch_within: Annotated[float, typer.Option(min=0.01, help="Seconds to wait for a batch to fill.")] = 0.25,
    metrics_port: Annotated[int, typer.Option(help="Serve /metrics on this port (0: off).")] = 9402,
    loglevel: Annotated[str, typer.Option(help="faust's log level.")] = "warning",
) -> None:
    """Cleanse, validate and map raw legacy records into target entities; rejects go to the DLQ."""
    from crmflow.settings import stack_settings
    from crmflow.stack import get_stack
    from processors.worker import build_app, run_worker

    try:
        cfg = load_config(config)
        app = build_app(cfg, get_stack().endpoints(), batch_size=batch_size, batch_within_s=batch_within,
                        datadir=stack_settings().home / "faust")
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    metrics.serve(metrics_port)
    run_worker(app, loglevel=loglevel)
