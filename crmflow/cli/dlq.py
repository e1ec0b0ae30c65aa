"""`crmflow dlq list | replay` — what was rejected, why, and carrying it through to the target after a fix.

Both work from the dead-letter ledger in the target database (``<schema>.dead_letters``), which they first
bring up to date with the config's dead-letter topic: one letter per rejected source record and rule,
however many runs rejected it (see :mod:`crmflow.pipeline.letters`). Exit codes as everywhere
(:class:`crmflow.exitcodes.ExitCode`): ``replay`` exits 1 when a replayed letter failed again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from crmflow.cli.signals import stop_on_signals
from crmflow.exceptions import CrmflowError, RunInterruptedError, StackError, TransientError
from crmflow.exitcodes import ExitCode

if TYPE_CHECKING:
    from crmflow.pipeline.replay import ReplayReport

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect and replay the dead letters.")
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")]
RunOpt = Annotated[str | None, typer.Option("--run-id", help="Only letters of this run.")]
StageOpt = Annotated[str | None, typer.Option("--stage", help="Only letters of this stage.")]
RuleOpt = Annotated[str | None, typer.Option("--rule", help="Only letters of this rule.")]
IdOpt = Annotated[list[str] | None, typer.Option("--id", metavar="ID",
                  help="Only this letter (id or prefix; repeatable).")]


def _fail(exc: CrmflowError) -> int:
    """One line on stderr; exit 130 when interrupted, 3 when a part of the stack is unreachable, else 2."""
    if isinstance(exc, RunInterruptedError):
        err_console.print(f"[yellow]interrupted[/yellow] ({exc.signal_name}); run the replay again to finish it",
                          highlight=False, soft_wrap=True)  # fmt: skip
        return ExitCode.INTERRUPTED
    first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    err_console.print(f"[red]error:[/red] {first}", highlight=False, soft_wrap=True)
    return ExitCode.INFRASTRUCTURE if isinstance(exc, TransientError | StackError) else ExitCode.CONFIG


@app.command("list")
def list_(
    config: ConfigOpt,
    run_id: RunOpt = None,
    stage: StageOpt = None,
    rule: RuleOpt = None,
    limit: Annotated[int, typer.Option(min=0, help="Letters to show (the counts cover all).")] = 50,
    show_all: Annotated[bool, typer.Option("--all", help="Also resolved and superseded letters.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """List the open dead letters: id, attempt, stage, rule, field, where the record came from and the
    PII-free reason. Letters a replay resolved (or superseded by a newer letter) show with --all."""
    from crmflow.config import load_config
    from crmflow.pipeline.health import require_reachable
    from crmflow.pipeline.letters import ledger_connection, update_ledger
    from crmflow.pipeline.targets import resolve_target
    from crmflow.stack import get_stack
    from sinks.postgres.ledger import STATUSES, Ledger

    statuses = STATUSES if show_all else ("open",)
    try:
        cfg = load_config(config)
        ep = get_stack().endpoints()
        target = resolve_target(cfg, ep)
        require_reachable(ep, target.dsn)
        update_ledger(cfg, ep, target)
        with ledger_connection(target) as conn:
            ledger = Ledger(conn, target.schema)
            rows = ledger.select(cfg.kafka.dlq_topic, statuses=statuses, run_id=run_id, stage=stage, rule=rule,
                                 limit=limit)  # fmt: skip
            counts = ledger.counts(cfg.kafka.dlq_topic, statuses=statuses, run_id=run_id, stage=stage, rule=rule)
    except CrmflowError as exc:
        raise typer.Exit(_fail(exc)) from None
    total = sum(counts.values())
    if as_json:
        out = {"total": total, "shown": len(rows),
               "counts": [{"status": s, "stage": st, "rule": r, "letters": n}
                          for (s, st, r), n in sorted(counts.items())],
               "letters": [r.to_json() for r in rows]}  # fmt: skip
        sys.stdout.write(json.dumps(out) + "\n")
        return
    what = "dead letters" if show_all else "open dead letters"
    title = f"{total} {what}" + (f" (first {len(rows)})" if len(rows) < total else "")
    # The source position must show whole at 80 columns: the other columns fold instead.
    table = Table(title=title)
    table.add_column("id", no_wrap=True)
    if show_all:
        table.add_column("status", overflow="fold")
    table.add_column("try")
    table.add_column("stage/rule", overflow="fold")
    table.add_column("field", overflow="fold")
    table.add_column("from", no_wrap=True, min_width=max((len(r.origin) for r in rows), default=4))
    table.add_column("error", overflow="fold", ratio=1)
    for r in rows:
        cells = [r.letter_id[:8], *([r.status] if show_all else []), str(r.attempt), f"{r.stage}/{r.rule}",
                 r.field or "-", r.origin, r.error]  # fmt: skip
        table.add_row(*cells)
    console = Console()
    console.print(table)
    if counts:
        console.print(", ".join(f"{st}/{r}{'' if s == 'open' else f' ({s})'}: {n}"
                                for (s, st, r), n in sorted(counts.items())), highlight=False)  # fmt: skip


@app.command()
def replay(
    config: ConfigOpt,
    run_id: RunOpt = None,
    stage: StageOpt = None,
    rule: RuleOpt = None,
    ids: IdOpt = None,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Processor worker processes.")] = 1,
    timeout: Annotated[float, typer.Option(help="Give up if the processor has not drained after N seconds.")] = 600,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")] = False,
) -> None:
    """Replay open dead letters after a fix (of the config, the mapping, the target) and carry them through
    to the target: re-send each to the topic it came from (snapshot rejects of CSV lines are parsed again
    with the config's dialect), run the processor and the sink until drained, and report per letter:
    landed (resolved, hidden from `dlq list`), failed again (a new letter, attempt + 1) or skipped.

    Exit codes: 0 nothing failed again, 1 a letter failed again, 2 config error, 3 Kafka, the registry or
    PostgreSQL unavailable, 130 interrupted (run it again: replaying is idempotent)."""
    from crmflow.config import load_config
    from crmflow.pipeline.migrate import RunControl
    from crmflow.pipeline.replay import ReplayOptions, ReplaySelection, run_replay
    from crmflow.pipeline.targets import resolve_target
    from crmflow.stack import get_stack

    control = RunControl()

    stop_on_signals(control)
    try:
        cfg = load_config(config)
        ep = get_stack().endpoints()
        target = resolve_target(cfg, ep)
        err_console.print(f"replay: target {target.describe()}", highlight=False, soft_wrap=True)
        report = run_replay(cfg, config.resolve(), ep, target,
                            ReplaySelection(run_id=run_id, stage=stage, rule=rule, ids=tuple(ids or ())),
                            ReplayOptions(workers=workers, drain_timeout_s=timeout), control=control)  # fmt: skip
    except CrmflowError as exc:
        raise typer.Exit(_fail(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        _render(report)
    err_console.print(
        f"replayed {len(report.outcomes)} letters: {report.count('landed')} landed, {report.count('failed')} failed "
        f"again, {report.count('skipped')} skipped ({report.elapsed_s:.0f}s)", highlight=False, soft_wrap=True)
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.NOT_RECONCILED)


def _render(report: ReplayReport) -> None:
    table = Table(title=f"{len(report.outcomes)} letters replayed")
    table.add_column("id", no_wrap=True)
    table.add_column("stage/rule", overflow="fold")
    table.add_column("from", no_wrap=True, min_width=max((len(o.origin) for o in report.outcomes), default=4))
    table.add_column("outcome", overflow="fold", ratio=1)
    for o in report.outcomes:
        table.add_row(o.letter_id[:8], f"{o.stage}/{o.rule}", o.origin, o.detail or o.outcome)
    Console().print(table)
