"""Duplicate primary keys against the real Kafka: the first record lands, the later ones are dead letters,
also when the first one was read by an earlier, interrupted call of the same run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.dlq import read_dead_letters
from crmflow.stack import Endpoints
from crmflow.topics import dlq_topic, raw_topic
from producers.checkpoint import CheckpointStore
from producers.snapshot import run_snapshot
from tests.integration.producers.test_snapshot_files import StopAfterFirstBatch

pytestmark = pytest.mark.integration

ROWS = 1200


def write_rows(path: Path, duplicates: dict[int, int]) -> None:
    """``ROWS`` records at lines 2..ROWS+1; ``duplicates`` maps a line to the line whose key it repeats."""
    lines = ["Customer_ID,First_Name"]
    for line in range(2, ROWS + 2):
        key = f"C{duplicates.get(line, line):05d}"
        lines.append(f"{key},Name {line}")
    path.write_text("\n".join(lines) + "\n")


def test_duplicates_are_dead_lettered_across_a_resume_and_the_counts_cover_the_run(
    tmp_path: Path, topic_prefix: str, endpoints: Endpoints, registry_client: SchemaRegistryClient,
    read_topic: Callable[[str], list[Any]], write_config: Callable[..., Any],
) -> None:  # fmt: skip
    # Line 1100 repeats line 3 (read by the first call, before the stop); line 1150 repeats line 1120.
    write_rows(tmp_path / "a.csv", {1100: 3, 1150: 1120})
    (tmp_path / "b.csv").write_text("Customer_ID,First_Name\nC00004,Other\nB1,New\n")  # C00004 is a.csv:4's
    cfg = write_config(tmp_path, topic_prefix, (
        f"  a: {{kind: csv, path: {tmp_path}/a.csv, entity: account, key: Customer_ID}}\n"
        f"  b: {{kind: csv, path: {tmp_path}/b.csv, entity: account, key: Customer_ID}}"))  # fmt: skip
    state = tmp_path / "state"
    common: dict[str, Any] = {"kafka": endpoints.kafka, "registry_client": registry_client,
                              "run_id": "it-keys", "state_dir": state}  # fmt: skip
    stop = threading.Event()
    first = run_snapshot(cfg, stop_event=stop, progress=StopAfterFirstBatch(stop), **common)
    assert first.stopped and 3 < first.sources["a"].read < 1100
    assert CheckpointStore(state).keys_path("it-keys", "a").exists()

    second = run_snapshot(cfg, **common)
    a, b = second.sources["a"], second.sources["b"]
    assert a.complete and b.complete
    assert (a.read, a.produced, a.rejected, a.rejected_by_rule) == (ROWS, ROWS - 2, 2, {"duplicate_key": 2})
    assert (b.read, b.produced, b.rejected) == (2, 1, 1)
    assert a.read_before == first.sources["a"].read

    produced = {c.value["position"] for c in read_topic(raw_topic(topic_prefix, "a"))}
    assert "a.csv:3" in produced and "a.csv:1100" not in produced and "a.csv:1150" not in produced
    dead = read_dead_letters(endpoints.kafka, registry_client, dlq_topic(topic_prefix))
    letters = {lt.record["source_position"]: lt.record for lt in dead}
    assert {(r["rule"], r["field"]) for r in letters.values()} == {("duplicate_key", "Customer_ID")}
    assert {p: r["error"] for p, r in letters.items()} == {
        "a.csv:1100": "key first read at a.csv:3, again at a.csv:1100",
        "a.csv:1150": "key first read at a.csv:1120, again at a.csv:1150",
        "b.csv:2": "key first read at a.csv:4 (source a), again at b.csv:2 (source b)",
    }

    # A third call finds everything done, and still reports the run's counts.
    third = run_snapshot(cfg, **common)
    assert third.sources["a"].skipped and (third.sources["a"].read, third.sources["a"].rejected) == (ROWS, 2)
