"""`run_snapshot` on a PostgreSQL table (a fresh database per test): key order, NULLs, resume by key."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.stack import Endpoints
from crmflow.topics import raw_topic
from producers.checkpoint import CheckpointStore
from producers.readers import KeyMark
from producers.snapshot import run_snapshot

pytestmark = pytest.mark.integration

ROWS = 1234
DSN_ENV = "CRMFLOW_TEST_LEGACY_DSN"


class StopAfterFirstBatch:
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def start(self, source: str, *, total: int | None, completed: int, unit: str) -> None:
        assert unit == "rows"
        assert total == ROWS

    def update(self, source: str, completed: int) -> None:
        self.stop.set()

    def finish(self, source: str) -> None:
        return None


@pytest.fixture
def legacy_dsn(pg_dsn_factory: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database with ``legacy.customers``; rows inserted in reverse key order on purpose."""
    dsn = pg_dsn_factory()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create schema legacy")
        conn.execute(
            "create table legacy.customers (customer_id text primary key, first_name text, "
            "region text, customer_since text)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "insert into legacy.customers values (%s, %s, %s, %s)",
                [
                    (f"C{i:07d}", None if i % 10 == 0 else f" Name {i} ", ["EU", "NA", "UK"][i % 3], "01/02/2020")
                    for i in range(ROWS, 0, -1)
                ],
            )
    monkeypatch.setenv(DSN_ENV, dsn)
    return dsn


SOURCE = f"  customers: {{kind: table, dsn_env: {DSN_ENV}, table: legacy.customers, entity: account, key: Customer_ID}}"


def test_table_snapshot_in_key_order_with_nulls(
    tmp_path: Path, legacy_dsn: str, topic_prefix: str, endpoints: Endpoints,
    registry_client: SchemaRegistryClient, read_topic: Callable[[str], list[Any]], write_config: Callable[..., Any],
) -> None:  # fmt: skip
    cfg = write_config(tmp_path, topic_prefix, SOURCE, partitions=2)
    stats = run_snapshot(cfg, kafka=endpoints.kafka, registry_client=registry_client,
                         run_id="it-table", state_dir=tmp_path / "state")  # fmt: skip
    s = stats.sources["customers"]
    assert (s.read, s.produced, s.rejected, s.filtered, s.complete) == (ROWS, ROWS, 0, 0, True)
    consumed = read_topic(raw_topic(topic_prefix, "customers"))
    by_key = {c.value["source_key"]: c.value for c in consumed}
    assert len(consumed) == len(by_key) == ROWS
    assert by_key["C0000001"]["position"] == "legacy.customers:1"
    assert by_key[f"C{ROWS:07d}"]["position"] == f"legacy.customers:{ROWS}"
    assert by_key["C0000010"]["fields"] == {
        "customer_id": "C0000010", "first_name": None, "region": "NA", "customer_since": "01/02/2020",
    }  # fmt: skip
    assert by_key["C0000011"]["fields"]["first_name"] == " Name 11 "
    assert {v["entity"] for v in by_key.values()} == {"customers"}


def test_table_snapshot_resumes_after_the_last_acknowledged_key(
    tmp_path: Path, legacy_dsn: str, topic_prefix: str, endpoints: Endpoints,
    registry_client: SchemaRegistryClient, read_topic: Callable[[str], list[Any]], write_config: Callable[..., Any],
) -> None:  # fmt: skip
    cfg = write_config(tmp_path, topic_prefix, SOURCE)
    state = tmp_path / "state"
    common: dict[str, Any] = {"kafka": endpoints.kafka, "registry_client": registry_client,
                              "run_id": "it-table-resume", "state_dir": state}  # fmt: skip
    stop = threading.Event()
    first = run_snapshot(cfg, stop_event=stop, progress=StopAfterFirstBatch(stop), **common)
    s1 = first.sources["customers"]
    assert first.stopped and 0 < s1.produced < ROWS
    checkpoint = CheckpointStore(state).load("it-table-resume", "customers")
    assert checkpoint is not None and checkpoint.mark == KeyMark(f"C{s1.produced:07d}", s1.produced)

    # Rows added below the mark are not this run's business; rows above it are read.
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        conn.execute("insert into legacy.customers values ('C9999999', 'Late', 'EU', '')")

    second = run_snapshot(cfg, **common)
    s2 = second.sources["customers"]
    # The counts cover the whole run: the checkpointed part of the first call, then this call's rows.
    assert s2.complete and s2.read_before == s1.produced and s2.read_now == ROWS + 1 - s1.produced
    assert (s2.read, s2.produced) == (ROWS + 1, ROWS + 1)
    consumed = read_topic(raw_topic(topic_prefix, "customers"))
    keys = [c.value["source_key"] for c in consumed]
    assert len(keys) == len(set(keys)) == ROWS + 1
    second_run = [c.value for c in consumed if int(c.value["position"].rsplit(":", 1)[1]) > s1.produced]
    assert min(v["source_key"] for v in second_run) == f"C{s1.produced + 1:07d}"
    assert len(second_run) == s2.read_now
