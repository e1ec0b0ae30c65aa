"""`crmflow cutover status`: GO (exit 0) or NO-GO (exit 1) with each reason named; 2 config error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from crmflow.exceptions import CrmflowError
from crmflow.exitcodes import ExitCode

app = typer.Typer(help="Decide the cutover.", no_args_is_help=True)
err_console = Console(stderr=True)


@app.command("status")
def status(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as one JSON object.")] = False,
) -> None:
    """GO when every service is up, the pipeline's lag is within validation.max_lag, no dead letter of an
    unaccepted rule is open, the last validation met its thresholds, and a fresh sample shows no drift."""

    from crmflow.cli.validate import latest_run
    from crmflow.config import load_config
    from crmflow.pipeline.health import kafka_reachable, postgres_reachable, registry_reachable
    from crmflow.pipeline.letters import update_ledger
    from crmflow.pipeline.migrate import processor_topics
    from crmflow.pipeline.runs import RunStore
    from crmflow.pipeline.services import group_lag
    from crmflow.pipeline.targets import resolve_target
    from crmflow.quality.cutover import (
        Check,
        cdc_check,
        dlq_check,
        drift_check,
        lag_check,
        last_validation_check,
        services_check,
        verdict,
    )
    from crmflow.stack import get_stack

    try:
        cfg = load_config(config)
        ep = get_stack().endpoints()
        target = resolve_target(cfg, ep)
        checks: list[Check] = []
        up = {"kafka": kafka_reachable(ep.kafka.for_stage("ops")), "registry": registry_reachable(ep.registry),
              "postgres": postgres_reachable(target.dsn)}
        checks.append(services_check(up))
        if up["kafka"] is None:
            k = cfg.kafka
            groups = {f"crmflow-process-{k.topic_prefix}": processor_topics(cfg),
                      f"crmflow-sink.{cfg.run.name}": [k.mapped_topic(e) for e in cfg.entities]}
            lags = {group: group_lag(ep.kafka.for_stage("ops"), group, topics) for group, topics in groups.items()}
            checks.append(lag_check(lags, cfg.validation.max_lag))
        cdc = cdc_check(cfg)
        if cdc is not None:
            checks.append(cdc)
        runs = RunStore()
        record = latest_run(runs, config, cfg.run.name)
        last = runs.dir(record.run_id) / "validate.json" if record else None
        checks.append(last_validation_check(last))
        if up["postgres"] is None:
            if up["kafka"] is None and up["registry"] is None:
                update_ledger(cfg, ep, target)
            with target.dsn.connect() as conn:
                checks.append(dlq_check(conn, target.schema, cfg.kafka.dlq_topic, cfg.validation.accepted_dlq_rules))
                checks.append(drift_check(cfg, conn, target.schema, record.run_id if record else None,
                                          cfg.validation.drift_sample))
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.CONFIG) from None
    result = verdict(checks)
    if as_json:
        print(json.dumps(result))
    else:
        console = Console()
        console.print(result["verdict"], style="bold green" if result["go"] else "bold red")
        for c in result["checks"]:
            console.print(f"  [{'ok' if c['ok'] else 'NO'}] {c['name']}: {c['detail']}", highlight=False,
                          soft_wrap=True, markup=False)
    raise typer.Exit(ExitCode.OK if result["go"] else ExitCode.NOT_RECONCILED)
