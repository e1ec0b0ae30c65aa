"""`crmflow runs`, `crmflow runs show ID` and `crmflow runs report ID` — what each migration run did, from its
run directory."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crmflow.exceptions import CrmflowError
from crmflow.exitcodes import ExitCode

app = typer.Typer(help="The migration runs and their outcomes.", invoke_without_command=True,
                  rich_markup_mode=None)
console = Console()


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


@app.callback()
def runs(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Show the newest N runs.")] = 20,
) -> None:
    """List the runs, newest last, with their outcome (`crmflow runs show ID` for one run's summary)."""
    if ctx.invoked_subcommand is not None:
        return
    from crmflow.pipeline.runs import RunStore

    records = RunStore().list()[-limit:]
    if as_json:
        sys.stdout.write(json.dumps({"runs": [_brief(r.to_json()) for r in records]}) + "\n")
        return
    if not records:
        console.print("no runs yet (crmflow migrate -c CONFIG starts one)")
        return
    table = Table("run id", "started", "status", "records", "starts")
    for r in records:
        records_n = r.summary.get("records") if r.summary else None
        table.add_row(r.run_id, _when(r.started_at), _status(r.status), f"{records_n:,}" if records_n else "-",
                      str(r.starts))
    console.print(table)


def _brief(data: dict[str, Any]) -> dict[str, Any]:
    summary = data.get("summary") or {}
    keys = ("run_id", "status", "config", "target", "started_at", "ended_at", "starts", "error")
    return {k: data[k] for k in keys} | {"records": summary.get("records"), "reconciled": summary.get("reconciled")}


def _status(status: str) -> str:
    color = {"reconciled": "green", "running": "yellow", "interrupted": "yellow"}.get(status, "red")
    return f"[{color}]{status}[/{color}]"


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="The run id (see `crmflow runs`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's record as one JSON object.")] = False,
) -> None:
    """One run: its status, config, target, and its reconciliation summary."""
    from crmflow.cli.report import render_summary
    from crmflow.pipeline.runs import RunStore

    try:
        record = RunStore().load(run_id)
    except CrmflowError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(ExitCode.CONFIG) from None
    if as_json:
        sys.stdout.write(json.dumps(record.to_json()) + "\n")
        return
    console.print(f"run {record.run_id}: {_status(record.status)} (started {_when(record.started_at)}, "
                  f"ended {_when(record.ended_at)}, {record.starts} start(s))")
    console.print(f"config: {record.config}", highlight=False, soft_wrap=True)
    console.print(f"target: {record.target}", highlight=False, soft_wrap=True)
    if record.error:
        console.print(f"error: {record.error}", highlight=False, soft_wrap=True)
    if record.summary:
        render_summary(record.summary, record.config, console)
    if record.status in ("failed", "interrupted"):
        console.print(f"resume with: crmflow migrate -c {record.config} --run-id {record.run_id}", highlight=False,
                      soft_wrap=True)


@app.command("report")
def report(
    run_id: Annotated[str, typer.Argument(help="The run id (see `crmflow runs`).")],
    open_path: Annotated[
        bool, typer.Option("--open-path", help="Print a file:// URL to open in a browser instead of the path.")
    ] = False,
) -> None:
    """(Re)build the run's HTML report (`report.html` in its run directory) and print its path."""
    from crmflow.pipeline.run_report import write_run_report
    from crmflow.pipeline.runs import RunStore

    store = RunStore()
    try:
        record = store.load(run_id)
    except CrmflowError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(ExitCode.CONFIG) from None
    path = write_run_report(store, record)
    if path is None:
        Console(stderr=True).print(f"[red]error:[/red] could not write the report of run {run_id} (see the log)")
        raise typer.Exit(ExitCode.CONFIG)
    sys.stdout.write((path.resolve().as_uri() if open_path else str(path)) + "\n")
