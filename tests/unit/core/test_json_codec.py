"""The JSON codec of crmflow's internal topics: what it refuses, and how it names it (offsets and fields,
never values); Avro values of an earlier crmflow still decode."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from typing import Any

import pytest
from fastavro import schemaless_writer

from crmflow.serialization import (
    AvroDecoder,
    BadMagicByteError,
    JsonCodec,
    ParsedSchema,
    RecordEncodeError,
    SchemaMismatchError,
    TruncatedMessageError,
)

pytestmark = pytest.mark.unit

SCHEMA = ParsedSchema.from_str("""{"type": "record", "name": "Person", "namespace": "t", "fields": [
  {"name": "id", "type": "string"},
  {"name": "born", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
  {"name": "seen", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "flags", "type": {"type": "array", "items": "string"}, "default": []}
]}""")
SECRET = "Anne Obrien"


def _person(**extra: Any) -> dict[str, Any]:
    return {"id": "P1", "born": date(1980, 3, 4), "seen": datetime(2026, 12, 5, 5, 1, 2, 345_678, tzinfo=UTC),
            "flags": ["email_invalid"], **extra}


def test_a_record_comes_back_typed_projected_and_cut_to_the_millisecond() -> None:
    codec = JsonCodec(SCHEMA)
    [data] = codec.encode_many([_person(note=SECRET)])
    assert data.startswith(b"{") and SECRET.encode() not in data, "only the schema's fields are written"
    assert codec.decode(data) == {"id": "P1", "born": date(1980, 3, 4),
                                  "seen": datetime(2026, 12, 5, 5, 1, 2, 345_000, tzinfo=UTC),
                                  "flags": ["email_invalid"]}


def test_defaults_fill_missing_fields_with_fresh_lists_and_ints_are_days_and_milliseconds() -> None:
    codec = JsonCodec(SCHEMA)
    first = codec.decode(b'{"id": "P2", "seen": 1000}')
    assert first == {"id": "P2", "born": None, "seen": datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), "flags": []}
    first["flags"].append("x")
    assert codec.decode(b'{"id": "P2", "seen": 0}')["flags"] == [], "the schema's default list is never shared"
    assert codec.decode(b'{"id": "P3", "born": 1, "seen": 0, "flags": []}')["born"] == date(1970, 1, 2)
    naive = codec.decode(b'{"id": "P4", "seen": "2026-12-05T05:00:00", "flags": [], "born": null}')
    assert naive["seen"] == datetime(2026, 12, 5, 5, tzinfo=UTC), "a naive instant is UTC, as Avro takes it"


@pytest.mark.parametrize(("data", "error", "says"), [
    (b"", TruncatedMessageError, "empty message"),
    (b"Anne Obrien", BadMagicByteError, "offset 0 is 0x41"),
    (b'{"id": "Anne Obrien", "seen": ', SchemaMismatchError, "not JSON at offset"),
    (b'{"id": "P1"}', SchemaMismatchError, "fields seen missing"),
    (b'{"id": "P1", "seen": "Anne Obrien"}', SchemaMismatchError, "field seen is not a t.Person instant"),
    (b'{"id": "P1", "seen": 0, "born": "Anne Obrien"}', SchemaMismatchError, "field born is not a t.Person date"),
])
def test_bad_values_are_named_by_offset_and_field_never_by_value(data: bytes, error: type, says: str) -> None:
    with pytest.raises(error) as caught:
        JsonCodec(SCHEMA).decode(data, origin="t[0]@7")
    assert says in str(caught.value) and "t[0]@7" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_record_that_does_not_fit_is_refused_by_field_name() -> None:
    codec = JsonCodec(SCHEMA)
    with pytest.raises(RecordEncodeError) as missing:
        codec.encode_many([_person(), {"id": SECRET}])
    assert missing.value.fields == ["seen"] and "record 1 of the batch" in str(missing.value)
    with pytest.raises(RecordEncodeError) as odd:
        codec.encode_many([_person(id=object())])
    assert odd.value.fields == ["id"] and SECRET not in str(odd.value)


def test_avro_values_of_an_earlier_crmflow_still_decode() -> None:
    avro = AvroDecoder(None, SCHEMA)  # type: ignore[arg-type]  # no registry: the writer schema is known
    avro.know(42, SCHEMA)
    framed = b"\x00\x00\x00\x00\x2a" + _avro_body(_person())
    assert JsonCodec(SCHEMA, avro=avro).decode(framed) == JsonCodec(SCHEMA).decode(
        JsonCodec(SCHEMA).encode_many([_person()])[0])
    with pytest.raises(BadMagicByteError):
        JsonCodec(SCHEMA).decode(framed)


def test_logical_types_below_the_top_level_are_refused_at_construction() -> None:
    nested = ParsedSchema.from_str("""{"type": "record", "name": "N", "fields": [{"name": "days",
        "type": {"type": "array", "items": {"type": "int", "logicalType": "date"}}}]}""")
    with pytest.raises(ValueError, match="top-level date and timestamp-millis fields only"):
        JsonCodec(nested)


def _avro_body(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, SCHEMA.parsed, record)
    return buf.getvalue()

