"""`crmflow assess` — profile every source of a migration config before migrating.

Writes ``assess.json`` and ``assess.html`` into ``--out`` (default ``<CRMFLOW_HOME>/assess/<run name>-<time>``)
and prints where; ``--json`` prints the JSON on stdout instead. Progress goes to stderr. Exit codes: 0 (the
data's problems are findings, not failures), 2 when the config or a source cannot be used.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from crmflow.exceptions import CrmflowError
from crmflow.exitcodes import ExitCode

err_console = Console(stderr=True)


def assess(
    config: Annotated[Path, typer.Option("--config", "-c", envvar="CRMFLOW_CONFIG", help="Migration config (YAML).")],
    out: Annotated[
        Path | None, typer.Option(help="Directory for assess.json and assess.html (default: under CRMFLOW_HOME).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print assess.json on stdout.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records of each source.")] = None,
    dedupe_limit: Annotated[
        int, typer.Option(min=0, help="Accounts the duplicate search sees at most (about 5 KB of memory each).")
    ] = 50_000,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
) -> None:
    """Profile the sources before migrating: null/blank rates, distinct and top values (PII masked), what
    each cleansing rule would change, flag or reject (masked examples, file:line), duplicate candidates,
    orphans and outliers. Reads the sources only; writes nothing to Kafka or the target."""
    from crmflow.cli.progress import NoProgress, RichProgress
    from crmflow.config import load_config
    from crmflow.quality.assess import AssessOptions
    from crmflow.quality.assess import assess as run_assess
    from crmflow.quality.assess_html import assess_report
    from crmflow.settings import stack_settings

    try:
        cfg = load_config(config)
        bars = RichProgress(err_console) if progress and err_console.is_terminal else NoProgress()
        with bars:
            data = run_assess(cfg, config.resolve(), AssessOptions(dedupe_limit=dedupe_limit, limit=limit), bars)
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.CONFIG) from None
    directory = out or stack_settings().home / "assess" / f"{cfg.run.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "assess.json"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    html_path = assess_report(data).write(directory / "assess.html")
    if as_json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
    else:
        records = sum(s["records"] for s in data["sources"].values())
        rejects = ", ".join(f"{r} {n:,}" for r, n in data["rejects_by_rule"].items()) or "none"
        Console().print(f"{records:,} source records assessed in {data['elapsed_s']:.1f}s; would be rejected: "
                        f"{rejects}", highlight=False, soft_wrap=True)  # fmt: skip
    err_console.print(f"assess.json: {json_path}\nassess.html: {html_path}", highlight=False, soft_wrap=True)
