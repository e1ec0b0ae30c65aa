"""`crmflow dlq list | replay` — what was rejected, why, and sending it back after a fix."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from crmflow.exceptions import CrmflowError, TransientError
from crmflow.exitcodes import ExitCode
from crmflow.kafkalog import client_logging

if TYPE_CHECKING:
    from crmflow.dlq import DeadLetter
    from crmflow.stack import Endpoints

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect and replay the dead-letter topic.")
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")]
RunOpt = Annotated[str | None, typer.Option("--run-id", help="Only letters of this run.")]
StageOpt = Annotated[str | None, typer.Option("--stage", help="Only letters of this stage.")]
RuleOpt = Annotated[str | None, typer.Option("--rule", help="Only letters of this rule.")]


def _fail(exc: CrmflowError) -> int:
    """One line on stderr; exit 3 when a part of the stack is unreachable, else 2 (config)."""
    first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    err_console.print(f"[red]error:[/red] {first}", highlight=False, soft_wrap=True)
    return ExitCode.INFRASTRUCTURE if isinstance(exc, TransientError) else ExitCode.CONFIG


def _letters(
    config: Path, run_id: str | None, stage: str | None, rule: str | None
) -> tuple[Endpoints, list[DeadLetter]]:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from crmflow.config import load_config
    from crmflow.dlq import read_dead_letters
    from crmflow.stack import get_stack

    cfg = load_config(config)
    ep = get_stack().endpoints()
    registry = SchemaRegistryClient({"url": ep.registry_url})
    letters = [
        lt for lt in read_dead_letters(ep.bootstrap_servers, registry, cfg.kafka.dlq_topic)
        if (run_id is None or lt.record["run_id"] == run_id)
        and (stage is None or lt.record["stage"] == stage)
        and (rule is None or lt.record["rule"] == rule)
    ]
    return ep, letters


@app.command("list")
def list_(
    config: ConfigOpt,
    run_id: RunOpt = None,
    stage: StageOpt = None,
    rule: RuleOpt = None,
    limit: Annotated[int, typer.Option(help="Rows to show (the counts cover all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per letter on stdout.")] = False,
) -> None:
    """List dead letters: stage, rule, field, the PII-free reason and where the record came from."""
    try:
        _, letters = _letters(config, run_id, stage, rule)
    except CrmflowError as exc:
        raise typer.Exit(_fail(exc)) from None
    if as_json:
        for lt in letters:
            r = {k: v for k, v in lt.record.items() if k not in ("payload", "payload_key")}
            print(json.dumps({"dlq_partition": lt.partition, "dlq_offset": lt.offset, **r}, default=str))
        return
    table = Table("stage", "rule", "field", "entity", "from", "error", title=f"{len(letters)} dead letters")
    for lt in letters[:limit]:
        r = lt.record
        origin = r["source_position"] or f'{r["source_topic"]}[{r["source_partition"]}]@{r["source_offset"]}'
        table.add_row(r["stage"], r["rule"], r["field"] or "-", r["entity"] or "-", origin, r["error"])
    err_console.print(table)
    counts = Counter((lt.record["stage"], lt.record["rule"]) for lt in letters)
    err_console.print(", ".join(f"{s}/{r}: {n}" for (s, r), n in sorted(counts.items())))


@app.command()
def replay(
    config: ConfigOpt,
    run_id: RunOpt = None,
    stage: StageOpt = None,
    rule: RuleOpt = None,
) -> None:
    """Send letters back to the topic they were consumed from (after fixing the config or the target).

    Records that never reached Kafka (snapshot-stage rejects: malformed lines, bad encoding) are skipped:
    fix the source file and run `crmflow snapshot --restart` for that source; re-sent records land
    idempotently."""
    from confluent_kafka import Producer

    from crmflow.dlq import DlqCipher
    from crmflow.dlq import replay as do_replay

    try:
        ep, letters = _letters(config, run_id, stage, rule)
        producer = Producer({"bootstrap.servers": ep.bootstrap_servers, "enable.idempotence": True,
                             "linger.ms": 20, **client_logging()})
        replayed, skipped = do_replay(iter(letters), producer, DlqCipher.from_env())
    except CrmflowError as exc:
        raise typer.Exit(_fail(exc)) from None
    err_console.print(f"replayed {replayed} letters to their source topics; skipped {skipped} source-file rejects")
