"""Entry point of the `crmflow` console script."""

from __future__ import annotations

import logging

import typer

from crmflow import __version__, metrics
from crmflow.cli import (
    assess,
    bench,
    cdc,
    config_cmd,
    cutover,
    dedupe,
    demo_data,
    dlq,
    migrate,
    parallel_run,
    process,
    rollback,
    runs,
    schemas,
    sink,
    snapshot,
    stack,
    validate,
)
from crmflow.logs import configure_logging
from crmflow.runtime.heap import tune_gc

app = typer.Typer(
    name="crmflow",
    help="Migrate a legacy CRM into a new one through Kafka, and keep them in sync during cutover.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # plain help: no "<bool>" metavar on flags, readable at 80 columns
)
app.add_typer(stack.app, name="stack")
app.add_typer(schemas.app, name="schemas")
app.add_typer(config_cmd.app, name="config")
app.add_typer(dlq.app, name="dlq")
app.add_typer(runs.app, name="runs")
app.add_typer(cutover.app, name="cutover")
app.add_typer(dedupe.app, name="dedupe")
app.command("demo-data")(demo_data.demo_data)
app.command("snapshot")(snapshot.snapshot)
app.command("cdc")(cdc.cdc)
app.command("process")(process.process)
app.command("sink")(sink.sink)
app.command("migrate")(migrate.migrate)
app.command("bench")(bench.bench)
app.command("parallel-run")(parallel_run.parallel_run)
app.command("assess")(assess.assess)
app.command("validate")(validate.validate)
app.command("rollback")(rollback.rollback)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crmflow {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
    log_json: bool = typer.Option(False, "--log-json", help="Log one JSON object per line."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """crmflow: legacy CRM → Kafka → cleanse, mask, dedupe, map → target CRM."""
    configure_logging(logging.DEBUG if verbose else logging.INFO, json_lines=log_json)
    tune_gc()  # the stages hold large long-lived states: see crmflow.runtime.heap
    metrics.dump_on_exit(ctx.invoked_subcommand or "crmflow")
