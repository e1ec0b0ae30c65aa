"""Debezium's own topics as input (the ``debezium`` config section): messages shaped as a Debezium PostgreSQL
connector writes them with the JsonConverter (schemas on), in a real topic, read by ``crmflow process`` and applied
by ``crmflow sink`` to a real target: inserts, an update leaving a TOASTed column unchanged, a delete."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import load_config
from crmflow.pipeline.migrate import prepare
from crmflow.pipeline.services import Service
from crmflow.stack import Endpoints
from producers.kafka import ensure_topics
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

ROW = {"type": "struct", "optional": True, "fields": [
    {"type": "string", "optional": False, "field": "customer_id"},
    {"type": "string", "optional": True, "field": "first_name"},
    {"type": "string", "optional": True, "field": "last_name"},
    {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1, "field": "born"},
    {"type": "bytes", "optional": True, "name": "org.apache.kafka.connect.data.Decimal",
     "parameters": {"scale": "2"}, "field": "balance"},
    {"type": "string", "optional": True, "field": "notes"},
]}  # fmt: skip
SCHEMA = {"type": "struct", "name": "legacy.legacy.customers.Envelope", "optional": False, "fields": [
    {**ROW, "field": "before"}, {**ROW, "field": "after"}, {"type": "string", "field": "op"}]}  # fmt: skip


def _event(op: str, row: dict[str, Any], lsn: int) -> bytes:
    before, after = (row, None) if op == "d" else (None, row)
    return orjson.dumps({"schema": SCHEMA, "payload": {
        "before": before, "after": after, "op": op, "ts_ms": 1704164646000,
        "source": {"connector": "postgresql", "name": "legacy", "db": "crm_legacy", "schema": "legacy",
                   "table": "customers", "txId": lsn, "lsn": lsn, "ts_ms": 1704164645000, "snapshot": "false"}}})


def _row(cid: str, first: str, notes: str = "R1 note") -> dict[str, Any]:
    return {"customer_id": cid, "first_name": first, "last_name": "smith", "born": 3652,
            "balance": base64.b64encode((12345).to_bytes(2, "big", signed=True)).decode(), "notes": notes}


def test_debezium_json_messages_reach_the_target(
    pg_dsn_factory: Callable[[], str], endpoints: Endpoints, registry_client: SchemaRegistryClient,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    target_dsn, target_env, legacy_env = pg_dsn_factory(), f"IT_DBZ_TARGET_{tag.upper()}", f"IT_DBZ_LEGACY_{tag}"
    monkeypatch.setenv(target_env, target_dsn)
    monkeypatch.setenv(legacy_env.upper(), "postgresql://unused@127.0.0.1:1/none")  # the table is never read
    dbz_prefix = f"it-dbz-{tag}"
    raw = {
        "run": {"name": f"itdbz{tag}"}, "kafka": {"topic_prefix": f"it-dbzc-{tag}", "partitions": 1},
        "sources": {"customers": {"kind": "table", "dsn_env": legacy_env.upper(), "table": "legacy.customers",
                                  "entity": "account", "key": "customer_id"}},
        "entities": {"account": {"fields": [
            {"source": "customer_id", "target": "customer_id"},
            {"target": "full_name", "transform": {"join": ["first_name", "last_name"]}},
            {"source": "first_name", "target": "first_name", "transform": "name_case"},
            {"source": "last_name", "target": "last_name", "transform": "name_case"},
            {"source": "born", "target": "birth_date", "transform": "parse_date"},
            {"source": "notes", "target": "region", "transform": {"split": {"index": 0}}},
        ]}},
        "debezium": {"topic_prefix": dbz_prefix, "format": "json", "tables": ["legacy.customers"]},
        "target": {"dsn_env": target_env, "deletes": "hard", "flush_interval_s": 0.2},
    }  # fmt: skip
    config = tmp_path / "crmflow.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(config)
    prepare(cfg, endpoints, registry_client, target_dsn)
    topic = f"{dbz_prefix}.legacy.customers"
    ensure_topics(endpoints.kafka.for_stage("ops"), [topic], 1, 1)
    producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers})
    for i, (op, row) in enumerate([
        ("r", _row("C1", "anne")), ("c", _row("C2", "bob")), ("c", _row("C3", "carla")),
        ("u", _row("C1", "annie", notes="__debezium_unavailable_value")),  # TOASTed notes unchanged
        ("d", {"customer_id": "C3", "first_name": None, "last_name": None, "born": None, "balance": None,
               "notes": None}),
    ]):  # fmt: skip
        producer.produce(topic, _event(op, row, 1000 + i), orjson.dumps({"customer_id": row["customer_id"]}))
    assert producer.flush(10) == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    services = [Service(name, [name, "-c", str(config), "--metrics-port", "0"], tmp_path / f"{name}.log", env)
                for name in ("process", "sink")]  # fmt: skip

    def accounts() -> dict[str, tuple[Any, ...]]:
        with psycopg.connect(target_dsn) as conn:
            rows = conn.execute("select external_id, first_name, birth_date::text, region, source_lsn "
                                "from crm.accounts").fetchall()  # fmt: skip
        return {r[0]: tuple(r[1:]) for r in rows}

    try:
        want = {"C1": ("Annie", "1980-01-01", "R1", 1003), "C2": ("Bob", "1980-01-01", "R1", 1001)}
        wait_until(lambda: accounts() == want, 120, what="the Debezium changes in the target")
    finally:
        for s in services:
            s.stop(15)
    with psycopg.connect(target_dsn) as conn:
        assert conn.execute("select source_lsn from crm.deletions where external_id = 'C3'").fetchone() == (1004,)
