"""``crmflow config``: work with migration configs without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # the composed config imports every stage's config: only the command that runs pays for it
    from crmflow.config import MigrationConfig, Problem

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


@app.callback()
def config() -> None:
    """Work with migration configs (crmflow.yaml) without running anything."""


def _print(problems: list[Problem]) -> None:
    for problem in problems:
        typer.echo(str(problem), err=True)


def _json(problems: list[Problem], *, strict: bool, loaded: bool) -> dict[str, Any]:
    errors = sum(1 for p in problems if p.severity == "error" or strict)
    return {
        "ok": loaded and errors == 0,
        "loaded": loaded,
        "errors": errors,
        "warnings": sum(1 for p in problems if p.severity == "warning"),
        "problems": [{"severity": p.severity, "file": str(p.file) if p.file else None, "line": p.line,
                      "path": p.path, "message": p.message} for p in problems],
    }


def _connection_problems() -> list[Problem]:
    """The ``CRMFLOW_*`` connection settings checked the way every command builds its clients (no probe);
    an error names the setting and never holds a secret."""
    from crmflow.connections import STAGES
    from crmflow.exceptions import ConfigError
    from crmflow.settings import load_stack_settings
    from crmflow.stack import get_stack

    try:
        settings = load_stack_settings()
        if settings.stack == "docker":  # its endpoints exist once its containers run
            return []
        ep = get_stack(settings).endpoints()
        for stage in STAGES:
            ep.kafka.for_stage(stage)
        ep.target, ep.legacy  # noqa: B018 - builds (and validates) the role connections
    except ConfigError as exc:
        return [Problem("error", str(exc), "connections")]
    return []


def _summary(config: MigrationConfig) -> str:
    fields = sum(len(m.fields) for m in config.entities.values())
    sources = ", ".join(f"{name} ({src.kind} → {src.entity})" for name, src in config.sources.items())
    entities = ", ".join(f"{name} ({len(m.fields)} fields)" for name, m in config.entities.items())
    return (
        f"sources: {len(config.sources)}: {sources}\n"
        f"entities: {len(config.entities)}: {entities}\n"
        f"fields mapped: {fields}; topics: {config.kafka.raw_topic('<source>')}, "
        f"{config.kafka.mapped_topic('<entity>')}, {config.kafka.dlq_topic}\n"
        + _dedupe_summary(config)
    )


def _dedupe_summary(config: MigrationConfig) -> str:
    if config.dedupe is None or not config.dedupe_enabled:
        return "dedupe: off (one account per source record)"
    contacts = config.dedupe.resolves_contacts
    entities = ("account", "contact") if contacts else ("account",)
    what = "accounts into golden records" + (" and contacts into golden contacts" if contacts else "")
    internal = ", ".join(config.kafka.dedupe_topic(e) for e in entities)
    return (f"dedupe: {what} (match threshold {config.dedupe.match_threshold}); "
            f"internal topic{'s' if len(entities) > 1 else ''} {internal}")


@app.command("check")
def check(
    config_file: Annotated[Path, typer.Option("--config", "-c", help="The migration config (YAML).")],
    schemas: Annotated[
        Path | None,
        typer.Option("--schemas", help="Schema dir (default: $CRMFLOW_SCHEMAS_DIR or the repo's schemas/)."),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Validate a config against the transforms, the entity models and the Avro schemas.

    Prints each problem as ``file:line: severity: key.path: message``; exits 1 if there is an error.
    ``--json`` prints ``{"ok", "errors", "warnings", "problems": [{severity, file, line, path, message}]}``.
    """
    from crmflow.config import ConfigLoadError, check_config, load_config

    try:
        config = load_config(config_file)
    except ConfigLoadError as exc:
        if as_json:
            typer.echo(json.dumps(_json(exc.problems, strict=False, loaded=False)))
            raise typer.Exit(1) from None
        _print(exc.problems)
        typer.echo(f"{config_file}: {len(exc.problems)} error(s); the config does not load", err=True)
        raise typer.Exit(1) from None
    problems = check_config(config, schemas_dir=schemas) + _connection_problems()
    if as_json:
        out = _json(problems, strict=strict, loaded=True)
        typer.echo(json.dumps(out))
        raise typer.Exit(0 if out["ok"] else 1)
    _print(problems)
    errors = sum(1 for p in problems if p.severity == "error" or strict)
    warnings = len(problems) - sum(1 for p in problems if p.severity == "error")
    if errors:
        typer.echo(f"{config_file}: {errors} error(s), {warnings} warning(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{config_file}: OK ({warnings} warning(s))")
    typer.echo(_summary(config))
