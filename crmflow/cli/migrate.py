"""`crmflow migrate` — the whole migration of a config's sources, ending with a reconciliation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crmflow.exceptions import CrmflowError

err_console = Console(stderr=True)


def migrate(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    run_id: Annotated[str | None, typer.Option(help="Resume this run (default: a new run id).")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Test migration: only the first N records of each source.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Processor worker processes.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up if a stage has not drained after this many seconds.")] = 1800,
) -> None:
    """Register schemas, snapshot every source, cleanse and map, write the target, and reconcile.

    Exits 1 when an entity does not reconcile (read = written + rejected + filtered). With deduplication,
    merged says how many accounts were folded into another record's golden account."""
    from crmflow.config import load_config
    from crmflow.pipeline.migrate import MigrateOptions, run_migration
    from crmflow.stack import get_stack

    try:
        cfg = load_config(config)
        ep = get_stack().endpoints()
        target_dsn = (cfg.target.dsn().get_secret_value() if cfg.target and _env_set(cfg.target.dsn_env)
                      else ep.target_dsn)
        summary = run_migration(cfg, config.resolve(), ep, target_dsn,
                                MigrateOptions(run_id=run_id, limit=limit, workers=workers, drain_timeout_s=timeout))
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(summary.to_json()))
    else:
        table = Table("entity", "read", "written", "rejected", "filtered", "merged", "reconciled",
                      title=f"run {summary.run_id}")
        for entity, c in sorted(summary.entities.items()):
            table.add_row(entity, f"{c.read:,}", f"{c.written:,}", f"{c.rejected:,}", f"{c.filtered:,}",
                          f"{c.merged:,}", "[green]yes[/green]" if c.reconciled else "[red]NO[/red]")
        err_console.print(table)
        account = summary.entities.get("account")
        if account is not None and account.golden is not None:
            err_console.print(f"deduplication: {account.written:,} source accounts became {account.golden:,} "
                              f"golden accounts ({account.merged:,} merged; evidence in crm.xref, crm.golden_merges)")
        if summary.rejected_by_rule:
            err_console.print("rejected by rule: " + ", ".join(f"{r} {n}" for r, n in summary.rejected_by_rule.items()))
        err_console.print(f"{summary.records:,} records in {summary.elapsed_s:.1f}s "
                          f"({summary.records_per_second:,.0f} records/s); "
                          f"dead letters: crmflow dlq list -c {config}")
    raise typer.Exit(0 if summary.reconciled else 1)


def _env_set(name: str) -> bool:
    import os

    return bool(os.environ.get(name))
