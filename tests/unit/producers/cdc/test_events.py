"""Column types to Avro, pgoutput tuples to rows and envelopes that round-trip through fastavro."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from producers.cdc.events import ColumnInfo, TableEvents, TableInfo, column_type, is_unchanged
from producers.cdc.pgoutput import UNCHANGED

pytestmark = pytest.mark.unit

COLUMNS = (
    ColumnInfo("id", 23, "integer", -1, "b"),
    ColumnInfo("big", 20, "bigint", -1, "b"),
    ColumnInfo("amount", 1700, "numeric(12,2)", ((12 << 16) | 2) + 4, "b"),
    ColumnInfo("loose", 1700, "numeric", -1, "b"),
    ColumnInfo("active", 16, "boolean", -1, "b"),
    ColumnInfo("born", 1082, "date", -1, "b"),
    ColumnInfo("seen", 1184, "timestamp with time zone", -1, "b"),
    ColumnInfo("doc", 3802, "jsonb", -1, "b"),
    ColumnInfo("level", 16388, "tier", -1, "e", ("bronze", "silver", "gold")),
    ColumnInfo("notes", 25, "text", -1, "b"),
)
TABLE = TableInfo("legacy", "customers", COLUMNS, ("id",))


def roundtrip(schema: dict[str, Any], record: dict[str, Any]) -> Any:
    parsed = parse_schema(schema)
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, record)
    buf.seek(0)
    return schemaless_reader(buf, parsed)


def test_type_mapping() -> None:
    assert column_type(COLUMNS[0])[0] == "int" and column_type(COLUMNS[1])[0] == "long"
    assert column_type(COLUMNS[2])[0] == {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}
    assert column_type(COLUMNS[3])[0] == "string"  # unconstrained numeric keeps its text
    assert column_type(COLUMNS[6])[0] == {"type": "long", "logicalType": "timestamp-micros"}
    assert column_type(COLUMNS[8])[0] == "string"


def test_row_and_envelope_round_trip_with_nulls_and_the_unchanged_marker() -> None:
    ev = TableEvents(TABLE, database="crm_legacy")
    new = ("7", "9000000000", "1234.50", "3.14159265358979323846", "f", "2020-02-29", "2024-01-02 01:04:05.5+00",
           '{"a": 1}', "gold", UNCHANGED)  # fmt: skip
    row = ev.row(new)
    assert row["notes"] == {} and is_unchanged(row["notes"])
    env = ev.envelope("u", None, row, lsn=99, xid=7, commit_ms=1_700_000_000_000, commit_lsn=120)
    back = roundtrip(ev.value_schema, env)
    after = back["after"]
    assert after["amount"] == Decimal("1234.50") and after["loose"] == "3.14159265358979323846"
    assert after["active"] is False and after["born"] == date(2020, 2, 29)
    assert after["seen"] == datetime(2024, 1, 2, 1, 4, 5, 500000, tzinfo=UTC)
    assert is_unchanged(after["notes"]) and not is_unchanged(after["doc"])
    assert back["source"] == {"connector": "crmflow", "db": "crm_legacy", "schema": "legacy", "table": "customers",
                              "lsn": 99, "txId": 7, "ts_ms": 1_700_000_000_000, "snapshot": False,
                              "commit_lsn": 120}  # fmt: skip
    nulls = roundtrip(ev.value_schema, ev.envelope("d", ev.row(("8", *[None] * 9)), None, lsn=1, xid=None,
                                                   commit_ms=0))  # fmt: skip
    assert nulls["before"]["notes"] is None and not is_unchanged(nulls["before"]["notes"]) and nulls["after"] is None
    assert roundtrip(ev.key_schema, ev.key(new)) == {"id": 7}
    assert "enum labels: bronze, silver, gold" in str(ev.value_schema)


def test_a_tuple_of_the_wrong_width_or_without_its_key_is_refused() -> None:
    ev = TableEvents(TABLE, database="db")
    with pytest.raises(ValueError, match="10"):
        ev.row(("1",))
    with pytest.raises(ValueError, match="key column id"):
        ev.key((None, *[None] * 9))
