"""The Avro contract under schemas/: parses, documented, and shaped as docs/data-contract.md says."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema

from crmflow.registry import load_schema, record_subject, schema_files, schemas_dir
from tests.avro_round_trip import round_trip

pytestmark = pytest.mark.unit

STRING, DATE, TIMESTAMP = "string", "date", "timestamp-millis"
DECIMAL = "decimal(18,2)"

# The contract's target entities: field -> (type, required). Order matters: it is the Avro field order.
TARGET: dict[str, dict[str, tuple[str, bool]]] = {
    "account": {
        "customer_id": (STRING, True),
        "full_name": (STRING, True),
        "first_name": (STRING, False),
        "last_name": (STRING, False),
        "email": (STRING, False),
        "phone": (STRING, False),
        "street": (STRING, False),
        "city": (STRING, False),
        "postal_code": (STRING, False),
        "country": (STRING, False),
        "region": (STRING, False),
        "birth_date": (DATE, False),
        "customer_since": (DATE, False),
        "national_id": (STRING, False),
        "tax_id": (STRING, False),
        "legacy_account_number": (STRING, False),
        "company_registration_number": (STRING, False),
    },
    "contact": {
        "contact_id": (STRING, True),
        "customer_id": (STRING, True),
        "full_name": (STRING, True),
        "first_name": (STRING, False),
        "last_name": (STRING, False),
        "email": (STRING, False),
        "phone": (STRING, False),
        "job_title": (STRING, False),
        "national_id": (STRING, False),
        "tax_id": (STRING, False),
    },
    "sale": {
        "sale_id": (STRING, True),
        "customer_id": (STRING, True),
        "total_sales": (DECIMAL, True),
        "currency": (STRING, False),
        "original_amount": (DECIMAL, False),
        "original_currency": (STRING, False),
        "sale_date": (DATE, False),
        "product": (STRING, False),
    },
    "case": {
        "case_id": (STRING, True),
        "customer_id": (STRING, True),
        "case_creation_date": (DATE, True),
        "subject": (STRING, False),
        "status": (STRING, False),
        "priority": (STRING, False),
    },
}
METADATA = ["run_id", "source", "source_position", "quality_flags", "mapped_at", "golden_id"]
#: Fields the deduplication stage fills, after the metadata (added later, with defaults: BACKWARD-compatible).
DEDUPE = {"account": ["merged_golden_ids", "match_evidence"]}
CHANGE = ["source_lsn", "deleted", "unchanged_fields"]  # crmflow.entities.CHANGE_FIELDS
#: Fields added after the change fields (defaults null: BACKWARD-compatible): contact deduplication's.
LATER = {"contact": ["contact_golden_id", "merged_contact_golden_ids", "match_evidence"]}

EXPECTED_FILES = {
    "legacy/legacy_record.avsc": "io.crmflow.legacy.LegacyRecord",
    "target/account.avsc": "io.crmflow.target.Account",
    "target/contact.avsc": "io.crmflow.target.Contact",
    "target/sale.avsc": "io.crmflow.target.Sale",
    "target/case.avsc": "io.crmflow.target.Case",
    "dlq/dead_letter.avsc": "io.crmflow.dlq.DeadLetter",
}


def raw(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((schemas_dir() / f"{name}.avsc").read_text(encoding="utf-8"))
    return result


def fields_of(name: str) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in raw(name)["fields"]}


def kind(avro_type: Any) -> str:
    """A short name for an Avro type: string, date, timestamp-millis, decimal(18,2), ..."""
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "decimal":
            return f"decimal({avro_type['precision']},{avro_type['scale']})"
        return str(logical or avro_type["type"])
    return str(avro_type)


def all_files() -> list[Path]:
    return schema_files()


def test_the_expected_schema_files_exist_and_nothing_else() -> None:
    root = schemas_dir()
    found = {p.relative_to(root).as_posix(): load_schema(p).full_name for p in all_files()}
    assert found == EXPECTED_FILES


@pytest.mark.parametrize("path", all_files(), ids=lambda p: p.stem)
def test_schema_parses_with_fastavro(path: Path) -> None:
    parse_schema(json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", all_files(), ids=lambda p: p.stem)
def test_every_record_and_field_has_a_doc(path: Path) -> None:
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch, where)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum") and not str(node.get("doc", "")).strip():
                missing.append(f"{where} ({node['type']} {node.get('name')})")
            for fld in node.get("fields", []):
                if not str(fld.get("doc", "")).strip():
                    missing.append(f"{where}.{fld['name']}")
                walk(fld["type"], f"{where}.{fld['name']}")
            for key in ("items", "values"):
                if key in node:
                    walk(node[key], where)

    walk(json.loads(path.read_text(encoding="utf-8")), path.stem)
    assert missing == []


@pytest.mark.parametrize("path", all_files(), ids=lambda p: p.stem)
def test_namespace_matches_its_folder_and_subject_is_the_full_name(path: Path) -> None:
    schema = load_schema(path)
    area = path.parent.name
    assert schema.namespace == f"io.crmflow.{area}"
    assert record_subject(schema) == f"io.crmflow.{area}.{schema.name}"


@pytest.mark.parametrize("entity", sorted(TARGET))
def test_target_fields_follow_the_contract(entity: str) -> None:
    fields = fields_of(f"target/{entity}")
    assert list(fields) == [*TARGET[entity], *METADATA, *DEDUPE.get(entity, []), *CHANGE, *LATER.get(entity, [])]
    for name, (expected_kind, required) in TARGET[entity].items():
        avro_type = fields[name]["type"]
        if required:
            assert kind(avro_type) == expected_kind, name
            assert "default" not in fields[name], name
        else:
            assert isinstance(avro_type, list) and avro_type[0] == "null" and len(avro_type) == 2, name
            assert kind(avro_type[1]) == expected_kind, name
            assert fields[name]["default"] is None, name


@pytest.mark.parametrize("entity", sorted(TARGET))
def test_target_metadata_fields(entity: str) -> None:
    fields = fields_of(f"target/{entity}")
    for name in ("run_id", "source", "source_position"):
        assert fields[name]["type"] == "string"
    assert fields["quality_flags"]["type"] == {"type": "array", "items": "string"}
    assert fields["quality_flags"]["default"] == []
    assert kind(fields["mapped_at"]["type"]) == TIMESTAMP
    assert fields["golden_id"]["type"] == ["null", "string"]
    assert fields["golden_id"]["default"] is None
    assert "deduplication" in fields["golden_id"]["doc"]
    assert fields["source_lsn"]["type"] == ["null", "long"] and fields["source_lsn"]["default"] is None
    assert fields["deleted"]["type"] == "boolean" and fields["deleted"]["default"] is False
    assert fields["unchanged_fields"]["type"] == {"type": "array", "items": "string"}
    assert fields["unchanged_fields"]["default"] == []
    if entity in DEDUPE:
        assert fields["merged_golden_ids"]["type"] == {"type": "array", "items": "string"}
        assert fields["merged_golden_ids"]["default"] == []
        assert fields["match_evidence"]["type"] == ["null", "string"] and fields["match_evidence"]["default"] is None
    for name in LATER.get(entity, []):
        assert fields[name]["default"] is None and fields[name]["type"][0] == "null", name


def test_legacy_record_envelope() -> None:
    fields = fields_of("legacy/legacy_record")
    assert list(fields) == ["source", "entity", "source_key", "position", "run_id", "op", "captured_at", "fields"]
    op = fields["op"]
    assert op["type"]["symbols"] == ["SNAPSHOT", "INSERT", "UPDATE", "DELETE"]
    assert op["default"] == "SNAPSHOT"
    assert kind(fields["captured_at"]["type"]) == TIMESTAMP
    assert fields["fields"]["type"] == {"type": "map", "values": ["null", "string"]}


def test_dead_letter_fields() -> None:
    fields = fields_of("dlq/dead_letter")
    nullable = {"field", "entity", "source_position", "run_id", "payload_key"}
    expected = {
        "stage": "string",
        "rule": "string",
        "field": "string",
        "error": "string",
        "entity": "string",
        "source_topic": "string",
        "source_partition": "int",
        "source_offset": "long",
        "source_position": "string",
        "run_id": "string",
        "failed_at": TIMESTAMP,
        "attempt": "int",
        "payload_key": "bytes",
        "payload": "bytes",
        "key_id": "string",
    }
    assert list(fields) == list(expected)
    for name, expected_kind in expected.items():
        avro_type = fields[name]["type"]
        if name in nullable:
            assert avro_type[0] == "null" and kind(avro_type[1]) == expected_kind, name
            assert fields[name]["default"] is None, name
        else:
            assert kind(avro_type) == expected_kind, name
    assert "ENCRYPTED" in fields["payload"]["doc"]


NOW = datetime(2024, 5, 17, 12, 30, 45, 123000, tzinfo=UTC)
META = {
    "run_id": "run-1",
    "source": "legacy_files",
    "source_position": "customers.csv:42",
    "quality_flags": ["email_invalid"],
    "mapped_at": NOW,
    "golden_id": "G0000001",
}
SAMPLES: dict[str, dict[str, Any]] = {
    "legacy/legacy_record": {
        "source": "legacy_db",
        "entity": "customers",
        "source_key": "C0000001",
        "position": "legacy.customers@0/16B3748",
        "run_id": "run-1",
        "op": "UPDATE",
        "captured_at": NOW,
        "fields": {"Customer_ID": "C0000001", "First_Name": "  anne ", "Phone": None},
    },
    "target/account": {
        "customer_id": "C0000001",
        "full_name": "Anne-Marie O'Brien",
        "first_name": "Anne-Marie",
        "last_name": "O'Brien",
        "email": "anne@example.com",
        "phone": "+14155550123",
        "street": "1 Main Street",
        "city": "Springfield",
        "postal_code": "12345",
        "country": "US",
        "region": "NA",
        "birth_date": date(1980, 2, 29),
        "customer_since": None,
        "national_id": "1804974",
        "tax_id": None,
        "legacy_account_number": "L-0042",
        "company_registration_number": None,
        **META,
        "merged_golden_ids": ["C0000007"],
        "match_evidence": '[{"rule":"email","score":null}]',
    },
    "target/contact": {
        "contact_id": "K0000001",
        "customer_id": "C0000001",
        "full_name": "Jo Smith",
        "first_name": "Jo",
        "last_name": "Smith",
        "email": None,
        "phone": None,
        "job_title": "CFO",
        "national_id": None,
        "tax_id": None,
        **META,
        "contact_golden_id": "K0000001",
        "merged_contact_golden_ids": ["K0000004"],
        "match_evidence": '[{"rule":"email","score":null}]',
    },
    "target/sale": {
        "sale_id": "S0000001",
        "customer_id": "C0000001",
        "total_sales": Decimal("1333.26"),
        "currency": "USD",
        "original_amount": Decimal("-1234.50"),
        "original_currency": "EUR",
        "sale_date": date(1969, 12, 31),
        "product": "Widget",
        **META,
    },
    "target/case": {
        "case_id": "T0000001",
        "customer_id": "C0000001",
        "case_creation_date": date(2023, 1, 1),
        "subject": "Login",
        "status": "Open",
        "priority": None,
        **META,
    },
    "dlq/dead_letter": {
        "stage": "process",
        "rule": "date_format",
        "field": "case_creation_date",
        "error": "unparseable date",
        "entity": "case",
        "source_topic": "crm.legacy.tickets",
        "source_partition": 3,
        "source_offset": 2**40,
        "source_position": "tickets.csv:7",
        "run_id": None,
        "failed_at": NOW,
        "attempt": 1,
        "payload_key": None,
        "payload": b"\x00\x01\xff",
        "key_id": "k1",
    },
}


# The change fields (crmflow.entities.CHANGE_FIELDS): a change with its LSN on accounts, the defaults elsewhere.
for _name, _sample in SAMPLES.items():
    if _name.startswith("target/"):
        _sample.update(source_lsn=None, deleted=False, unchanged_fields=[])
SAMPLES["target/account"].update(source_lsn=0x16B3748, unchanged_fields=["street"])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_fastavro_round_trip_keeps_values(name: str) -> None:
    assert round_trip(name, SAMPLES[name]) == SAMPLES[name]


def test_defaults_fill_in_when_optional_fields_are_left_out() -> None:
    required = {
        k: v
        for k, v in SAMPLES["target/account"].items()
        if k in ("customer_id", "full_name", "run_id", "source", "source_position", "mapped_at")
    }
    back = round_trip("target/account", required)
    assert back["email"] is None and back["birth_date"] is None and back["golden_id"] is None
    assert back["quality_flags"] == []


def test_legacy_op_defaults_to_snapshot() -> None:
    record = {k: v for k, v in SAMPLES["legacy/legacy_record"].items() if k != "op"}
    assert round_trip("legacy/legacy_record", record)["op"] == "SNAPSHOT"
