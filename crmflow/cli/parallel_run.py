"""`crmflow parallel-run` — cdc + process + sink keep the target in step with the legacy database, measured.

Exit codes: 0 caught up and the target equals the legacy tables after mapping, 1 caught up but the target
differs (the differences are printed), 2 config error (or the slot), 3 Kafka, the registry or PostgreSQL
unreachable or a catch-up timed out, 130 interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from crmflow.cli.signals import stop_on_signals
from crmflow.exceptions import ConfigError, CrmflowError, RunInterruptedError
from crmflow.exitcodes import ExitCode

err_console = Console(stderr=True)


def parallel_run(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML) "
                                         "with a cdc section and table sources of its tables.")],
    changes: Annotated[float | None, typer.Option(
        "--changes", min=0.1, help="Run the demo change workload (crmflow demo-data --changes) on the legacy "
        "database's legacy.* tables at this many changed rows/s; without it, only watch whatever changes it.")] = None,
    seconds: Annotated[float, typer.Option("--seconds", min=0.0, help="How long the changes run (or the watch).")
                       ] = 30.0,
    reset: Annotated[bool, typer.Option(
        "--reset", help="Start over: drop the config's replication slot, publication and target schema first "
        "(demos, tests); the tables are then loaded again.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up when the target has not caught up after this many "
                                                "seconds.")] = 900.0,
    seed: Annotated[int, typer.Option(help="Seed of the change workload.")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")] = False,
) -> None:
    """Run crmflow cdc, process and sink as services until the target has caught up with the legacy database;
    optionally change the legacy database meanwhile; then report how far behind the target was (end-to-end
    latency of the changes, time to catch up) and whether it equals the legacy tables after mapping.

    The first run creates the slot and loads the tables (crmflow cdc --init); later runs resume from the slot.
    CRMFLOW_LEGACY_DSN, when the config reads it and it is unset, is the crmflow stack's legacy database."""
    from crmflow.config import load_config
    from crmflow.pipeline.migrate import RunControl
    from crmflow.pipeline.parallel_run import ParallelRunOptions, run_parallel
    from crmflow.pipeline.targets import resolve_target
    from crmflow.quality.legacy import compare_with_legacy
    from crmflow.stack import get_stack

    control = RunControl()

    stop_on_signals(control, "the services")
    try:
        ep = get_stack().endpoints()
        os.environ.setdefault("CRMFLOW_LEGACY_DSN", ep.legacy_dsn)  # the stack's own variable, as its default
        cfg = load_config(config)
        target = resolve_target(cfg, ep)
        err_console.print(f"parallel run of {config}: target {target.describe()}", highlight=False, soft_wrap=True)
        result = run_parallel(
            cfg, config.resolve(), ep, target,
            ParallelRunOptions(changes=changes, seconds=seconds, reset=reset, timeout_s=timeout, seed=seed),
            control=control, say=lambda line: err_console.print(line, highlight=False, soft_wrap=True),
        )  # fmt: skip
        result.validation = compare_with_legacy(cfg, target.dsn, target.schema)
    except RunInterruptedError as exc:
        err_console.print(f"[yellow]interrupted[/yellow] ({exc.signal_name}); the slot keeps the position: run "
                          "again to resume")  # fmt: skip
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.CONFIG) from None
    except CrmflowError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err_console.print(f"[red]error:[/red] {first}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.INFRASTRUCTURE) from None
    data = result.to_json()
    (result.logs / "parallel-run.json").write_text(json.dumps(data, indent=2, default=str))
    if as_json:
        print(json.dumps(data, default=str))
    else:
        _print(data)
    raise typer.Exit(ExitCode.OK if result.in_step else ExitCode.NOT_RECONCILED)


def _print(data: dict[str, Any]) -> None:
    out = Console()
    w = data["workload"]
    if w:
        out.print(f"changes: {w['changes']} rows in {w['transactions']} transactions over {w['seconds']}s "
                  f"({w['rate']}/s)")  # fmt: skip
    lat = data["latency"]
    if lat and lat.get("measured"):
        out.print(f"end-to-end latency (source commit → target write), {lat['measured']} of {lat['changes']} "
                  f"changed ids: p50 {lat['p50_s']}s, p99 {lat['p99_s']}s, max {lat['max_s']}s")  # fmt: skip
    out.print(f"caught up: {'yes' if data['caught_up'] else 'no'}, {data['caught_up_after_s']}s after the last "
              "change")  # fmt: skip
    for entity, c in sorted(data["counts"].items()):
        out.print(f"  {entity}: legacy {c['legacy']} rows, target {c['target']} rows")
    v = data["validation"]
    verdict = "equals" if data["in_step"] else "DIFFERS FROM"
    out.print(f"target {verdict} the legacy tables after mapping: {v['compared']} rows compared field by field, "
              f"missing {v['missing']}, extra {v['extra']}, different {v['wrong']}; not compared: {v['stale']} "
              f"whose latest change failed a rule (dead letters), {v['orphans']} children without their account")
    for d in v.get("differences", []):
        out.print(f"  {d['kind']}: {d['entity']} {d['id']}" + (f" field {d['field']}" if d["field"] else ""),
                  highlight=False)
    out.print(f"details: {data['logs']}/parallel-run.json")
