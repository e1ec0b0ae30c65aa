"""The migration report of a real run, opened in headless Chromium: what a person sees.

Set CRMFLOW_SCREENSHOTS=docs/img to refresh the README's screenshot (migration-report.png)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from crmflow.pipeline.runs import RunStore
from crmflow.reports.browser import dump_dom, screenshot
from tests.e2e.conftest import Dataset, Migrated

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _section(dom: str, sid: str) -> str:
    found = re.search(rf'<section[^>]*data-section="{sid}"[^>]*>(.*?)</section>', dom, re.S)
    assert found, f"no section {sid} in the rendered page"
    return found.group(0)


def test_the_migration_report_shows_verdict_reconciliation_rejects_and_throughput(
    small_dataset: Dataset, small_migration: Migrated, tmp_path: Path
) -> None:
    run, summary = small_migration.run, small_migration.summary  # the session's, which no test changes
    run_dir = RunStore().dir(summary["run_id"])
    page = run_dir / "report.html"
    assert page.is_file()

    record = json.loads((run_dir / "run.json").read_text())
    samples = record["timeline"]["samples"]
    assert len(samples) >= 3 and record["timeline"]["columns"] == ["t_s", "read", "processed", "written"]
    read_total = sum(c["read"] for c in summary["entities"].values())
    landed = sum(c["inserted"] + c["updated"] + c["unchanged"] for c in summary["entities"].values())
    # The snapshot's own rejects (malformed lines) never reach a raw topic; offsets also count markers.
    assert 0.95 * read_total <= samples[-1][1] <= 1.05 * read_total
    assert samples[-1][3] >= landed  # the sink committed every mapped record it wrote
    assert [s[3] for s in samples] == sorted(s[3] for s in samples)  # cumulative

    again = run.cli("runs", "report", summary["run_id"])
    assert again.returncode == 0 and again.stdout.strip() == str(page)

    dom = dump_dom(page)
    verdict = _section(dom, "verdict")
    assert 'data-verdict="pass"' in verdict and "Reconciled" in verdict
    kpis = _section(dom, "kpis")
    assert f"{read_total:,}" in kpis
    for chart in ("reconciliation-chart", "rejects-by-rule", "throughput-over-time"):
        assert 'class="main-svg"' in _section(dom, chart), f"{chart} was not drawn"
    table = _section(dom, "reconciliation-per-entity")
    for entity, c in summary["entities"].items():
        assert re.search(rf"<td>{entity}</td><td class=\"num\">{c['read']:,}</td>", table)
    rules = _section(dom, "rejects-by-rule-table")
    expected = Counter(t["rule"] for t in small_dataset.rejects())
    for rule, n in summary["rejected_by_rule"].items():
        assert f'<td>{rule}</td><td class="num">{n:,}</td>' in rules
    assert sum(summary["rejected_by_rule"].values()) == sum(expected.values())

    png = screenshot(page, tmp_path / "migration-report.png", height=2400)
    assert png.stat().st_size > 20_000
    if os.environ.get("CRMFLOW_SCREENSHOTS"):
        shutil.copy(png, Path(os.environ["CRMFLOW_SCREENSHOTS"]) / "migration-report.png")
