"""``crmflow dedupe``: measure the matcher of a config on data someone labelled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from crmflow.config import ConfigLoadError, load_config
from crmflow.evaluation.labelled import (
    evaluate_records,
    golden_ids,
    iter_text,
    load_records,
    read_truth,
    read_unscored,
)
from crmflow.exceptions import CrmflowError
from crmflow.exitcodes import ExitCode
from processors.dedupe.config import DedupeConfig, DedupeEntity

app = typer.Typer(help="Entity resolution: evaluate the dedupe settings of a config.", no_args_is_help=True)


def _matcher(config_file: Path, entity: DedupeEntity, model: Path | None) -> tuple[DedupeConfig, DedupeConfig | None]:
    """The account matcher of the config's ``dedupe`` section (``model``: Fellegi-Sunter with that model file
    instead of the section's scoring), and the matcher of ``entity`` when it is contacts."""
    config = load_config(config_file)
    if config.dedupe is None:
        raise CrmflowError(f"{config_file}: no dedupe section (dedupe:) to evaluate")
    accounts = config.dedupe.matcher()
    if model is not None:
        accounts = accounts.model_copy(update={"scoring": "fellegi_sunter", "model_file": model})
    if entity == "account":
        return accounts, None
    # Contacts: the account settings on the contact entity, compared under their parent's golden account.
    return accounts, config.dedupe.contact_matcher(accounts)


@app.command("evaluate")
def evaluate(
    config_file: Annotated[
        Path, typer.Option("--config", "-c", help="The migration config (YAML) whose dedupe section is evaluated.")
    ],
    truth: Annotated[
        Path,
        typer.Option("--truth", help="True pairs: a CSV with two id columns, or the truth.jsonl of crmflow demo-data."),
    ],
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            help="The source files to read instead of the config's paths: a directory "
            "with files of the same names, or files (repeatable).",
            exists=True,
        ),
    ] = None,
    entity: Annotated[DedupeEntity, typer.Option("--entity", help="account, or contact.")] = "account",
    id_columns: Annotated[
        str | None,
        typer.Option("--id-columns", help="The truth CSV's two id columns, comma-separated (default: its first two)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Score with Fellegi-Sunter and this model file (python -m "
            "crmflow.evaluation.dedupe_train) instead of the config's scoring.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    worst: Annotated[int, typer.Option("--worst", min=0, help="False merges and misses to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Score the config's matcher (blocking passes, comparisons, model file, thresholds) against labelled pairs.

    Prints precision, recall, F1, pair completeness, reduction ratio, and the worst false merges and misses
    with their evidence, personal data masked. Exit code 2 on a bad config, truth file or data path.
    """
    columns = tuple(c.strip() for c in id_columns.split(",")) if id_columns else None
    try:
        accounts_config, contact_config = _matcher(config_file, entity, model)
        config = load_config(config_file)
        pairs = read_truth(truth, entity, columns)
        unscored = read_unscored(truth, entity)
        if contact_config is None:
            loaded = load_records(config, "account", data or ())
            report = evaluate_records(loaded.records, pairs, accounts_config, worst=worst, unscored=unscored)
        else:
            parents = golden_ids(load_records(config, "account", data or ()).records, accounts_config)
            loaded = load_records(config, "contact", data or ())
            report = evaluate_records(
                loaded.records, pairs, contact_config, worst=worst, parents=parents, unscored=unscored
            )
    except ConfigLoadError as exc:
        for p in exc.problems:
            typer.echo(f"{p.file}:{p.line or '?'}: {p.severity}: {p.path}: {p.message}", err=True)
        raise typer.Exit(ExitCode.CONFIG) from None
    except (CrmflowError, ValidationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.CONFIG) from None
    report["rejected_records"] = loaded.rejected
    report["unreadable_lines"] = loaded.unreadable
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for line in iter_text(report):
        typer.echo(line)
    typer.echo(f"skipped: {loaded.rejected:,} records the mapper rejects, {loaded.unreadable:,} unreadable lines")
