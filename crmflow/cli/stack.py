"""`crmflow stack up | down | status | logs | fetch | env` — the services crmflow runs on."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable

import typer
from rich.console import Console
from rich.table import Table

from crmflow.exceptions import CrmflowError
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints, Stack, get_stack

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="Start, stop and inspect Kafka, the registry and PostgreSQL.")
console = Console()


SECURE_HELP = ("The secure local stack (TLS, SASL/SCRAM, ACLs, least-privilege roles); "
               "same as CRMFLOW_STACK=local-secure.")


def _fail(exc: CrmflowError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


def _stack(secure: bool) -> Stack:
    settings = stack_settings()
    if secure:
        settings = settings.model_copy(update={"stack": "local-secure"})
    return get_stack(settings)


@app.command()
def up(secure: bool = typer.Option(False, "--secure", help=SECURE_HELP)) -> None:
    """Start the stack (picked by CRMFLOW_STACK: local, local-secure, docker or external) and wait until it
    is ready.

    Harmless when it already runs. The local stack fetches Kafka and Apicurio from Maven Central on
    first use."""
    stack = _stack(secure)
    try:
        ep = stack.up()
    except CrmflowError as exc:
        raise _fail(exc) from exc
    console.print(f"[green]ready[/green] ({stack.mode}): kafka {ep.bootstrap_servers}, "
                  f"registry {ep.registry_url}, postgres {ep.redacted_postgres()}", soft_wrap=True)
    env_file = getattr(stack, "env_file", None)
    if env_file is not None:
        # Never the passwords themselves: they stay in the 0600 file.
        console.print(f"connection settings (users, passwords, CA) are in {env_file}; use them with:\n"
                      f"  set -a; . {env_file}; set +a", highlight=False, soft_wrap=True)
    if stack.mode == "docker":
        console.print("containers live while this command runs; Ctrl-C stops them")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        stack.down()


@app.command()
def down(secure: bool = typer.Option(False, "--secure", help=SECURE_HELP)) -> None:
    """Stop every part the stack started; no process is left behind."""
    try:
        _stack(secure).down()
    except CrmflowError as exc:
        raise _fail(exc) from exc
    console.print("stopped")


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    secure: bool = typer.Option(False, "--secure", help=SECURE_HELP),
) -> None:
    """Show what runs where, and whether each part answers a request (a process can run and not answer: a
    broker still starting, a frozen registry). Exit code 0 when every part runs and answers, 1 otherwise."""
    try:
        stack = _stack(secure)
        parts = stack.status()
        problems = _answers(stack.endpoints(), [p.name for p in parts if p.running])
    except CrmflowError as exc:
        raise _fail(exc) from exc
    ok = all(p.running and problems.get(p.name) is None for p in parts)
    if as_json:
        sys.stdout.write(json.dumps({
            "mode": stack.mode, "running": ok,
            "parts": [{"name": p.name, "running": p.running, "answers": p.running and problems.get(p.name) is None,
                       "problem": problems.get(p.name), "address": p.address, "pid": p.pid, "log": p.detail}
                      for p in parts],
        }) + "\n")
        raise typer.Exit(0 if ok else 1)
    table = Table("part", "up", "answers", "address", "pid")
    for p in parts:
        problem = problems.get(p.name) if p.running else "not running"
        table.add_row(p.name, "yes" if p.running else "[red]no[/red]",
                      "yes" if problem is None else f"[red]no[/red] ({problem})", p.address, str(p.pid or "-"))
    console.print(table)
    for p in parts:
        if p.detail:
            console.print(f"{p.name} log: {p.detail}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if ok else 1)


def _answers(ep: Endpoints, running: list[str]) -> dict[str, str | None]:
    """Per running part, None when it answered a probe (the same probes ``crmflow migrate`` watches, which also
    set ``crmflow_dependency_up``), else a short reason."""
    from crmflow.pipeline.health import kafka_reachable, postgres_reachable, registry_reachable

    probes: dict[str, Callable[[], str | None]] = {
        "kafka": lambda: kafka_reachable(ep.kafka.for_stage("ops"), timeout_s=3.0),
        "registry": lambda: registry_reachable(ep.registry, timeout_s=3.0),
        "postgres": lambda: postgres_reachable(ep.postgres, timeout_s=3.0),
    }
    return {name: probe() for name, probe in probes.items() if name in running}


@app.command()
def logs(
    part: str = typer.Argument(..., help="kafka, registry, registry-proxy (secure stack) or postgres"),
    lines: int = typer.Option(50, "--lines", "-n", help="How many lines from the end."),
    secure: bool = typer.Option(False, "--secure", help=SECURE_HELP),
) -> None:
    """Print the end of a part's log."""
    try:
        sys.stdout.write(_stack(secure).logs(part, lines))
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
def acls(
    topic_prefix: str = typer.Option("crmflow", "--topic-prefix", help="The config's kafka.topic_prefix."),
    apply: bool = typer.Option(False, "--apply", help="Create them on the secure local stack (as its admin)."),
    secure: bool = typer.Option(False, "--secure", help=SECURE_HELP),
) -> None:
    """Print the Kafka ACLs each stage needs for a topic prefix, as kafka-acls.sh commands (for your own
    cluster), or create them on the secure local stack with --apply."""
    from crmflow.stack.acls import kafka_acls_commands
    from crmflow.stack.secure import USERS, SecureStack

    if not apply:
        sys.stdout.write("\n".join(kafka_acls_commands(topic_prefix, USERS)) + "\n")
        return
    stack = _stack(secure)
    if not isinstance(stack, SecureStack):
        raise _fail(CrmflowError("--apply needs the secure local stack: add --secure or set "
                                 "CRMFLOW_STACK=local-secure"))
    try:
        n = stack.grant(topic_prefix)
    except Exception as exc:
        raise _fail(CrmflowError(f"granting the ACLs for topic prefix {topic_prefix} failed: {exc}")) from exc
    console.print(f"granted {n} ACLs for topic prefix {topic_prefix}")


@app.command()
def env() -> None:
    """Print the endpoints as shell exports (for scripts: eval "$(crmflow stack env)")."""
    stack = get_stack()
    env_file = getattr(stack, "env_file", None)
    if env_file is not None:
        print(f"set -a; . {env_file}; set +a")
        return
    ep = stack.endpoints()
    print(f"export CRMFLOW_BOOTSTRAP_SERVERS={ep.bootstrap_servers}")
    print(f"export CRMFLOW_REGISTRY_URL={ep.registry_url}")
    print(f"export CRMFLOW_TARGET_DSN='{ep.target_dsn}'")
    print(f"export CRMFLOW_LEGACY_DSN='{ep.legacy_dsn}'")
