"""`crmflow migrate` — the whole migration of a config's sources, ending with a reconciliation.

Exit codes (:class:`crmflow.exitcodes.ExitCode`): 0 reconciled, 1 not reconciled, 2 config or input
error, 3 infrastructure unavailable (resume with the printed command), 130 interrupted (resume likewise).
The summary goes to stdout (a table, or one JSON object with ``--json``); progress and messages go to
stderr, so ``crmflow migrate -c X > report.txt`` keeps the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from crmflow.cli.signals import stop_on_signals
from crmflow.exceptions import ConfigError, CrmflowError, RunInterruptedError, StackError, TransientError
from crmflow.exitcodes import ExitCode

err_console = Console(stderr=True)


def migrate(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    run_id: Annotated[str | None, typer.Option(help="Resume this run (default: a new run id).")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Test migration: only the first N records of each source.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Processor worker processes.")] = 1,
    sink_workers: Annotated[int | None, typer.Option(
        min=1, max=8, help="Sink processes writing into the target side by side (default: as many as --workers).")
    ] = None,
    engine: Annotated[str, typer.Option(help="Processor engine: batch (exactly-once, default) or faust.")
                      ] = "batch",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up if a stage has not drained after this many seconds.")] = 1800,
    infra_grace: Annotated[
        float, typer.Option(min=1, help="Seconds Kafka may stay unreachable mid-run before the run stops; "
                                        "meanwhile every stage waits with backoff and carries on once it is back.")
    ] = 900,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
) -> None:
    """Register schemas, snapshot every source, cleanse and map, write the target, and reconcile.

    Exit codes: 0 reconciled (read = new + updated + same + rejected + filtered per entity), 1 not
    reconciled, 2 config or input error, 3 Kafka, the registry or PostgreSQL unavailable, 130
    interrupted. After 3 or 130 the printed `crmflow migrate ... --run-id ID` resumes the run."""
    from crmflow.cli.progress import NoProgress, RichProgress
    from crmflow.cli.report import render_summary, summary_text
    from crmflow.config import load_config
    from crmflow.pipeline.migrate import MigrateOptions, RunControl, run_migration
    from crmflow.pipeline.runs import RunStore
    from crmflow.pipeline.targets import resolve_target
    from crmflow.stack import get_stack
    from producers.runs import resolve_run_id

    control = RunControl()

    stop_on_signals(control, "the stages")
    rid: str | None = None
    try:
        cfg = load_config(config)
        rid = resolve_run_id(cfg, run_id)
        ep = get_stack().endpoints()
        target = resolve_target(cfg, ep)
        err_console.print(f"run {rid}: target {target.describe()}", highlight=False, soft_wrap=True)
        bars = RichProgress(err_console) if progress and err_console.is_terminal else NoProgress()
        with bars:
            summary = run_migration(
                cfg, config.resolve(), ep, target,
                MigrateOptions(run_id=rid, limit=limit, workers=workers, sink_workers=sink_workers, engine=engine,
                               drain_timeout_s=timeout, infra_grace_s=infra_grace),
                control=control, progress=bars,
            )
    except CrmflowError as exc:
        raise typer.Exit(_report_failure(exc, config, rid)) from None
    data = summary.to_json()
    RunStore().dir(summary.run_id).joinpath("summary.txt").write_text(summary_text(data, str(config)))
    if as_json:
        print(json.dumps(data))
    else:
        render_summary(data, str(config), Console())
    raise typer.Exit(ExitCode.OK if summary.reconciled else ExitCode.NOT_RECONCILED)


def _report_failure(exc: CrmflowError, config: Path, run_id: str | None) -> int:
    """One line on stderr: what failed, the fix, and the command that resumes the run; the exit code."""
    resume = f"crmflow migrate -c {config} --run-id {run_id}" if run_id else None
    if isinstance(exc, RunInterruptedError):
        err_console.print(f"[yellow]interrupted[/yellow] ({exc.signal_name}); resume with: {resume}",
                          highlight=False, soft_wrap=True)
        return ExitCode.INTERRUPTED
    if isinstance(exc, ConfigError):
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return ExitCode.CONFIG
    if isinstance(exc, TransientError | StackError):
        tail = f"; then resume with: {resume}" if resume else ""
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        err_console.print(f"[red]error:[/red] {first}{tail}", highlight=False, soft_wrap=True)
        return ExitCode.INFRASTRUCTURE
    err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    return ExitCode.CONFIG
