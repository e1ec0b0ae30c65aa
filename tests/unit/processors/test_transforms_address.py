"""street, postal_code, country_iso2 (docs/data-contract.md)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from processors.exceptions import FieldInvalid
from processors.transforms import EMPTY_CONTEXT, ReferenceData, TransformContext
from processors.transforms.address import country_iso2, postal_code, street

pytestmark = pytest.mark.unit


def _ctx(clean: dict[str, Any] | None = None, **tables: dict[str, str]) -> TransformContext:
    return TransformContext(MappingProxyType({}), MappingProxyType(clean or {}), ReferenceData(lookups=tables))


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("123 Main St.", "123 Main Street"),
        ("123 Main St", "123 Main Street"),
        ("123 main ST", "123 main Street"),  # other words keep their case
        ("123  Main   st. ", "123 Main Street"),
        ("45 Oak Ave", "45 Oak Avenue"),
        ("45 Oak Ave.", "45 Oak Avenue"),
        ("7 Elm Rd.", "7 Elm Road"),
        ("9 Sunset Blvd", "9 Sunset Boulevard"),
        ("1 Mulholland Dr.", "1 Mulholland Drive"),
        ("3 Penny Ln", "3 Penny Lane"),
        ("123 Main St., Apt 4", "123 Main Street, Apt 4"),
        ("St. James Square 1", "Street James Square 1"),  # whole word, wherever it is
        ("12 Stanley Road", "12 Stanley Road"),  # not a whole word
        ("12 Dreary Lane", "12 Dreary Lane"),
        ("Berliner Str. 12", "Berliner Str. 12"),  # Str only in DE
        ("Hauptstr. 5", "Hauptstr. 5"),
        (None, None),
        ("  ", None),
    ],
)
def test_street_abbreviations(raw: str | None, clean: str | None) -> None:
    assert street(raw) == clean


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Berliner Str. 12", "Berliner Straße 12"),
        ("Berliner str 12", "Berliner Straße 12"),
        ("Hauptstr. 5", "Hauptstr. 5"),  # glued: not a word of its own
        ("Lindenweg 3", "Lindenweg 3"),
    ],
)
def test_street_str_in_germany(raw: str, clean: str) -> None:
    assert street(raw, _ctx({"country": "DE"}), country_from="country") == clean
    assert street(raw, EMPTY_CONTEXT, country="DE") == clean


@pytest.mark.parametrize(
    ("country", "raw", "clean"),
    [
        ("US", "12345", "12345"),
        ("US", "12345-6789", "12345-6789"),
        ("US", " 02110 ", "02110"),
        ("CA", "k1a 0b1", "K1A 0B1"),
        ("DE", "10115", "10115"),
        ("FR", "75001", "75001"),
        ("NL", "1011 ab", "1011 AB"),
        ("GB", "SW1A 1AA", "SW1A 1AA"),
        ("GB", "m1 1ae", "M1 1AE"),
        ("GB", "B33 8TH", "B33 8TH"),
        ("GB", "CR2 6XH", "CR2 6XH"),
        ("GB", "DN55 1PT", "DN55 1PT"),
        ("GB", "W1A 0AX", "W1A 0AX"),
        ("GB", "EC1A 1BB", "EC1A 1BB"),
    ],
)
def test_postal_code_valid(country: str, raw: str, clean: str) -> None:
    assert postal_code(raw, _ctx({"country": country}), country_from="country") == clean


@pytest.mark.parametrize(
    ("country", "raw"),
    [
        ("US", "1234"),
        ("US", "12345-678"),
        ("CA", "K1A0B1"),  # the space is part of the pattern
        ("CA", "K1A 0B"),
        ("DE", "1011"),
        ("FR", "7500A"),
        ("NL", "1011AB"),
        ("NL", "1011 A"),
        ("GB", "SW1A1AA"),
        ("GB", "SW1A 1A"),
        ("GB", "12345"),
    ],
)
def test_postal_code_invalid(country: str, raw: str) -> None:
    with pytest.raises(FieldInvalid) as err:
        postal_code(raw, EMPTY_CONTEXT, country=country)
    assert err.value.rule == "postal_code_format"
    assert err.value.suffix == "invalid"
    assert raw not in str(err.value)


def test_postal_code_without_country() -> None:
    assert postal_code(" ab1 ", _ctx({"country": None}), country_from="country") == "AB1"
    with pytest.raises(FieldInvalid):
        postal_code("ab1", EMPTY_CONTEXT, unknown_country="invalid")
    assert postal_code(None, EMPTY_CONTEXT, country="US") is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("US", "US"), ("us", "US"), ("USA", "US"), ("United States", "US"), ("united  states ", "US"),
        ("Deutschland", "DE"), ("Germany", "DE"), ("DE", "DE"), ("GERMANY", "DE"),
        ("France", "FR"), ("FR", "FR"), ("Netherlands", "NL"), ("NL", "NL"),
        ("United Kingdom", "GB"), ("UK", "GB"), ("GB", "GB"), ("uk", "GB"),
        ("Canada", "CA"), ("CA", "CA"), ("canada", "CA"),
    ],
)  # fmt: skip
def test_country_spellings(raw: str, code: str) -> None:
    assert country_iso2(raw) == code


@pytest.mark.parametrize("raw", ["Untied States", "U.S.A", "Germny", "Cananda", "Italy", "XX", "Holland"])
def test_unknown_country(raw: str) -> None:
    with pytest.raises(FieldInvalid) as err:
        country_iso2(raw)
    assert err.value.rule == "country_unknown"
    assert err.value.suffix == "unknown"


def test_country_extra_spellings_from_a_table() -> None:
    ctx = _ctx(countries={"Holland": "NL"})
    assert country_iso2("holland", ctx, table="countries") == "NL"
    assert country_iso2(None, ctx, table="countries") is None
