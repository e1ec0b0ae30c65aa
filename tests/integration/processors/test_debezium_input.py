"""Debezium's own topics as input (the ``debezium`` config section): messages shaped as a Debezium PostgreSQL
connector writes them, with the JsonConverter (schemas on) or the AvroConverter (Confluent wire format, schemas in
the real registry), in a real topic, read by ``crmflow process`` and applied by ``crmflow sink`` to a real target:
inserts, an update leaving a TOASTed column unchanged, a delete (and, in Avro, its tombstone)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

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


class Pipeline:
    """A target database, a config whose ``debezium`` section reads ``<prefix>.legacy.customers`` in ``fmt``, its
    topics and schema prepared; :meth:`run` runs ``crmflow process`` and ``crmflow sink`` until ``done()``."""

    def __init__(self, pg_dsn_factory: Callable[[], str], endpoints: Endpoints, registry_client: SchemaRegistryClient,
                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str,
                 fields: list[dict[str, Any]]) -> None:  # fmt: skip
        tag = uuid.uuid4().hex[:8]
        self.target_dsn = pg_dsn_factory()
        target_env, legacy_env = f"IT_DBZ_TARGET_{tag.upper()}", f"IT_DBZ_LEGACY_{tag}"
        monkeypatch.setenv(target_env, self.target_dsn)
        monkeypatch.setenv(legacy_env.upper(), "postgresql://unused@127.0.0.1:1/none")  # the table is never read
        self.prefix = f"it-dbz-{tag}"
        raw = {
            "run": {"name": f"itdbz{tag}"}, "kafka": {"topic_prefix": f"it-dbzc-{tag}", "partitions": 1},
            "sources": {"customers": {"kind": "table", "dsn_env": legacy_env.upper(), "table": "legacy.customers",
                                      "entity": "account", "key": "customer_id"}},
            "entities": {"account": {"fields": fields}},
            "debezium": {"topic_prefix": self.prefix, "format": fmt, "tables": ["legacy.customers"]},
            "target": {"dsn_env": target_env, "deletes": "hard", "flush_interval_s": 0.2},
        }  # fmt: skip
        self.config = tmp_path / "crmflow.yaml"
        self.config.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.tmp_path = tmp_path
        prepare(load_config(self.config), endpoints, registry_client, self.target_dsn)
        self.topic = f"{self.prefix}.legacy.customers"
        ensure_topics(endpoints.kafka.for_stage("ops"), [self.topic], 1, 1)

    def rows(self, columns: str) -> dict[str, tuple[Any, ...]]:
        with psycopg.connect(self.target_dsn) as conn:
            rows = conn.execute(f"select external_id, {columns} from crm.accounts").fetchall()
        return {r[0]: tuple(r[1:]) for r in rows}

    def run(self, done: Callable[[], bool]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        services = [Service(name, [name, "-c", str(self.config), "--metrics-port", "0"],
                            self.tmp_path / f"{name}.log", env) for name in ("process", "sink")]  # fmt: skip
        try:
            wait_until(done, 120, what="the Debezium changes in the target")
        finally:
            for s in services:
                s.stop(15)


JSON_FIELDS = [
    {"source": "customer_id", "target": "customer_id"},
    {"target": "full_name", "transform": {"join": ["first_name", "last_name"]}},
    {"source": "first_name", "target": "first_name", "transform": "name_case"},
    {"source": "last_name", "target": "last_name", "transform": "name_case"},
    {"source": "born", "target": "birth_date", "transform": "parse_date"},
    {"source": "notes", "target": "region", "transform": {"split": {"index": 0}}},
]


def test_debezium_json_messages_reach_the_target(
    pg_dsn_factory: Callable[[], str], endpoints: Endpoints, registry_client: SchemaRegistryClient,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    pipe = Pipeline(pg_dsn_factory, endpoints, registry_client, tmp_path, monkeypatch, "json", JSON_FIELDS)
    producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers})
    for i, (op, row) in enumerate([
        ("r", _row("C1", "anne")), ("c", _row("C2", "bob")), ("c", _row("C3", "carla")),
        ("u", _row("C1", "annie", notes="__debezium_unavailable_value")),  # TOASTed notes unchanged
        ("d", {"customer_id": "C3", "first_name": None, "last_name": None, "born": None, "balance": None,
               "notes": None}),
    ]):  # fmt: skip
        producer.produce(pipe.topic, _event(op, row, 1000 + i), orjson.dumps({"customer_id": row["customer_id"]}))
    assert producer.flush(10) == 0
    want = {"C1": ("Annie", "1980-01-01", "R1", 1003), "C2": ("Bob", "1980-01-01", "R1", 1001)}
    pipe.run(lambda: pipe.rows("first_name, birth_date::text, region, source_lsn") == want)
    with psycopg.connect(pipe.target_dsn) as conn:
        assert conn.execute("select source_lsn from crm.deletions where external_id = 'C3'").fetchone() == (1004,)


# ------------------------------------------------------------------------------------------------ Avro
# The schemas Confluent's AvroConverter derives from the Kafka Connect schemas of Debezium's PostgreSQL connector
# (Debezium 2.x, decimal.handling.mode=precise, time.precision.mode=adaptive, topic.prefix "legacy"): records named
# <prefix>.<schema>.<table>.Envelope / .Value / .Key, an optional column as a union with null first, a semantic type
# as "connect.name" (and "connect.parameters") on the Avro type, a named type (Value, VariableScaleDecimal) spelled
# out once and then referenced by its name, the source block io.debezium.connector.postgresql.Source.

NS = "legacy.legacy.customers"
VSD = {"type": "record", "name": "VariableScaleDecimal", "namespace": "io.debezium.data",
       "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
       "connect.doc": "Variable scaled decimal", "connect.version": 1,
       "connect.name": "io.debezium.data.VariableScaleDecimal"}  # fmt: skip


def _optional(avro_type: Any) -> list[Any]:
    return ["null", avro_type]


VALUE = {"type": "record", "name": "Value", "fields": [
    {"name": "customer_id", "type": "string"},
    {"name": "first_name", "type": _optional("string"), "default": None},
    {"name": "last_name", "type": _optional("string"), "default": None},
    {"name": "born", "type": _optional({"type": "int", "connect.version": 1, "connect.name": "io.debezium.time.Date"}),
     "default": None},
    {"name": "balance", "type": _optional({
        "type": "bytes", "scale": 2, "precision": 12, "connect.version": 1,
        "connect.parameters": {"scale": "2", "connect.decimal.precision": "12"},
        "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal"}), "default": None},
    {"name": "score", "type": _optional(VSD), "default": None},  # numeric without precision: variable scale
    {"name": "rating", "type": _optional("io.debezium.data.VariableScaleDecimal"), "default": None},  # by name
    {"name": "seen", "type": _optional({"type": "long", "connect.version": 1,
                                        "connect.name": "io.debezium.time.MicroTimestamp"}), "default": None},
    {"name": "notes", "type": _optional("string"), "default": None},
], "connect.name": f"{NS}.Value"}  # fmt: skip
SOURCE = {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql", "fields": [
    {"name": "version", "type": "string"}, {"name": "connector", "type": "string"}, {"name": "name", "type": "string"},
    {"name": "ts_ms", "type": "long"},
    {"name": "snapshot", "type": [{"type": "string", "connect.version": 1,
                                   "connect.parameters": {"allowed": "true,last,false,incremental"},
                                   "connect.default": "false", "connect.name": "io.debezium.data.Enum"}, "null"],
     "default": "false"},
    {"name": "db", "type": "string"}, {"name": "sequence", "type": _optional("string"), "default": None},
    {"name": "ts_us", "type": _optional("long"), "default": None},
    {"name": "ts_ns", "type": _optional("long"), "default": None},
    {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
    {"name": "txId", "type": _optional("long"), "default": None},
    {"name": "lsn", "type": _optional("long"), "default": None},
    {"name": "xmin", "type": _optional("long"), "default": None},
], "connect.name": "io.debezium.connector.postgresql.Source"}  # fmt: skip
ENVELOPE = {"type": "record", "name": "Envelope", "namespace": NS, "fields": [
    {"name": "before", "type": _optional(VALUE), "default": None},
    {"name": "after", "type": _optional("Value"), "default": None},
    {"name": "source", "type": SOURCE},
    {"name": "transaction", "type": _optional({
        "type": "record", "name": "block", "namespace": "event", "fields": [
            {"name": "id", "type": "string"}, {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"}],
        "connect.version": 1, "connect.name": "event.block"}), "default": None},
    {"name": "op", "type": "string"},
    {"name": "ts_ms", "type": _optional("long"), "default": None},
    {"name": "ts_us", "type": _optional("long"), "default": None},
    {"name": "ts_ns", "type": _optional("long"), "default": None},
], "connect.version": 2, "connect.name": f"{NS}.Envelope"}  # fmt: skip
KEY = {"type": "record", "name": "Key", "namespace": NS, "fields": [{"name": "customer_id", "type": "string"}],
       "connect.name": f"{NS}.Key"}  # fmt: skip
SEEN = datetime(2024, 1, 2, 3, 4, 5, 123456)  # a timestamp without time zone: microseconds since the epoch


def _vsd(text: str) -> dict[str, Any]:
    exponent = Decimal(text).as_tuple().exponent
    assert isinstance(exponent, int)
    unscaled = int(Decimal(text).scaleb(-exponent))
    return {"scale": -exponent, "value": unscaled.to_bytes(8, "big", signed=True).lstrip(b"\x00") or b"\x00"}


def _avro_row(cid: str, first: str, notes: str = "R1 long note") -> dict[str, Any]:
    micros = int((SEEN - datetime(1970, 1, 1)).total_seconds()) * 1_000_000 + SEEN.microsecond
    return {"customer_id": cid, "first_name": first, "last_name": "smith", "born": 3652,
            "balance": Decimal("1234.50"), "score": _vsd("12.345"), "rating": _vsd("0.5"), "seen": micros,
            "notes": notes}  # fmt: skip


def _avro_envelope(op: str, row: dict[str, Any], lsn: int) -> dict[str, Any]:
    before, after = (row, None) if op == "d" else (None, row)
    return {"before": before, "after": after, "op": op, "ts_ms": 1704164646000, "ts_us": 1704164646000000,
            "ts_ns": 1704164646000000000, "transaction": None,
            "source": {"version": "2.7.3.Final", "connector": "postgresql", "name": "legacy", "ts_ms": 1704164645000,
                       "snapshot": "true" if op == "r" else "false", "db": "crm_legacy",
                       "sequence": f'["{lsn - 1}","{lsn}"]', "ts_us": 1704164645000000, "ts_ns": 1704164645000000000,
                       "schema": "legacy", "table": "customers", "txId": 700 + lsn % 100, "lsn": lsn, "xmin": None}}


def test_debezium_avro_messages_reach_the_target_and_the_toast_placeholder_never_lands(
    pg_dsn_factory: Callable[[], str], endpoints: Endpoints, registry_client: SchemaRegistryClient,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    fields = [*JSON_FIELDS,
              {"source": "notes", "target": "city"},  # the TOASTed column straight into a column
              {"source": "balance", "target": "legacy_account_number"},
              {"source": "score", "target": "company_registration_number"},
              {"source": "rating", "target": "postal_code"},
              {"source": "seen", "target": "street"}]  # fmt: skip
    pipe = Pipeline(pg_dsn_factory, endpoints, registry_client, tmp_path, monkeypatch, "avro", fields)
    # The registry's subjects <topic>-key and <topic>-value, as the AvroConverter registers them.
    key_ser = AvroSerializer(registry_client, orjson.dumps(KEY).decode())
    value_ser = AvroSerializer(registry_client, orjson.dumps(ENVELOPE).decode())
    key_ctx, value_ctx = SerializationContext(pipe.topic, MessageField.KEY), \
        SerializationContext(pipe.topic, MessageField.VALUE)  # fmt: skip
    producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers})
    deleted = {**_avro_row("C3", "carla"), "first_name": None, "last_name": None, "born": None, "balance": None,
               "score": None, "rating": None, "seen": None, "notes": None}  # only the key: default replica identity
    for i, (op, row) in enumerate([
        ("r", _avro_row("C1", "anne")), ("c", _avro_row("C2", "bob")), ("c", _avro_row("C3", "carla")),
        ("u", _avro_row("C1", "annie", notes="__debezium_unavailable_value")),  # TOASTed notes unchanged
        ("d", deleted),
    ]):  # fmt: skip
        key = key_ser({"customer_id": row["customer_id"]}, key_ctx)
        producer.produce(pipe.topic, value_ser(_avro_envelope(op, row, 2000 + i), value_ctx), key)
        if op == "d":
            producer.produce(pipe.topic, None, key)  # the tombstone (tombstones.on.delete, the default)
    assert producer.flush(10) == 0
    # By name: a shared registry lists at most 1,000 subjects (Apicurio's ccompat /subjects), this one maybe not.
    for subject in (f"{pipe.topic}-key", f"{pipe.topic}-value"):
        assert registry_client.get_latest_version(subject).subject == subject

    columns = ("first_name, birth_date::text, region, city, legacy_account_number, company_registration_number, "
               "postal_code, street, source_lsn")  # fmt: skip
    same = ("1980-01-01", "R1", "R1 long note", "1234.50", "12.345", "0.5", "2024-01-02 03:04:05.123456")
    want = {"C1": ("Annie", *same, 2003), "C2": ("Bob", *same, 2001)}
    pipe.run(lambda: pipe.rows(columns) == want)
    with psycopg.connect(pipe.target_dsn) as conn:
        assert conn.execute("select source_lsn from crm.deletions where external_id = 'C3'").fetchone() == (2004,)
        landed = conn.execute("select count(*) from crm.accounts a where a::text like '%debezium_unavailable%'")
        assert landed.fetchone() == (0,)
