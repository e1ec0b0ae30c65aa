"""AvroCodec framing, round trips, schema resolution and error cases, on confluent's in-memory registry."""

from __future__ import annotations

import json
import struct
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from crmflow.exceptions import TerminalError, TransientError
from crmflow.registry import (
    SCHEMAS_DIR_ENV,
    RegistryRefusedError,
    SchemaFileError,
    clear_schema_cache,
    registry_failure,
)
from crmflow.serialization import (
    AvroCodec,
    AvroDecoder,
    BadMagicByteError,
    ParsedSchema,
    RecordEncodeError,
    SchemaMismatchError,
    SerializationError,
    TruncatedMessageError,
    UnknownSchemaIdError,
    load_schema,
    record_subject,
    split_header,
    topic_subject,
)

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 17, 12, 30, 45, 123000, tzinfo=UTC)
SECRET_EMAIL = "anne.secret@example.com"


def account(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "customer_id": "C0000001",
        "source_lsn": None, "deleted": False, "unchanged_fields": [],  # the change fields (defaults)
        "full_name": "Anne O'Brien",
        "first_name": "Anne",
        "last_name": "O'Brien",
        "email": SECRET_EMAIL,
        "phone": "+14155550123",
        "street": None,
        "city": "Springfield",
        "postal_code": "12345",
        "country": "US",
        "region": "NA",
        "birth_date": date(1980, 1, 2),
        "customer_since": None,
        "national_id": None,
        "tax_id": None,
        "legacy_account_number": None,
        "company_registration_number": None,
        "run_id": "run-1",
        "source": "legacy_files",
        "source_position": "customers.csv:2",
        "quality_flags": [],
        "mapped_at": NOW,
        "golden_id": None,
        "merged_golden_ids": [],
        "match_evidence": None,
    }
    record.update(overrides)
    return record


def sale() -> dict[str, Any]:
    return {
        "sale_id": "S0000001",
        "source_lsn": None, "deleted": False, "unchanged_fields": [],  # the change fields (defaults)
        "customer_id": "C0000001",
        "total_sales": Decimal("1333.26"),
        "currency": "USD",
        "original_amount": Decimal("1234.50"),
        "original_currency": "EUR",
        "sale_date": date(2024, 1, 31),
        "product": "Widget",
        "run_id": "run-1",
        "source": "legacy_files",
        "source_position": "sales.csv:2",
        "quality_flags": [],
        "mapped_at": NOW,
        "golden_id": None,
    }


@pytest.fixture
def client() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://unit"})


@pytest.fixture
def codec(client: SchemaRegistryClient) -> AvroCodec:
    return AvroCodec(client, "crm.accounts-value", load_schema("target/account"))


def without_field(schema: ParsedSchema, field: str) -> ParsedSchema:
    """An older version of ``schema`` that did not have ``field`` yet."""
    raw = json.loads(schema.schema_str)
    raw["fields"] = [f for f in raw["fields"] if f["name"] != field]
    return ParsedSchema.from_str(json.dumps(raw))


# ---------------------------------------------------------------------------------------- schema loading


def test_load_schema_by_name_or_path_is_parsed_once() -> None:
    by_name = load_schema("target/account")
    assert by_name is load_schema("target/account.avsc")
    assert by_name is load_schema(by_name.path)  # type: ignore[arg-type]
    assert by_name.full_name == "io.crmflow.target.Account"
    assert json.loads(by_name.schema_str)["name"] == "Account"
    assert " " not in by_name.schema_str.split('"doc"')[0]  # compact JSON


def test_unknown_schema_name_lists_the_known_ones() -> None:
    with pytest.raises(SchemaFileError, match="target/account") as err:
        load_schema("target/acount")
    assert isinstance(err.value, TerminalError)


def test_schemas_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "thing.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Thing",
                "namespace": "io.crmflow.x",
                "doc": "d",
                "fields": [{"name": "a", "type": "string", "doc": "d"}],
            }
        )
    )
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path))
    clear_schema_cache()
    assert load_schema("x/thing").full_name == "io.crmflow.x.Thing"
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(SchemaFileError, match=SCHEMAS_DIR_ENV):
        load_schema("x/thing")


def test_invalid_schema_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avsc"
    bad.write_text(json.dumps({"type": "record", "name": "Bad", "fields": [{"name": "a", "type": "nope"}]}))
    with pytest.raises(SchemaFileError, match=r"bad\.avsc"):
        load_schema(bad)


def test_subject_naming_functions() -> None:
    assert topic_subject("crm.accounts") == "crm.accounts-value"
    assert topic_subject("crm.accounts", MessageField.KEY) == "crm.accounts-key"
    assert record_subject(load_schema("dlq/dead_letter")) == "io.crmflow.dlq.DeadLetter"


# --------------------------------------------------------------------------------------------- framing


def test_header_is_magic_byte_and_big_endian_id(codec: AvroCodec) -> None:
    data = codec.encode(account())
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == codec.schema_id
    assert data[:5] == codec.header
    assert split_header(data) == codec.schema_id


def test_round_trip_keeps_every_value(codec: AvroCodec) -> None:
    assert codec.decode(codec.encode(account())) == account()


def test_decimals_and_dates_round_trip(client: SchemaRegistryClient) -> None:
    sales = AvroCodec(client, "crm.sales-value", "target/sale")
    back = sales.decode(sales.encode(sale()))
    assert back == sale()
    assert back["total_sales"] == Decimal("1333.26") and isinstance(back["sale_date"], date)


def test_encode_many_matches_encode(codec: AvroCodec) -> None:
    records = [account(customer_id=f"C{i:07d}", quality_flags=["x"] * (i % 3)) for i in range(50)]
    assert codec.encode_many(records) == [codec.encode(r) for r in records]
    assert codec.encode_many([]) == []


def test_registering_again_returns_the_same_id(client: SchemaRegistryClient, codec: AvroCodec) -> None:
    again = AvroCodec(client, codec.subject, codec.schema)
    looked_up = AvroCodec(client, codec.subject, codec.schema, auto_register=False)
    assert again.schema_id == looked_up.schema_id == codec.schema_id


def test_lookup_only_fails_when_not_registered(client: SchemaRegistryClient) -> None:
    with pytest.raises(RegistryRefusedError, match="crmflow schemas register"):
        AvroCodec(client, "never-registered-value", "target/case", auto_register=False)


def test_for_topic_uses_the_subject_function(client: SchemaRegistryClient) -> None:
    schema = load_schema("target/contact")
    assert AvroCodec.for_topic(client, "crm.contacts", schema).subject == "crm.contacts-value"
    by_record = AvroCodec.for_topic(client, "crm.contacts", schema, subject_name=lambda t, f: f"{t}.{f}")
    assert by_record.subject == "crm.contacts.value"


# --------------------------------------------------------------------------------- schema resolution


def test_decode_resolves_an_older_writer_schema_to_the_reader(client: SchemaRegistryClient) -> None:
    current = load_schema("target/account")
    old = AvroCodec(client, "crm.accounts-value", without_field(current, "golden_id"))
    new = AvroCodec(client, "crm.accounts-value", current)
    assert old.schema_id != new.schema_id
    record = account()
    del record["golden_id"]
    assert new.decode(old.encode(record)) == {**record, "golden_id": None}


def test_decoder_without_reader_returns_the_writer_shape(client: SchemaRegistryClient) -> None:
    old = AvroCodec(client, "crm.accounts-value", without_field(load_schema("target/account"), "golden_id"))
    record = account()
    del record["golden_id"]
    assert AvroDecoder(client).decode(old.encode(record)) == record


def test_unresolvable_writer_schema_is_a_mismatch(client: SchemaRegistryClient) -> None:
    sales = AvroCodec(client, "crm.sales-value", "target/sale")
    accounts_reader = AvroDecoder(client, load_schema("target/account"))
    with pytest.raises(SchemaMismatchError):
        accounts_reader.decode(sales.encode(sale()))


# ----------------------------------------------------------------------------------------- error cases


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x01"])
def test_short_header_is_truncated(codec: AvroCodec, data: bytes) -> None:
    with pytest.raises(TruncatedMessageError, match="offset 0"):
        codec.decode(data, origin="crm.accounts[0]@7")


def test_bad_magic_byte(codec: AvroCodec) -> None:
    data = b"{" + codec.encode(account())[1:]
    with pytest.raises(BadMagicByteError, match=r"crm.accounts\[0\]@7: byte at offset 0 is 0x7b"):
        codec.decode(data, origin="crm.accounts[0]@7")


def test_unknown_schema_id(codec: AvroCodec) -> None:
    data = struct.pack(">bI", 0, 424242) + codec.encode(account())[5:]
    with pytest.raises(UnknownSchemaIdError, match="424242") as err:
        codec.decode(data)
    assert err.value.schema_id == 424242


def test_truncated_body(codec: AvroCodec) -> None:
    data = codec.encode(account())
    with pytest.raises(TruncatedMessageError, match="Avro body ends early") as err:
        codec.decode(data[:-20])  # inside the source_position string
    assert SECRET_EMAIL not in str(err.value)


def test_trailing_bytes_are_a_mismatch(codec: AvroCodec) -> None:
    with pytest.raises(SchemaMismatchError, match="2 bytes left"):
        codec.decode(codec.encode(account()) + b"\x00\x00")


def test_garbage_body_never_echoes_payload_bytes(codec: AvroCodec) -> None:
    data = codec.header + b"\x02\xff\xfe" + SECRET_EMAIL.encode()
    with pytest.raises(SerializationError) as err:
        codec.decode(data)
    assert SECRET_EMAIL not in str(err.value) and err.value.__cause__ is None


def test_encode_error_names_fields_never_values(codec: AvroCodec) -> None:
    with pytest.raises(RecordEncodeError) as err:
        codec.encode(account(email=12345, phone=SECRET_EMAIL.encode()))
    assert err.value.fields == ["email", "phone"]
    assert "12345" not in str(err.value) and SECRET_EMAIL not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_encode_error_names_missing_required_field(codec: AvroCodec) -> None:
    record = account()
    del record["full_name"]
    with pytest.raises(RecordEncodeError, match="full_name"):
        codec.encode(record)


def test_encode_many_says_which_record_failed(codec: AvroCodec) -> None:
    records = [account(), account(), account(birth_date=3.5), account()]
    with pytest.raises(RecordEncodeError, match="record 2 of the batch") as err:
        codec.encode_many(records)
    assert err.value.fields == ["birth_date"]


def test_errors_are_typed_for_retry_decisions() -> None:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    assert isinstance(registry_failure(ConnectionRefusedError(), "x"), TransientError)
    assert isinstance(registry_failure(SchemaRegistryError(503, 50301, "busy"), "x"), TransientError)
    assert isinstance(registry_failure(SchemaRegistryError(422, 42201, "bad"), "x"), TerminalError)
    assert issubclass(SerializationError, TerminalError)


# ---------------------------------------------------------------------------- confluent-shaped callables


def test_serialize_and_deserialize_have_confluents_shape(client: SchemaRegistryClient, codec: AvroCodec) -> None:
    ctx = SerializationContext("crm.accounts", MessageField.VALUE)
    data = codec.serialize(account(), ctx)
    assert data is not None
    assert codec.deserialize(data, ctx) == account()
    assert codec.serialize(None, ctx) is None
    assert codec.deserialize(None, ctx) is None
    decoder = AvroDecoder(client, codec.schema)
    assert decoder(data, ctx) == account()
    with pytest.raises(BadMagicByteError, match=r"crm\.accounts value"):
        codec.deserialize(b"\x01" + data[1:], ctx)


def test_interoperates_with_confluents_avro_serde(client: SchemaRegistryClient) -> None:
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

    schema = load_schema("target/sale")
    ours = AvroCodec.for_topic(client, "crm.sales", schema)
    ctx = SerializationContext("crm.sales", MessageField.VALUE)
    theirs_out = AvroSerializer(client, schema.schema_str)(sale(), ctx)
    assert theirs_out is not None
    assert ours.decode(theirs_out) == sale()
    assert AvroDeserializer(client)(ours.encode(sale()), ctx) == sale()
    assert client.get_schema(ours.schema_id) == Schema(schema.schema_str, "AVRO")
