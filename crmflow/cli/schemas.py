"""`crmflow schemas list | register` — the Avro contract under ``schemas/`` and the schema registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast, get_args

import typer
from rich.console import Console
from rich.table import Table

from crmflow.connections import RegistryConnection
from crmflow.exceptions import CrmflowError

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="Inspect the Avro schemas and register them with the registry.")
console = Console()

_DIR_OPTION = typer.Option(
    None, "--dir", help="Schemas directory (default: $CRMFLOW_SCHEMAS_DIR or the repository's schemas/)."
)


def _fail(exc: CrmflowError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


def _registry(url: str | None) -> RegistryConnection:
    """The stack's registry connection; ``--registry-url`` replaces only its URL (auth still from CRMFLOW_*)."""
    if url:
        return RegistryConnection.from_env(url=url)
    from crmflow.stack import get_stack

    return get_stack().endpoints().registry


@app.command("list")
def list_schemas(
    directory: Path | None = _DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON array instead of a table."),
) -> None:
    """List the schema files, their record names and the subject `register` puts them under."""
    from crmflow.registry import load_schema, record_subject, schema_files, schemas_dir

    try:
        root = directory or schemas_dir()
        rows = []
        for path in schema_files(root):
            schema = load_schema(path)
            fields = schema.parsed.get("fields", []) if isinstance(schema.parsed, dict) else []
            rows.append(
                {
                    "file": path.relative_to(root).as_posix(),
                    "record": schema.full_name,
                    "subject": record_subject(schema),
                    "fields": len(fields),
                }
            )
    except CrmflowError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("file", "record", "subject", "fields")
    for row in rows:
        table.add_row(str(row["file"]), str(row["record"]), str(row["subject"]), str(row["fields"]))
    console.print(table)


@app.command()
def register(
    directory: Path | None = _DIR_OPTION,
    compatibility: str = typer.Option(
        "BACKWARD", "--compatibility", "-c", help="Compatibility level set on every subject."
    ),
    registry_url: str | None = typer.Option(
        None, "--registry-url", help="Confluent-compatible API (default: the stack's registry)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON array instead of a table."),
) -> None:
    """Register every schema file under the subject io.crmflow.<area>.<Name> and set its compatibility.

    Safe to re-run: an unchanged schema keeps its id. A change the compatibility level forbids is
    refused by the registry and nothing after it is registered."""
    from crmflow.registry import Compatibility, register_all

    level = compatibility.upper()
    if level not in get_args(Compatibility):
        choices = ", ".join(get_args(Compatibility))
        console.print(f"[red]error:[/red] --compatibility {compatibility!r} is not one of {choices}")
        raise typer.Exit(2)
    try:
        client = _registry(registry_url).client()
        results = register_all(client, directory, cast(Compatibility, level))
    except CrmflowError as exc:
        raise _fail(exc) from exc
    if as_json:
        rows = [
            {"subject": r.subject, "id": r.schema_id, "version": r.version, "compatibility": r.compatibility}
            for r in results
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("subject", "id", "version", "compatibility")
    for r in results:
        table.add_row(r.subject, str(r.schema_id), str(r.version or "-"), r.compatibility)
    console.print(table)
