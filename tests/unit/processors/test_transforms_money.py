"""parse_currency / convert_currency: the contract's amount spellings, half-up to 2 places."""

from __future__ import annotations

from decimal import Decimal
from types import MappingProxyType

import pytest

from processors.exceptions import FieldInvalid
from processors.transforms import ReferenceData, TransformContext
from processors.transforms.money import convert_currency, parse_currency, parse_money

pytestmark = pytest.mark.unit

RATES = {"USD": Decimal(1), "EUR": Decimal("1.08"), "GBP": Decimal("1.27"), "CAD": Decimal("0.73")}
CTX = TransformContext(MappingProxyType({}), MappingProxyType({}), ReferenceData("USD", RATES))


@pytest.mark.parametrize(
    ("raw", "amount", "currency"),
    [
        ("$1,234.50", "1234.50", "USD"),
        ("1234.50", "1234.50", "USD"),  # a bare number is USD
        ("USD 1234.50", "1234.50", "USD"),
        ("1.234,50 EUR", "1234.50", "EUR"),
        ("€1.234,50", "1234.50", "EUR"),
        ("£99.00", "99.00", "GBP"),
        ("99.00 GBP", "99.00", "GBP"),
        ("CAD 12.00", "12.00", "CAD"),
        ("12.00 CAD", "12.00", "CAD"),
        ("£1,234,567.89", "1234567.89", "GBP"),
        ("12,50 EUR", "12.50", "EUR"),
        ("1.234.567,00 EUR", "1234567.00", "EUR"),
        ("usd 5", "5.00", "USD"),
        ("$0.5", "0.50", "USD"),
        ("1.234", "1234.00", "USD"),  # dot + three digits: thousands
        ("-12.00", "-12.00", "USD"),
        ("$12.00 USD", "12.00", "USD"),
    ],
)
def test_accepted_amounts(raw: str, amount: str, currency: str) -> None:
    assert parse_money(raw) == (Decimal(amount), currency)
    assert parse_currency(raw) == Decimal(amount)
    assert parse_currency(raw, CTX, output="currency") == currency


@pytest.mark.parametrize(
    "raw",
    ["$12.3.4", "1O0.00", "USD 12a.50", "EUR", "--", "12..50 GBP", "€ 1,2,3", "abc", "$", "1,2345.00",
     "12.345,678 EUR", "$12 EUR", "1 234.50", "twelve dollars"],
)  # fmt: skip
def test_garbage_is_currency_format(raw: str) -> None:
    with pytest.raises(FieldInvalid) as err:
        parse_currency(raw)
    assert err.value.rule == "currency_format"
    assert raw not in str(err.value)


@pytest.mark.parametrize(
    ("raw", "converted"),
    [
        ("$1,234.50", "1234.50"),
        ("1.234,50 EUR", "1333.26"),  # 1333.26
        ("€0,05", "0.05"),  # 0.054 → 0.05
        ("£99.00", "125.73"),
        ("CAD 100.00", "73.00"),
        ("€0,25", "0.27"),  # 0.27 exactly
        ("£0.50", "0.64"),  # 0.635 → half-up 0.64
        ("CAD 0.50", "0.37"),  # 0.365 → half-up 0.37
    ],
)
def test_convert_to_base_currency_half_up(raw: str, converted: str) -> None:
    assert convert_currency(raw, CTX) == Decimal(converted)
    assert convert_currency(raw, CTX, output="currency") == "USD"


def test_currency_without_rate_is_currency_format() -> None:
    with pytest.raises(FieldInvalid) as err:
        convert_currency("JPY 100", CTX)
    assert err.value.rule == "currency_format"


def test_base_currency_needs_no_rate() -> None:
    ctx = TransformContext(MappingProxyType({}), MappingProxyType({}), ReferenceData("EUR", {}))
    assert convert_currency("12,00 EUR", ctx) == Decimal("12.00")


def test_default_currency_of_a_bare_number() -> None:
    assert parse_currency("10.00", CTX, default_currency="EUR", output="currency") == "EUR"
    assert convert_currency("10.00", CTX, default_currency="EUR") == Decimal("10.80")


def test_missing_is_none() -> None:
    assert parse_currency(None) is None
    assert convert_currency("  ", CTX) is None
