"""Debezium's PostgreSQL connector messages (JsonConverter with and without schemas, default converters) decoded
into the envelope processors.cdc maps, and through envelope_to_legacy into the LegacyRecord a snapshot row gives."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from crmflow.serialization import SerializationError
from processors.cdc import envelope_to_legacy
from processors.debezium import UNAVAILABLE, DebeziumJsonDecoder, convert_value

pytestmark = pytest.mark.unit


def _unscaled(value: int) -> str:
    return base64.b64encode(value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)).decode()


ROW_SCHEMA = {"type": "struct", "optional": True, "name": "legacy.legacy.customers.Value", "fields": [
    {"type": "string", "optional": False, "field": "customer_id"},
    {"type": "string", "optional": True, "field": "notes"},
    {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1, "field": "born"},
    {"type": "bytes", "optional": True, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
     "parameters": {"scale": "2", "connect.decimal.precision": "12"}, "field": "balance"},
    {"type": "string", "optional": True, "name": "io.debezium.time.ZonedTimestamp", "version": 1, "field": "seen"},
    {"type": "int64", "optional": True, "name": "io.debezium.time.MicroTimestamp", "version": 1, "field": "local"},
    {"type": "boolean", "optional": True, "field": "active"},
    {"type": "int32", "optional": True, "field": "score"},
]}  # fmt: skip
SCHEMA = {"type": "struct", "name": "legacy.legacy.customers.Envelope", "fields": [
    {**ROW_SCHEMA, "field": "before"}, {**ROW_SCHEMA, "field": "after"},
    {"type": "struct", "field": "source", "fields": []}, {"type": "string", "field": "op"},
    {"type": "int64", "optional": True, "field": "ts_ms"},
]}  # fmt: skip


def _row(**over: Any) -> dict[str, Any]:
    row = {"customer_id": "C1", "notes": "vip", "born": 19723, "balance": _unscaled(-123456),
           "seen": "2024-01-02T03:04:05.120000Z", "local": 1704164645000001, "active": True, "score": 7}
    return {**row, **over}  # fmt: skip


def _event(op: str, before: Any, after: Any, *, schemas: bool = True) -> bytes:
    payload = {"before": before, "after": after, "op": op, "ts_ms": 1704164646000,
               "source": {"version": "2.7.0.Final", "connector": "postgresql", "name": "legacy", "ts_ms": 1704164645500,
                          "snapshot": "false", "db": "crm_legacy", "schema": "legacy", "table": "customers",
                          "txId": 771, "lsn": 24023128, "xmin": None}}  # fmt: skip
    return orjson.dumps({"schema": SCHEMA, "payload": payload} if schemas else payload)


def test_an_insert_with_schemas_becomes_the_snapshot_rows_text_form() -> None:
    env = DebeziumJsonDecoder().decode(_event("c", None, _row()), origin="t[0]@5")
    assert env["after"]["born"] == date(2024, 1, 1) and env["after"]["balance"] == Decimal("-1234.56")
    assert env["after"]["seen"] == datetime(2024, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)
    change = envelope_to_legacy(env, source="customers", entity="account", key="customer_id", run_id="r")
    rec = change.record
    assert rec["fields"] == {"customer_id": "C1", "notes": "vip", "born": "2024-01-01", "balance": "-1234.56",
                             "seen": "2024-01-02 03:04:05.12+00", "local": "2024-01-02 03:04:05.000001",
                             "active": "true", "score": "7"}  # fmt: skip
    assert rec["op"] == "INSERT" and rec["position"] == "legacy.customers@0/16E9058" and change.lsn == 24023128
    assert rec["captured_at"] == datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)  # the commit: source.ts_ms


def test_an_unchanged_toasted_column_is_the_unchanged_marker_never_a_value() -> None:
    env = DebeziumJsonDecoder().decode(_event("u", None, _row(notes=UNAVAILABLE)))
    change = envelope_to_legacy(env, source="customers", entity="account", key="customer_id", run_id="r")
    assert "notes" not in change.record["fields"] and change.unchanged == frozenset({"notes"})
    assert change.record["op"] == "UPDATE"


def test_a_delete_reads_its_before_row_and_snapshot_reads_are_snapshots() -> None:
    dec = DebeziumJsonDecoder()
    gone = envelope_to_legacy(dec.decode(_event("d", _row(), None)), source="customers", entity="account",
                              key="customer_id", run_id="r")  # fmt: skip
    assert gone.deleted and gone.record["source_key"] == "C1"
    read = envelope_to_legacy(dec.decode(_event("r", None, _row())), source="customers", entity="account",
                              key="customer_id", run_id="r")  # fmt: skip
    assert read.record["op"] == "SNAPSHOT"


def test_without_schemas_values_are_taken_as_they_come() -> None:
    env = DebeziumJsonDecoder().decode(_event("c", None, _row(balance="1234.56", born=None), schemas=False))
    assert env["after"]["balance"] == "1234.56" and env["after"]["score"] == 7 and env["after"]["born"] is None


@pytest.mark.parametrize(
    ("op", "message"), [("t", r"TRUNCATE \(op t\) of legacy\.customers"), ("m", "not a row change")]
)
def test_truncates_and_messages_are_refused_with_their_reason(op: str, message: str) -> None:
    with pytest.raises(SerializationError, match=message) as info:
        DebeziumJsonDecoder().decode(_event(op, None, None), origin="legacy.legacy.customers[0]@9")
    assert str(info.value).startswith("legacy.legacy.customers[0]@9: ")


def test_garbage_is_a_serialization_error_naming_the_message() -> None:
    with pytest.raises(SerializationError, match=r"^t\[1\]@3: not JSON"):
        DebeziumJsonDecoder().decode(b"\x00\x01", origin="t[1]@3")


def test_value_conversions_of_the_default_converters() -> None:
    assert convert_value({"scale": 3, "value": _unscaled(12345)}, "io.debezium.data.VariableScaleDecimal") == (
        Decimal("12.345"))
    assert convert_value(3_723_000_000, "io.debezium.time.MicroTime") == "01:02:03"
    assert convert_value(3_723_500, "io.debezium.time.Time") == "01:02:03.5"
    assert convert_value(1704164645123, "io.debezium.time.Timestamp") == "2024-01-02 03:04:05.123"
    assert convert_value(b"\x01\xff", None) == "\\x01ff"
    assert convert_value(UNAVAILABLE.encode(), None) == {}
    assert convert_value(Decimal("1.50"), "org.apache.kafka.connect.data.Decimal") == Decimal("1.50")


def test_avro_in_the_confluent_wire_format_by_connect_names() -> None:
    """The AvroConverter's shape: connect.name on each semantic type, the writer schema from the registry by id."""
    import io
    import json
    from types import SimpleNamespace

    from fastavro import parse_schema, schemaless_writer

    from processors.debezium import DebeziumAvroDecoder

    value = {"type": "record", "name": "Value", "namespace": "legacy.legacy.customers", "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "born", "type": ["null", {"type": "int", "connect.version": 1,
                                          "connect.name": "io.debezium.time.Date"}], "default": None},
        {"name": "balance", "type": ["null", {"type": "bytes", "scale": 2, "precision": 12, "connect.version": 1,
                                             "connect.parameters": {"scale": "2"},
                                             "connect.name": "org.apache.kafka.connect.data.Decimal",
                                             "logicalType": "decimal"}], "default": None},
        {"name": "notes", "type": ["null", "string"], "default": None}]}  # fmt: skip
    source = {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql", "fields": [
        {"name": "schema", "type": "string"}, {"name": "table", "type": "string"},
        {"name": "lsn", "type": ["null", "long"]}, {"name": "ts_ms", "type": "long"}]}  # fmt: skip
    envelope = {"type": "record", "name": "Envelope", "namespace": "legacy.legacy.customers", "fields": [
        {"name": "before", "type": ["null", value], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {"name": "source", "type": source}, {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None}]}  # fmt: skip
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(envelope), {
        "before": None, "after": {"customer_id": "C9", "born": 1, "balance": Decimal("-7.25"),
                                  "notes": UNAVAILABLE},
        "source": {"schema": "legacy", "table": "customers", "lsn": 77, "ts_ms": 1000}, "op": "u", "ts_ms": 1001})
    registry = SimpleNamespace(get_schema=lambda sid: SimpleNamespace(schema_str=json.dumps(envelope)))
    env = DebeziumAvroDecoder(registry).decode(b"\x00" + (42).to_bytes(4, "big") + buf.getvalue())
    change = envelope_to_legacy(env, source="customers", entity="account", key="customer_id", run_id="r")
    assert change.record["fields"] == {"customer_id": "C9", "born": "1970-01-02", "balance": "-7.25"}
    assert change.unchanged == frozenset({"notes"}) and change.lsn == 77
    with pytest.raises(SerializationError, match="Confluent wire format"):
        DebeziumAvroDecoder(registry).decode(b"{}")


def test_avro_semantic_types_behind_a_named_type_reference() -> None:
    """The converter spells a named type out once and then names it: a second variable-scale numeric column's type
    is just ``io.debezium.data.VariableScaleDecimal``, and it still converts (it used to pass through as a dict)."""
    from processors.debezium import _avro_types

    vsd = {"type": "record", "name": "VariableScaleDecimal", "namespace": "io.debezium.data",
           "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
           "connect.name": "io.debezium.data.VariableScaleDecimal"}  # fmt: skip
    value = {"type": "record", "name": "Value", "fields": [
        {"name": "a", "type": ["null", vsd], "default": None},
        {"name": "b", "type": ["null", "io.debezium.data.VariableScaleDecimal"], "default": None}]}  # fmt: skip
    only_after = {"type": "record", "name": "Envelope", "namespace": "s.legacy.t", "fields": [
        {"name": "before", "type": ["null", "Value"], "default": None},  # a reference before its definition's use
        {"name": "after", "type": ["null", value], "default": None}]}  # fmt: skip
    types = _avro_types(only_after)
    assert types["a"][0] == types["b"][0] == "io.debezium.data.VariableScaleDecimal"
    assert convert_value({"scale": 1, "value": b"\x05"}, *types["b"]) == Decimal("0.5")
