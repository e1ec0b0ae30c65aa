"""A second `crmflow migrate` of the same data with the same config (issue 14, item 2): nothing in the target
changes (rows, their run_id and updated_at, cross-references, dedupe evidence, golden ids), and the second
run still reconciles, every record counted as unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Dataset, Run

pytestmark = pytest.mark.e2e

TABLES = ("accounts", "contacts", "sales", "cases")


def target_state(dsn: str) -> dict[str, Any]:
    """Every CRM row's lineage and timestamps, every xref entry with its evidence, the merge log."""
    state: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        for table in TABLES:
            parent = "null" if table == "accounts" else "account_id"
            state[table] = conn.execute(
                f"select external_id, golden_id, run_id, source_position, updated_at, {parent}, quality_flags "
                f"from crm.{table} order by external_id".encode()).fetchall()
        state["xref"] = conn.execute(
            "select entity, source, source_id, target_id, golden_id, run_id, updated_at, evidence from crm.xref "
            "order by 1, 2, 3").fetchall()
        state["golden_merges"] = conn.execute("select * from crm.golden_merges order by 1").fetchall()
    return state


def test_a_second_migrate_of_the_same_data_changes_nothing_and_reconciles(
    small_dataset: Dataset, run_factory: Callable[..., Run]
) -> None:
    run = run_factory(small_dataset, dedupe=True)
    first = run.cli("migrate", "-c", str(run.config), "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    summary1 = json.loads(first.stdout)
    before = target_state(run.target_dsn)
    evidence = sum(1 for x in before["xref"] if x[7] is not None)
    assert evidence > 0, "the first run recorded dedupe evidence"

    second = run.cli("migrate", "-c", str(run.config), "--json")  # a new run id, the same config and data
    assert second.returncode == 0, second.stderr[-3000:]
    summary2 = json.loads(second.stdout)
    assert summary2["run_id"] != summary1["run_id"]
    after = target_state(run.target_dsn)

    for part in before:
        changed = [r for r in after[part] if r not in before[part]]
        assert changed == [] and len(after[part]) == len(before[part]), (
            f"{part}: {len(changed)} rows changed by a re-run of the same data, first: {changed[:3]}")
    assert sum(1 for x in after["xref"] if x[7] is not None) == evidence

    assert summary2["reconciled"] is True
    for entity, c in summary2["entities"].items():
        c1 = summary1["entities"][entity]
        assert (c["inserted"], c["updated"], c["written"]) == (0, 0, 0), (entity, c)
        assert c["unchanged"] == c1["inserted"] + c1["updated"] + c1["unchanged"], (entity, c, c1)
        assert c["read"] == c["unchanged"] + c["rejected"] + c["filtered"], (entity, c)
    assert summary2["entities"]["account"]["golden"] == summary1["entities"]["account"]["golden"]
    assert summary2["entities"]["account"]["merged"] == summary1["entities"]["account"]["merged"]
