"""Bad input ends in the DLQ with its reason, the counts still reconcile, and after the config is fixed a
replay lands what the fix makes valid — exactly once."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import load_config
from crmflow.dlq import read_dead_letters
from crmflow.pipeline.migrate import drain_sink
from crmflow.pipeline.services import Service, wait_drained
from crmflow.stack import Endpoints
from tests.e2e.conftest import Dataset, Run, assert_target_matches_truth

pytestmark = pytest.mark.e2e

TOO_LONG = "T9999999"


def _iso_dates_only(raw: dict[str, Any]) -> None:
    """A mapping mistake: ticket dates accepted only in ISO form, so MM/DD/YYYY and DD.MM.YYYY are rejected."""
    for f in raw["entities"]["case"]["fields"]:
        if f.get("source") == "Support_Ticket_Date":
            f["transform"] = {"parse_date": {"formats": ["%Y-%m-%d"]}}


def test_rejects_reconcile_and_replay_after_a_fix_lands_them(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, tmp_path: Path,
) -> None:
    # The generated data has malformed lines, bad encodings, unparseable dates and amounts; add a ticket
    # whose subject breaks the entity model's length constraint.
    data = tmp_path / "data"
    shutil.copytree(small_dataset.dir, data)
    with (data / "tickets.csv").open("a", encoding="utf-8") as fh:
        fh.write(f'{TOO_LONG},C0000001,2024-01-02,{"x" * 600},Open,Low\n')
    dataset = Dataset(data, small_dataset.truth)

    broken = run_factory(dataset, _iso_dates_only)
    res = broken.cli("migrate", "-c", str(broken.config), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["reconciled"] is True
    rules = summary["rejected_by_rule"]
    for rule in ("csv_malformed", "encoding", "currency_format", "schema", "orphan"):
        assert rules.get(rule, 0) > 0, rule
    assert summary["entities"]["case"]["written"] < len(dataset.ok("case")) * 0.8  # the mistake bites

    first = list(read_dead_letters(endpoints.bootstrap_servers, registry_client, f"{broken.prefix}.dlq"))
    letters = [lt.record for lt in first]
    schema = [r for r in letters if r["rule"] == "schema"]
    assert [(r["stage"], r["field"], r["entity"]) for r in schema] == [("process", "subject", "case")]
    assert "x" * 20 not in schema[0]["error"]

    # Fix the mapping (same topics, groups and target), replay the date rejects, run the stages again.
    fixed_raw = yaml.safe_load(broken.config.read_text())
    for f in fixed_raw["entities"]["case"]["fields"]:
        if f.get("source") == "Support_Ticket_Date":
            f["transform"] = "parse_date"
    fixed = broken.config.with_name("fixed.yaml")
    fixed.write_text(yaml.safe_dump(fixed_raw, sort_keys=False))
    res = broken.cli("dlq", "replay", "-c", str(fixed), "--stage", "process", "--rule", "date_format")
    assert res.returncode == 0, res.stderr[-2000:]
    replayed = sum(1 for r in letters if r["stage"] == "process" and r["rule"] == "date_format")
    assert f"replayed {replayed} letters" in res.stderr.replace("\n", " ")

    cfg = load_config(fixed)
    processor = Service("process", ["process", "-c", str(fixed), "--metrics-port", "0"],
                        tmp_path / "process.log", dict(broken.env))
    try:
        wait_drained(endpoints.bootstrap_servers, f"crmflow-process-{cfg.kafka.topic_prefix}",
                     [cfg.kafka.raw_topic(s) for s in cfg.sources], [processor], 300)
    finally:
        processor.stop()
    drain_sink(cfg, endpoints, broken.target_dsn)

    # Now the target is exactly the truth: the replayed cases landed once, the rest is unchanged.
    assert_target_matches_truth(broken.target_dsn, dataset)
    seen = {(lt.partition, lt.offset) for lt in first}
    after = read_dead_letters(endpoints.bootstrap_servers, registry_client, f"{broken.prefix}.dlq")
    new_rules = Counter(lt.record["rule"] for lt in after if (lt.partition, lt.offset) not in seen)
    # Each replayed record now meets its true fate: really unparseable dates fail again, tickets of unknown
    # customers become orphans (the date rule had hidden that), everything else landed.
    truth_rule = {f'{t["source_file"]}:{t["line"]}': t["rule"] for t in dataset.truth}
    expected = Counter(truth_rule[r["source_position"]] for r in letters
                       if r["stage"] == "process" and r["rule"] == "date_format")
    expected.pop(None, None)
    assert new_rules == expected
    assert expected["date_format"] > 0
