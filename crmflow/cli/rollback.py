"""`crmflow rollback --run-id ID`: remove what one run wrote to the target (see crmflow.quality.rollback).

Exit codes: 0 rolled back (or nothing to do, or --dry-run), 1 refused at the prompt, 2 config error or a run
that cannot be rolled back, 3 the target is unreachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crmflow.exceptions import CrmflowError
from crmflow.exitcodes import ExitCode

err_console = Console(stderr=True)


def rollback(
    run_id: Annotated[str, typer.Option("--run-id", help="The run to roll back (see `crmflow runs`).")],
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG",
                                                help="Migration config (default: the run's).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would change; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Remove a run's target rows, cross-references, golden-merge log entries and parked children; rows an
    earlier run delivered go back to that run's values. Asks first unless --yes."""
    import psycopg

    from crmflow.config import load_config
    from crmflow.pipeline.runs import RunStore
    from crmflow.pipeline.targets import resolve_target
    from crmflow.quality.rollback import Rollback, RollbackSummary
    from crmflow.stack import get_stack

    try:
        path = config or Path(RunStore().load(run_id).config)
        cfg = load_config(path)
        target = resolve_target(cfg, get_stack().endpoints())
        with target.dsn.connect() as conn:
            plan = Rollback(conn, target.schema, run_id).run(dry_run=True)
            summary: RollbackSummary = plan
            if not dry_run and not plan.empty:
                if not yes:
                    _print(plan, target.describe(), as_json=False, console=err_console)
                    if not typer.confirm(f"roll back run {run_id} in {target.describe()}?", err=True):
                        raise typer.Exit(ExitCode.NOT_RECONCILED)
                summary = Rollback(conn, target.schema, run_id).run(dry_run=False)
    except psycopg.OperationalError as exc:
        err_console.print(f"[red]error:[/red] the target database is unreachable ({exc.sqlstate or 'no SQLSTATE'})")
        raise typer.Exit(ExitCode.INFRASTRUCTURE) from None
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.CONFIG) from None
    _print(summary, target.describe(), as_json=as_json, console=Console())
    raise typer.Exit(ExitCode.OK)


def _print(summary: object, target: str, *, as_json: bool, console: Console) -> None:
    from crmflow.quality.rollback import RollbackSummary

    assert isinstance(summary, RollbackSummary)
    if as_json:
        print(json.dumps({**summary.to_json(), "target": target}))
        return
    verb = "would" if summary.dry_run else "did"
    table = Table(title=f"rollback of {summary.run_id} ({verb}) in {target}")
    for col in ("entity", "rows deleted", "rows restored", "xref deleted", "parked deleted"):
        table.add_column(col, justify="left" if col == "entity" else "right")
    for entity, e in summary.entities.items():
        table.add_row(entity, str(e.deleted), str(e.restored), str(e.xref_deleted), str(e.parked_deleted))
    console.print(table)
    console.print(f"golden-merge log entries {summary.golden_merges}, deliveries {summary.deliveries}, audit rows "
                  f"{summary.audit_rows}, dead letters {summary.dead_letters}", highlight=False)
