"""The parallel run's own arithmetic: each id's last change from changes.jsonl, its latency to the target's write,
percentiles (crmflow.pipeline.parallel_run)."""

from __future__ import annotations

import json

import pytest

from crmflow.config import load_config
from crmflow.pipeline.parallel_run import captured_tables, change_latencies, last_changes, latency_summary, percentile

pytestmark = pytest.mark.unit


def _line(table: str, ident: str, op: str, at: float) -> str:
    return json.dumps({"table": table, "id": ident, "op": op, "txid": 1, "committed_at": at})


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([5.0, 1.0], 50) == 1.0


def test_last_changes_keeps_each_ids_latest_commit() -> None:
    lines = [_line("legacy.customers", "C1", "c", 10.0), _line("legacy.customers", "C1", "u", 12.0), "",
             _line("legacy.customers", "C1", "u", 11.0), _line("legacy.tickets", "C1", "d", 9.0)]  # fmt: skip
    assert last_changes(lines) == {("legacy.customers", "C1"): ("u", 12.0), ("legacy.tickets", "C1"): ("d", 9.0)}


def test_latency_from_commit_to_the_write_of_the_row_or_its_delete() -> None:
    last = {("legacy.customers", "C1"): ("u", 100.0), ("legacy.customers", "C2"): ("d", 100.0),
            ("legacy.customers", "C3"): ("u", 100.0),  # its row was written before: the change altered nothing
            ("legacy.customers", "C4"): ("c", 100.0),  # not in the target (a dead letter): not measured
            ("legacy.other", "X1"): ("c", 100.0)}  # not a captured table of a source  # fmt: skip
    asked: list[tuple[str, str, list[str]]] = []

    def written(entity: str, kind: str, ids: list[str]) -> dict[str, float]:
        asked.append((entity, kind, sorted(ids)))
        return {"row": {"C1": 100.25, "C3": 99.0}, "delete": {"C2": 101.5}}[kind]

    values = change_latencies(last, written, {"legacy.customers": "account"})
    assert sorted(values) == [0.25, 1.5]
    assert sorted(asked) == [("account", "delete", ["C2"]), ("account", "row", ["C1", "C3", "C4"])]
    summary = latency_summary(values, len(last))
    assert summary["measured"] == 2 and summary["changes"] == 5 and summary["max_s"] == 1.5
    assert latency_summary([], 3) == {"measured": 0, "changes": 3}


def test_the_demo_cdc_config_captures_every_table_it_reads() -> None:
    cfg = load_config("deploy/demo/crmflow-cdc.yaml")
    assert captured_tables(cfg) == {"legacy.customers": "account", "legacy.contacts": "contact",
                                    "legacy.sales": "sale", "legacy.tickets": "case"}  # fmt: skip
    assert not cfg.dedupe_enabled and cfg.target is not None and cfg.target.schema_name == "crm_cdc"
