"""The migration report built from a run's record: verdict, reconciliation, rejects, throughput rates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crmflow.pipeline.migrate import EntityCounts, MigrationSummary
from crmflow.pipeline.run_report import _rates, build_run_report, write_run_report
from crmflow.pipeline.runs import RunRecord, RunStore

pytestmark = pytest.mark.unit

TIMELINE = {
    "interval_s": 1.0,
    "columns": ["t_s", "read", "processed", "written"],
    "samples": [[0.0, 0, 0, 0], [1.0, 500, 100, 0], [2.0, 1000, 600, 400], [4.0, 1000, 1000, 1000]],
}


def _record(counts: EntityCounts, rejected_by_rule: dict[str, int] | None = None) -> RunRecord:
    summary = MigrationSummary("demo-1", {"account": counts}, 4.0, rejected_by_rule=rejected_by_rule or {})
    return RunRecord("demo-1", "c.yaml", "t", status="reconciled", summary=summary.to_json(), timeline=TIMELINE)


def test_rates_are_per_second_between_samples() -> None:
    times, rates = _rates(TIMELINE)
    assert times == [1.0, 2.0, 4.0]
    assert rates["read"] == [500.0, 500.0, 0.0]
    assert rates["written"] == [0.0, 400.0, 300.0]


def test_a_reconciled_run_passes_and_shows_every_section() -> None:
    record = _record(EntityCounts(read=10, inserted=7, rejected=3), {"required": 2, "orphan": 1})
    html = build_run_report(record).render()
    assert 'data-verdict="pass"' in html
    sections = re.findall(r'data-section="([^"]+)"', html)
    assert sections[:3] == ["verdict", "kpis", "throughput-over-time"]
    assert {"reconciliation-per-entity", "reconciliation-chart", "rejects-by-rule", "rejects-by-rule-table"} <= set(
        sections
    )
    assert "400" in re.search(r'data-kpi="written/s \(peak\)"[^>]*>.*?</div>', html, re.S).group(0)  # type: ignore[union-attr]


def test_a_run_that_did_not_reconcile_fails_and_names_the_entity() -> None:
    html = build_run_report(_record(EntityCounts(read=10, inserted=7, rejected=1))).render()
    assert 'data-verdict="fail"' in html and "account: read 10" in html and "difference +2" in html


def test_a_failed_run_without_summary_still_gets_a_page(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    record = RunRecord("demo-2", "c.yaml", "t", status="failed", error="Kafka at k:1: refused")
    path = write_run_report(store, record)
    assert path == tmp_path / "demo-2" / "report.html"
    html = path.read_text()
    assert 'data-verdict="fail"' in html and "--run-id demo-2" in html and "No throughput samples" in html
