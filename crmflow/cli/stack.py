"""`crmflow stack up | down | status | logs | fetch | env` — the services crmflow runs on."""

from __future__ import annotations

import json
import signal
import sys

import typer
from rich.console import Console
from rich.table import Table

from crmflow.exceptions import CrmflowError
from crmflow.settings import stack_settings
from crmflow.stack import get_stack

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="Start, stop and inspect Kafka, the registry and PostgreSQL.")
console = Console()


def _fail(exc: CrmflowError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


@app.command()
def up() -> None:
    """Start the stack (picked by CRMFLOW_STACK: local, docker or external) and wait until it is ready.

    Harmless when it already runs. The local stack fetches Kafka and Apicurio from Maven Central on
    first use."""
    stack = get_stack()
    try:
        ep = stack.up()
    except CrmflowError as exc:
        raise _fail(exc) from exc
    console.print(f"[green]ready[/green] ({stack.mode}): kafka {ep.bootstrap_servers}, "
                  f"registry {ep.registry_url}, postgres {ep.redacted_postgres()}")
    if stack.mode == "docker":
        console.print("containers live while this command runs; Ctrl-C stops them")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        stack.down()


@app.command()
def down() -> None:
    """Stop every part the stack started; no process is left behind."""
    try:
        get_stack().down()
    except CrmflowError as exc:
        raise _fail(exc) from exc
    console.print("stopped")


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Show what runs where. Exit code 0 when every part runs, 1 otherwise."""
    try:
        stack = get_stack()
        parts = stack.status()
    except CrmflowError as exc:
        raise _fail(exc) from exc
    if as_json:
        sys.stdout.write(json.dumps({
            "mode": stack.mode, "running": all(p.running for p in parts),
            "parts": [{"name": p.name, "running": p.running, "address": p.address, "pid": p.pid, "log": p.detail}
                      for p in parts],
        }) + "\n")
        raise typer.Exit(0 if all(p.running for p in parts) else 1)
    table = Table("part", "up", "address", "pid")
    for p in parts:
        table.add_row(p.name, "yes" if p.running else "[red]no[/red]", p.address, str(p.pid or "-"))
    console.print(table)
    for p in parts:
        if p.detail:
            console.print(f"{p.name} log: {p.detail}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if all(p.running for p in parts) else 1)


@app.command()
def logs(
    part: str = typer.Argument(..., help="kafka, registry or postgres"),
    lines: int = typer.Option(50, "--lines", "-n", help="How many lines from the end."),
) -> None:
    """Print the end of a part's log."""
    try:
        sys.stdout.write(get_stack().logs(part, lines))
    except CrmflowError as exc:
        raise _fail(exc) from exc


@app.command()
def fetch() -> None:
    """Download Kafka's jars and Apicurio Registry from Maven Central into the cache (local stack)."""
    from crmflow.stack.local import LocalStack

    try:
        LocalStack(stack_settings()).fetch()
    except CrmflowError as exc:
        raise _fail(exc) from exc
    console.print(f"fetched into {stack_settings().home / 'dist'}")


@app.command()
def env() -> None:
    """Print the endpoints as shell exports (for scripts: eval "$(crmflow stack env)")."""
    ep = get_stack().endpoints()
    print(f"export CRMFLOW_BOOTSTRAP_SERVERS={ep.bootstrap_servers}")
    print(f"export CRMFLOW_REGISTRY_URL={ep.registry_url}")
    print(f"export CRMFLOW_TARGET_DSN='{ep.target_dsn}'")
    print(f"export CRMFLOW_LEGACY_DSN='{ep.legacy_dsn}'")
