"""`crmflow process` — the worker that cleanses, maps and deduplicates raw records.

Runs until SIGTERM/SIGINT (it finishes and commits the batch in hand, then exits 0). Several workers with
the same config share the raw topics' partitions (one consumer group per config), which is how the stage
scales out; each needs its own ``--instance`` (default: the host name), which names its Kafka
transactional id, so a restarted worker fences its dead predecessor at once.

Exit codes: 0 stopped cleanly, 2 configuration error, 3 fenced by another worker with the same instance
name or Kafka unusable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from crmflow import metrics
from crmflow.exceptions import CrmflowError
from crmflow.exitcodes import ExitCode

err_console = Console(stderr=True)
log = logging.getLogger(__name__)


def process(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    engine: Annotated[str, typer.Option(help="batch (exactly-once, the default) or faust (at-least-once).")
                      ] = "batch",
    instance: Annotated[str | None, typer.Option(help="This worker's unique, stable name (default: host name).")
                        ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Records per batch (at most).")] = 2000,
    batch_within: Annotated[float, typer.Option(
        min=0.01, help="faust: seconds to wait for a batch to fill; batch: the longest an idle wait blocks.")] = 0.25,
    linger: Annotated[float, typer.Option(
        min=0.0, help="batch: once a record is there, seconds to wait for more (a backlog fills a batch at once)."
    )] = 0.02,
    metrics_port: Annotated[int, typer.Option(help="Serve /metrics on this port (0: off).")] = 9402,
) -> None:
    """Cleanse, validate, map and deduplicate raw legacy records into target entities; rejects go to the DLQ."""
    from crmflow.config import load_config
    from crmflow.stack import get_stack

    if engine not in ("batch", "faust"):
        err_console.print(f"[red]error:[/red] --engine {engine!r}: expected batch or faust")
        raise typer.Exit(ExitCode.CONFIG)
    try:
        cfg = load_config(config)
        endpoints = get_stack().endpoints()
        if engine == "faust":
            from crmflow.settings import stack_settings
            from processors.faust_engine import build_app, run_worker

            app = build_app(cfg, endpoints, batch_size=batch_size, batch_within_s=batch_within,
                            datadir=stack_settings().home / "faust")
            metrics.serve(metrics_port)
            run_worker(app)
            return
        from processors.service import build_runtime

        runtime = build_runtime(cfg, endpoints, instance=instance, batch_size=batch_size,
                                batch_timeout_s=batch_within, linger_s=linger)
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.CONFIG) from None
    metrics.serve(metrics_port)
    runtime.install_signals()
    try:
        runtime.run()
    except CrmflowError as exc:  # fenced, or Kafka unusable: one line, never a traceback
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.INFRASTRUCTURE) from None
