"""``crmflow demo-data``: write the demo legacy CRM (CSV files + ground truth), optionally load it."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crmflow.connections import PostgresConnection
from crmflow.demo_data import Summary, generate, parse_rate_overrides, rate_names
from crmflow.demo_data.exceptions import InvalidRateError, LegacyLoadError, UnknownRateError
from crmflow.demo_data.hard import NoiseProfile
from crmflow.demo_data.layout import SNAPSHOT_RULES, SOURCE_FILES
from crmflow.demo_data.legacy_db import LEGACY_SCHEMA, load_legacy_db

_RATE_HELP = (
    f"Override a quality-problem rate, name=value with value in [0, 1]; repeatable. Names: {', '.join(rate_names())}."
)


@contextmanager
def _progress(console: Console, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar when stdout is a terminal, else a callback that does nothing."""
    if not sys.stdout.isatty():
        yield lambda _done: None
        return
    # auto_refresh off: no refresh thread, so worker processes are forked from a single-threaded parent.
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, auto_refresh=False, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def update(done: int) -> None:
            progress.update(task, completed=done)
            progress.refresh()

        yield update


def _summary_table(summary: Summary, out: Path, seconds: float, customers: int) -> Table:
    table = Table(title=f"demo data in {out} (seed {summary.seed})")
    for column in ("file", "lines", "ok", "rejected"):
        table.add_column(column, justify="left" if column in ("file", "rejected") else "right")
    for name, f in summary.files.items():
        rejected = ", ".join(f"{rule} {n}" for rule, n in f.rejected.items()) or "-"
        table.add_row(name, str(f.lines), str(f.ok), rejected)
    table.caption = (
        f"{summary.persons} persons, {summary.clusters_with_duplicates} with duplicates "
        f"({summary.duplicate_records} duplicate records); {summary.deleted_customers} deleted customers "
        f"left orphans; rejects by rule: {summary.rejected_by_rule}; "
        f"{seconds:.1f}s, {customers / seconds if seconds else 0:,.0f} customers/s"
    )
    return table


def demo_data(
    out: Annotated[Path, typer.Option("--out", help="Directory for the CSV files and truth.jsonl.")] = Path(
        "demo-data"
    ),
    customers: Annotated[int, typer.Option("--customers", min=0, help="Number of customer records to write.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed and rates give the same bytes.")] = 42,
    rate: Annotated[list[str] | None, typer.Option("--rate", help=_RATE_HELP)] = None,
    legacy_dsn: Annotated[
        str | None,
        typer.Option("--legacy-dsn", help=f"Also load the files into PostgreSQL at this DSN (schema {LEGACY_SCHEMA})."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Worker processes; 0 means one per CPU.")] = 0,
    json_summary: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
    noise: Annotated[
        NoiseProfile,
        typer.Option(
            "--noise",
            help="default, or hard: duplicates mostly without e-mail or phone, first-letter typos, swapped and "
            "missing name parts, nicknames, birth-date typos, a National_ID column with typos, duplicate contacts.",
        ),
    ] = "default",
    changes: Annotated[
        float | None,
        typer.Option("--changes", min=0.1, help="Instead: run a change workload on the legacy database at this many "
                     "changed rows/s (inserts, updates, deletes in multi-statement transactions over the four tables, "
                     "some large TOASTed text); each commit is logged to --out/changes.jsonl."),
    ] = None,
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="With --changes: how long to run.")] = 10.0,
    dsn: Annotated[
        str | None, typer.Option("--dsn", help="With --changes: the legacy database; default: the stack's.")
    ] = None,
) -> None:
    """Generate the demo legacy CRM: customers, contacts, sales, tickets, with quality problems.

    Writes the four legacy CSV files and truth.jsonl (see docs/data-contract.md) into --out. With --changes RATE it
    instead changes the legacy database's rows at that rate for --seconds (for CDC demos and benchmarks).
    """
    if changes is not None:
        _run_changes(changes, seconds, dsn, out, seed, json_summary)
        return
    if noise == "hard" and legacy_dsn is not None:
        raise typer.BadParameter("the hard profile's customers.csv has a National_ID column the legacy schema lacks; "
                                 "load the default profile", param_hint="--legacy-dsn")  # fmt: skip
    try:
        rates = parse_rate_overrides(rate or [])
    except (UnknownRateError, InvalidRateError) as err:
        raise typer.BadParameter(str(err), param_hint="--rate") from None
    console = Console()
    started = time.perf_counter()
    with _progress(console, "customers", customers) as on_progress:
        summary = generate(
            out, customers, seed, rates, workers=workers or None, on_progress=on_progress, noise_profile=noise
        )
    seconds = time.perf_counter() - started
    if json_summary:
        typer.echo(summary.model_dump_json(indent=2))
    else:
        console.print(_summary_table(summary, out, seconds, customers))
    if legacy_dsn is None:
        return
    total = sum(f.lines - sum(f.rejected.get(rule, 0) for rule in SNAPSHOT_RULES) for f in summary.files.values())
    done: dict[str, int] = {}
    try:
        with _progress(console, f"loading {LEGACY_SCHEMA}", total) as bar:

            def on_table(table: str, rows: int) -> None:
                done[table] = rows
                bar(sum(done.values()))

            loaded = load_legacy_db(legacy_dsn, out, on_progress=on_table)
    except LegacyLoadError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    rows = ", ".join(f"{s.table} {loaded[s.table]}" for s in SOURCE_FILES)
    message = f"loaded {LEGACY_SCHEMA}: {rows}"
    if json_summary:
        typer.echo(message, err=True)
    else:
        console.print(message)


def _run_changes(rate: float, seconds: float, dsn: PostgresConnection | str | None, out: Path, seed: int,
                 as_json: bool) -> None:
    import psycopg

    from crmflow.demo_data.changes import run_changes

    console = Console(stderr=True)
    if dsn is None:
        from crmflow.stack import get_stack

        ep = get_stack().endpoints()
        dsn = ep.legacy
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "changes.jsonl"
    try:
        stats = run_changes(dsn, rate, seconds, log_path=log_path, seed=seed)
    except psycopg.OperationalError as err:
        console.print(f"[red]error:[/red] legacy database unreachable (--dsn): {str(err).splitlines()[0]}")
        raise typer.Exit(3) from None
    summary = {"changes": stats.total, "transactions": stats.transactions, "seconds": round(stats.seconds, 2),
               "rate": round(stats.rate, 1), "by_table_op": dict(stats.changes), "log": str(log_path)}  # fmt: skip
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.print(f"{stats.total} changes in {stats.transactions} transactions over {stats.seconds:.1f}s "
                      f"({stats.rate:,.0f}/s, asked {rate:,.0f}/s); by table and op: {dict(stats.changes)}; "
                      f"commit times in {log_path}")  # fmt: skip
