"""`crmflow validate`: recompute the target from the sources, name every difference, gate on the thresholds.

Exit codes: 0 every threshold of the config's ``validation:`` section met, 1 not met (the reasons are
printed and in validate.json), 2 config error, 3 the stack or the target is unreachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from crmflow.exceptions import ConfigError, CrmflowError
from crmflow.exitcodes import ExitCode

err_console = Console(stderr=True)


def validate(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    run_id: Annotated[str | None, typer.Option(help="Validate what this run read (default: the config's latest "
                                                    "run; none: every source in full).")] = None,
    sample: Annotated[int | None, typer.Option(min=1, help="Compare a random sample of about N records "
                                                           "(completeness is always checked in full).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(help="Directory for validate.json and validate.html (default: the "
                                                  "run's directory).")] = None,
) -> None:
    """Check completeness, accuracy (field by field, through the processor's own mapping), consistency and
    integrity of the target; write validate.json and validate.html; exit 1 when a threshold is not met."""
    import psycopg

    from crmflow.config import load_config
    from crmflow.pipeline.letters import update_ledger
    from crmflow.pipeline.runs import RunStore
    from crmflow.pipeline.targets import resolve_target
    from crmflow.quality.validate import Validator
    from crmflow.quality.validate_html import write_validate_html
    from crmflow.stack import get_stack

    try:
        cfg = load_config(config)
        ep = get_stack().endpoints()
        target = resolve_target(cfg, ep)
        runs = RunStore()
        record = latest_run(runs, config, cfg.run.name) if run_id is None else runs.load(run_id)
        rid = record.run_id if record is not None else None
        update_ledger(cfg, ep, target)  # the sink's rejections (orphans, refusals) count as rejected
        with target.dsn.connect() as conn:
            report = Validator(cfg, conn, schema=target.schema, target=target.describe(), run_id=rid,
                               sample=sample, seed=seed, run_summary=record.summary if record else None).run()
    except psycopg.OperationalError as exc:
        err_console.print(f"[red]error:[/red] the target database is unreachable ({exc.sqlstate or 'no SQLSTATE'})")
        raise typer.Exit(ExitCode.INFRASTRUCTURE) from None
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.CONFIG) from None
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.INFRASTRUCTURE) from None
    data = report.to_json()
    directory = out or (runs.dir(rid) if rid else Path.cwd())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "validate.json").write_text(json.dumps(data, indent=2, default=str))
    write_validate_html(data, directory / "validate.html")
    if as_json:
        print(json.dumps(data, default=str))
    else:
        _print(data, directory)
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.NOT_RECONCILED)


def latest_run(runs: Any, config: Path, name: str) -> Any:
    """The latest finished run of this config file (else of this run name), or None."""
    done = [r for r in runs.list() if r.status in ("reconciled", "not_reconciled")]
    same = [r for r in done if Path(r.config) == config.resolve()] or [
        r for r in done if r.run_id.startswith(f"{name}-")]
    return same[-1] if same else None


def _print(data: dict[str, Any], directory: Path) -> None:
    console = Console()
    k = data["kpis"]
    console.print(f"{data['verdict']}: accuracy {k['data_accuracy_rate']:.4%}, completeness "
                  f"{k['data_completeness_rate']:.4%}, run {data['run_id'] or '-'}", highlight=False)
    for reason in data["reasons"]:
        console.print(f"  - {reason}", highlight=False)
    for entity, c in data["entities"].items():
        console.print(f"  {entity}: source {c['source']} = landed {c['landed']} + merged {c['merged']} + rejected "
                      f"{c['rejected']} + filtered {c['filtered']} + in flight {c['in_flight']} + missing "
                      f"{c['missing']}; extra {c['extra']}", highlight=False)  # fmt: skip
    for d in data["discrepancies"][:20]:
        console.print(f"  {d['check']}: {d['entity']} {d['id']} {d['field'] or ''}: expected {d['expected']!r}, "
                      f"found {d['found']!r}", highlight=False, soft_wrap=True)  # fmt: skip
    if data["confidence"]:
        console.print(f"  {data['confidence']['statement']}", highlight=False)
    console.print(f"report: {directory / 'validate.json'}, {directory / 'validate.html'}", highlight=False)
