"""A run's record on disk, and how its summary reads (80 columns, and what the table does not say)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crmflow.cli.report import summary_lines, summary_text
from crmflow.exceptions import InfrastructureError, RunInterruptedError
from crmflow.pipeline.migrate import EntityCounts, MigrationSummary
from crmflow.pipeline.runs import RunStore

pytestmark = pytest.mark.unit


def _summary(**account: Any) -> dict[str, Any]:
    counts = EntityCounts(read=10, inserted=6, updated=1, unchanged=2, rejected=1, **account)
    return MigrationSummary("demo-1", {"account": counts}, 2.0, target="postgresql://u@h:1/d (schema crm)").to_json()


def test_a_run_is_begun_failed_resumed_and_finished(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    record = store.begin("demo-1", Path("c.yaml"), "t", resumed=False)
    store.fail(record, InfrastructureError("Kafka at k:1", "refused", "start it"))
    assert store.load("demo-1").status == "failed" and "Kafka at k:1" in (store.load("demo-1").error or "")
    record = store.begin("demo-1", Path("c.yaml"), "t", resumed=store.exists("demo-1"))
    store.fail(record, RunInterruptedError("SIGINT"))
    assert store.load("demo-1").status == "interrupted"
    record = store.begin("demo-1", Path("c.yaml"), "t", resumed=True)
    store.finish(record, _summary())
    loaded = store.load("demo-1")
    assert (loaded.status, loaded.starts, loaded.error) == ("reconciled", 3, None)
    assert [r.run_id for r in store.list()] == ["demo-1"]


def test_counts_reconcile_over_new_updated_same_rejected_filtered() -> None:
    assert EntityCounts(read=10, inserted=6, updated=1, unchanged=2, rejected=1).reconciled
    assert not EntityCounts(read=10, inserted=6, updated=1, unchanged=2).reconciled
    assert EntityCounts(read=4, unchanged=4).written == 0  # a no-op re-run wrote nothing


def test_the_summary_table_fits_80_columns_and_names_flags_and_target() -> None:
    data = _summary(flagged_records=3, flagged={"email_invalid": 2, "phone_vanity": 1})
    text = summary_text(data, "deploy/demo/crmflow.yaml")
    table = [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and max(len(line) for line in table) <= 80
    lines = summary_lines(data, "c.yaml")
    assert "target: postgresql://u@h:1/d (schema crm)" in lines
    assert any("email_invalid 2" in line and "phone_vanity 1" in line for line in lines)
    bad = _summary()
    bad["reconciled"] = False
    assert any("NOT reconciled" in line for line in summary_lines(bad, "c.yaml"))
