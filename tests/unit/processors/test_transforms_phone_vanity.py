"""Vanity phone numbers (letters for digits: ``030 CALL NOW``) are flagged, converted or rejected as the
config says, never converted in silence by default (issue 14, item 9)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from crmflow.config import ConfigLoadError, MigrationConfig, load_config
from crmflow.serialization import load_schema
from processors.exceptions import FieldFlagged, FieldInvalid, RecordRejected
from processors.mapping import Mapper, build_mappers
from processors.transforms.contact import VanityPolicy, phone_e164
from processors.transforms.phone import parse_e164

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"
META: dict[str, Any] = {"run_id": "run-1", "source": "customers", "source_position": "customers.csv:2",
                        "mapped_at": datetime(2024, 5, 1, 12, tzinfo=UTC)}  # fmt: skip
CUSTOMER: dict[str, str | None] = {
    "Customer_ID": "C0000001", "First_Name": "Anne", "Last_Name": "Becker", "Contact_Email": "anne@example.com",
    "Phone": "030 CALL NOW", "Street_Address": "Berliner Str. 12", "City": "Berlin", "Postal_Code": "10115",
    "Country": "Deutschland", "Region": "EU", "Birth_Date": "1980-03-04", "Customer_Since": "2019-12-31",
}  # fmt: skip
VANITY = "030 CALL NOW"
DIGITS = "+49302255669"


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        (VANITY, "DE", DIGITS),
        ("1-800-FLOWERS", "US", "+18003569377"),
        ("+1 (800) MY-APPLE", None, "+18006927753"),
    ],
)
def test_vanity_numbers_are_told_apart(raw: str, region: str | None, e164: str) -> None:
    assert parse_e164(raw, region) == (e164, True)


@pytest.mark.parametrize(
    ("raw", "region"),
    [("030 1234567", "DE"), ("+1 212 555 0134 ext. 12", None), ("+1 212 555 0134 x12", None), ("(212) 555-0134", "US")],
)
def test_numbers_in_digits_are_not_vanity_numbers(raw: str, region: str | None) -> None:
    e164, vanity = parse_e164(raw, region)
    assert e164 is not None and not vanity
    modes: tuple[VanityPolicy, ...] = ("reject", "flag", "convert")
    for mode in modes:
        assert phone_e164(raw, region=region, vanity=mode) == e164


def test_flag_keeps_the_digits_and_signals_the_flag() -> None:
    with pytest.raises(FieldFlagged) as flagged:
        phone_e164(VANITY, region="DE", vanity="flag")
    assert (flagged.value.value, flagged.value.suffix) == (DIGITS, "vanity")
    with pytest.raises(FieldFlagged):
        phone_e164(VANITY, region="DE")  # flag is the default


def test_convert_keeps_the_digits_without_a_flag() -> None:
    assert phone_e164(VANITY, region="DE", vanity="convert") == DIGITS


def test_reject_makes_the_number_an_invalid_value() -> None:
    with pytest.raises(FieldInvalid) as err:
        phone_e164(VANITY, region="DE", vanity="reject")
    assert (err.value.rule, err.value.suffix) == ("phone_vanity", "invalid")
    assert "CALL" not in str(err.value) and DIGITS not in str(err.value), "no personal data in the message"


# --- through the mapper --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> MigrationConfig:
    return load_config(DEMO)


def test_the_demo_config_flags_a_vanity_number_and_the_schemas_accept_the_flag(demo: MigrationConfig) -> None:
    out = build_mappers(demo, ["account"])["account"](CUSTOMER, META)
    assert out["phone"] == DIGITS and out["quality_flags"] == ["phone_vanity"]
    # The target's Avro schema takes the record with its flag (quality_flags: array of strings).
    parsed = load_schema("target/account").parsed
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, out)
    buf.seek(0)
    assert fastavro.schemaless_reader(buf, parsed)["quality_flags"] == ["phone_vanity"]  # type: ignore[call-overload,index]


def _mapper(tmp_path: Path, phone: str) -> Mapper:
    path = tmp_path / "c.yaml"
    path.write_text(
        "run: {name: t}\nsources: {s: {kind: csv, path: x.csv, entity: account, key: id}}\n"
        "entities:\n  account:\n    fields:\n"
        "      - {source: id, target: customer_id}\n      - {source: name, target: full_name}\n"
        "      - {source: Country, target: country, transform: country_iso2}\n"
        f"      - {phone}\n",
        encoding="utf-8",
    )
    return Mapper.from_config(load_config(path), "account")


RAW = {"id": "1", "name": "x", "Country": "DE", "ph": VANITY}


@pytest.mark.parametrize(
    ("phone", "value", "flags"),
    [
        ("{source: ph, target: phone, transform: {phone_e164: {region_from: country}}}", DIGITS, ["phone_vanity"]),
        ("{source: ph, target: phone, transform: {phone_e164: {region_from: country, vanity: flag}}}", DIGITS,
         ["phone_vanity"]),
        ("{source: ph, target: phone, transform: {phone_e164: {region_from: country, vanity: convert}}}", DIGITS, []),
        ("{source: ph, target: phone, transform: {phone_e164: {region_from: country, vanity: reject}}}", None,
         ["phone_invalid"]),
        ("{source: ph, target: phone, transform: [{phone_e164: {region: DE}}, trim]}", DIGITS, ["phone_vanity"]),
    ],
)  # fmt: skip
def test_each_mode_through_the_mapper(tmp_path: Path, phone: str, value: str | None, flags: list[str]) -> None:
    out = _mapper(tmp_path, phone).map(RAW, META)
    assert (out["phone"], out["quality_flags"]) == (value, flags)


def test_a_rejected_vanity_number_follows_invalid_reject(tmp_path: Path) -> None:
    mapper = _mapper(tmp_path, "{source: ph, target: phone, transform: {phone_e164: {region: DE, vanity: reject}}, "
                               "invalid: reject}")  # fmt: skip
    with pytest.raises(RecordRejected) as err:
        mapper.map(RAW, META)
    assert (err.value.rule, err.value.field) == ("phone_vanity", "phone")
    assert "CALL" not in str(err.value)


def test_an_unknown_vanity_mode_is_a_config_error_naming_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ConfigLoadError) as err:
        _mapper(tmp_path, "{source: ph, target: phone, transform: {phone_e164: {vanity: ignore}}}")
    (problem,) = err.value.problems
    assert problem.path == "entities.account.fields[3].transform" and problem.line == 9
    assert "phone_e164" in problem.message and "vanity" in problem.message
    assert "reject" in problem.message and "flag" in problem.message and "convert" in problem.message
