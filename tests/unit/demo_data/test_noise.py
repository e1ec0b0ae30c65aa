"""The noise functions keep their promises about what the cleansing makes of their output."""

from __future__ import annotations

import random
import re
from datetime import date
from decimal import Decimal

import pytest
from email_validator import EmailNotValidError, validate_email
from rapidfuzz.distance import DamerauLevenshtein

from crmflow.demo_data import noise
from crmflow.demo_data.pools import POSTAL_PATTERNS, name_case

pytestmark = pytest.mark.unit


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("o'brien", "O'Brien"), ("anne-marie", "Anne-Marie"), ("j.", "J."), ("JOHN D.", "John D."), ("Zoë", "Zoë")],
)
def test_name_case(raw: str, expected: str) -> None:
    assert name_case(raw) == expected


@pytest.mark.parametrize("name", ["Johnson", "O'Brien", "Anne-Marie", "Müller", "Li"])
def test_typo_is_one_edit_away_and_canonical(name: str, rng: random.Random) -> None:
    for _ in range(200):
        out = noise.typo(name, rng)
        assert name_case(out) == out
        assert out[0] == name[0]
        assert DamerauLevenshtein.distance(out, name) <= 1


def test_invalid_emails_are_invalid(rng: random.Random) -> None:
    for _ in range(300):
        bad = noise.invalid_email("jane.doe42@mail.example.com", rng)
        with pytest.raises(EmailNotValidError):
            validate_email(" ".join(bad.split()).lower(), check_deliverability=False)


def test_email_case_only_changes_case(rng: random.Random) -> None:
    for _ in range(50):
        assert noise.email_case("jane.doe42@mail.example.com", rng).lower() == "jane.doe42@mail.example.com"


def test_whitespace_padding_collapses_back(rng: random.Random) -> None:
    for value in ("12 Main Street", "K1A 0B1", "x", ""):
        for _ in range(50):
            assert " ".join(noise.pad_whitespace(value, rng).split()) == value


@pytest.mark.parametrize(
    ("country", "postal"),
    [("US", "90210"), ("CA", "K1A 0B1"), ("NL", "1234 AB"), ("GB", "SW1A 1AA"), ("DE", "10115"), ("FR", "75001")],
)
def test_invalid_postal_codes_fail_the_pattern(country: str, postal: str) -> None:
    assert POSTAL_PATTERNS[country].match(postal)
    assert not POSTAL_PATTERNS[country].match(noise.invalid_postal(country, postal).upper())


def test_dates_and_invalid_dates(rng: random.Random) -> None:
    d = date(1985, 4, 7)
    assert [noise.date_text(d, s) for s in range(3)] == ["1985-04-07", "04/07/1985", "07.04.1985"]
    texts = noise.date_texts()
    assert texts.iso[d.toordinal() - texts.first] == "1985-04-07"
    for _ in range(100):
        bad = noise.invalid_date_text(d, rng)
        for pattern, order in (
            (r"(\d\d)/(\d\d)/(\d{4})", (2, 0, 1)),
            (r"(\d\d)\.(\d\d)\.(\d{4})", (2, 1, 0)),
            (r"(\d{4})-(\d\d)-(\d\d)", (0, 1, 2)),
        ):
            if m := re.fullmatch(pattern, bad):
                y, mo, da = (int(m.group(i + 1)) for i in order)
                with pytest.raises(ValueError):
                    date(y, mo, da)


@pytest.mark.parametrize(
    ("cents", "currency", "spellings"),
    [
        (123450, "USD", {"$1,234.50", "1234.50", "USD 1234.50"}),
        (123450, "EUR", {"1.234,50 EUR", "€1.234,50"}),
        (9900, "GBP", {"£99.00", "99.00 GBP"}),
        (5, "CAD", {"CAD 0.05", "0.05 CAD"}),
    ],
)
def test_amount_spellings(cents: int, currency: str, spellings: set[str], rng: random.Random) -> None:
    assert {noise.amount_text(cents, currency, rng) for _ in range(100)} == spellings


def test_conversion_rounds_half_up() -> None:
    for cents in range(0, 20_000, 7):
        for rate in (Decimal("1.08"), Decimal("1.27"), Decimal("0.73"), Decimal("1")):
            exact = noise.to_base(cents, rate)
            assert noise.to_base_cents(cents, rate.as_integer_ratio()) == int(exact * 100)
    assert noise.to_base(50, Decimal("0.73")) == Decimal("0.37")  # 0.365 rounds up


def test_malformed_rows_have_another_field_count(rng: random.Random) -> None:
    fields = [f"f{i}" for i in range(6)]
    assert all(len(noise.malformed(fields, rng)) != 6 for _ in range(100))


@pytest.mark.parametrize("fields", [["C0000001", "Jürgen", "Müller"], ["T0000001", "ascii", "only"]])
def test_mis_encoded_rows_are_not_utf8(fields: list[str]) -> None:
    raw = ",".join(noise.mis_encoded(fields)).encode("utf-8", "surrogateescape")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert b"\n" not in raw and b"\r" not in raw
