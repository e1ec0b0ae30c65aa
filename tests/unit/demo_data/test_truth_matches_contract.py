"""The truth is what the contract's rules make of the noisy lines.

A small reference cleanser written from docs/data-contract.md, independent of the generator, cleans
every line of the generated files; its result must equal the truth field by field, flags included, and
its reject decisions must equal the truth's rules.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email

from crmflow.demo_data.layout import CONTACTS, CUSTOMERS, SALES, TICKETS

if TYPE_CHECKING:
    from conftest import Dataset

pytestmark = pytest.mark.unit

COUNTRIES = {
    "us": "US",
    "usa": "US",
    "united states": "US",
    "deutschland": "DE",
    "germany": "DE",
    "de": "DE",
    "france": "FR",
    "fr": "FR",
    "netherlands": "NL",
    "nl": "NL",
    "united kingdom": "GB",
    "uk": "GB",
    "gb": "GB",
    "canada": "CA",
    "ca": "CA",
}
POSTAL = {
    "US": r"\d{5}(-\d{4})?",
    "CA": r"[A-Z]\d[A-Z] \d[A-Z]\d",
    "DE": r"\d{5}",
    "FR": r"\d{5}",
    "NL": r"\d{4} [A-Z]{2}",
    "GB": r"[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}",
}
STREET_WORDS = {"st": "Street", "ave": "Avenue", "rd": "Road", "blvd": "Boulevard", "dr": "Drive", "ln": "Lane"}
FX = {"USD": Decimal("1"), "EUR": Decimal("1.08"), "GBP": Decimal("1.27"), "CAD": Decimal("0.73")}
MONEY = [
    (r"\$(\d{1,3}(?:,\d{3})*\.\d{2})", "USD", "."),
    (r"(\d+\.\d{2})", "USD", "."),
    (r"(USD|EUR|GBP|CAD) (\d+\.\d{2})", None, "."),
    (r"(\d+\.\d{2}) (USD|EUR|GBP|CAD)", None, "."),
    (r"(\d{1,3}(?:\.\d{3})*,\d{2}) EUR", "EUR", ","),
    (r"€(\d{1,3}(?:\.\d{3})*,\d{2})", "EUR", ","),
    (r"£(\d{1,3}(?:,\d{3})*\.\d{2})", "GBP", "."),
]


def ws(value: str) -> str | None:
    return " ".join(value.split()) or None


def name(value: str) -> str | None:
    v = ws(value)
    return None if v is None else re.sub(r"[^ \-']+", lambda m: m[0][0].upper() + m[0][1:].lower(), v)


def country(value: str) -> str | None:
    v = ws(value)
    return None if v is None else COUNTRIES.get(v.lower())


def street(value: str, iso: str | None) -> str | None:
    v = ws(value)
    if v is None:
        return None
    words = {**STREET_WORDS, **({"str": "Straße"} if iso == "DE" else {})}
    return " ".join(words.get(w.lower().removesuffix("."), w) for w in v.split(" "))


def day(value: str) -> date | None:
    v = ws(value) or ""
    for pattern, order in (
        (r"(\d{2})/(\d{2})/(\d{4})", "mdy"),
        (r"(\d{2})\.(\d{2})\.(\d{4})", "dmy"),
        (r"(\d{4})-(\d{2})-(\d{2})", "ymd"),
    ):
        if m := re.fullmatch(pattern, v):
            parts = dict(zip(order, map(int, m.groups()), strict=True))
            try:
                return date(parts["y"], parts["m"], parts["d"])
            except ValueError:
                return None
    return None


def money(value: str) -> tuple[Decimal, str] | None:
    v = ws(value) or ""
    for pattern, currency, decimal_mark in MONEY:
        if m := re.fullmatch(pattern, v):
            groups = m.groups()
            number = next(g for g in groups if g[0].isdigit())
            cur = currency or next(g for g in groups if g.isalpha())
            thousands = "," if decimal_mark == "." else "."
            return Decimal(number.replace(thousands, "").replace(",", ".")), cur
    return None


def email(value: str, flags: list[str]) -> str | None:
    v = ws(value)
    if v is None:
        flags.append("email_missing")
        return None
    try:
        validate_email(v.lower(), check_deliverability=False)
    except EmailNotValidError:
        flags.append("email_invalid")
        return None
    return v.lower()


def phone(value: str, region: str | None, flags: list[str]) -> str | None:
    if ws(value) is None:
        flags.append("phone_missing")
        return None
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        flags.append("phone_invalid")
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def optional_day(value: str, field: str, flags: list[str]) -> str | None:
    if ws(value) is None:
        return None
    d = day(value)
    if d is None:
        flags.append(f"{field}_invalid")
    return None if d is None else d.isoformat()


def full(first: str | None, last: str | None) -> str | None:
    return " ".join(p for p in (first, last) if p) or None


def account(f: list[str]) -> dict[str, Any] | str:
    flags: list[str] = []
    first, last, iso = name(f[1]), name(f[2]), country(f[8])
    if full(first, last) is None:
        return "required"
    if iso is None:
        flags.append("country_unknown")
    postal = (ws(f[7]) or "").upper() or None
    assert iso is not None or postal is None, "unknown country with a postal code: the contract is silent"
    if postal is not None and iso is not None and not re.fullmatch(POSTAL[iso], postal):
        postal = None
        flags.append("postal_code_invalid")
    clean = {
        "customer_id": ws(f[0]),
        "full_name": full(first, last),
        "first_name": first,
        "last_name": last,
        "email": email(f[3], flags),
        "phone": phone(f[4], iso, flags),
        "street": street(f[5], iso),
        "city": name(f[6]),
        "postal_code": postal,
        "country": iso,
        "region": ws(f[9]),
        "birth_date": optional_day(f[10], "birth_date", flags),
        "customer_since": optional_day(f[11], "customer_since", flags),
    }
    return {**clean, "quality_flags": sorted(flags)}


def contact(f: list[str]) -> dict[str, Any] | str:
    flags: list[str] = []
    first, last = name(f[2]), name(f[3])
    if full(first, last) is None:
        return "required"
    clean = {
        "contact_id": ws(f[0]),
        "customer_id": ws(f[1]),
        "full_name": full(first, last),
        "first_name": first,
        "last_name": last,
        "email": email(f[4], flags),
        "phone": phone(f[5], None, flags),
        "job_title": ws(f[6]),
    }
    return {**clean, "quality_flags": sorted(flags)}


def sale(f: list[str]) -> dict[str, Any] | str:
    if ws(f[2]) is None:
        return "required"
    parsed = money(f[2])
    if parsed is None:
        return "currency_format"
    amount, currency = parsed
    flags: list[str] = []
    clean = {
        "sale_id": ws(f[0]),
        "customer_id": ws(f[1]),
        "total_sales": str((amount * FX[currency]).quantize(Decimal("0.01"), ROUND_HALF_UP)),
        "currency": "USD",
        "original_amount": str(amount),
        "original_currency": currency,
        "sale_date": optional_day(f[3], "sale_date", flags),
        "product": ws(f[4]),
    }
    return {**clean, "quality_flags": sorted(flags)}


def case(f: list[str]) -> dict[str, Any] | str:
    if ws(f[2]) is None:
        return "required"
    d = day(f[2])
    if d is None:
        return "date_format"
    return {
        "case_id": ws(f[0]),
        "customer_id": ws(f[1]),
        "case_creation_date": d.isoformat(),
        "subject": ws(f[3]),
        "status": ws(f[4]),
        "priority": ws(f[5]),
        "quality_flags": [],
    }


CLEANERS = {CUSTOMERS.name: account, CONTACTS.name: contact, SALES.name: sale, TICKETS.name: case}


def test_reference_cleansing_reproduces_the_truth(dataset: Dataset) -> None:
    arrived = set()
    rules_seen = set()
    for source in (CUSTOMERS, CONTACTS, SALES, TICKETS):  # parents first: orphans need them
        for line, t in dataset.truth[source.name].items():
            fields = dataset.rows[source.name][line]
            if t["rule"] in ("csv_malformed", "encoding"):
                continue  # checked in test_generate
            assert fields is not None
            result = CLEANERS[source.name](fields)
            if isinstance(result, dict) and source is not CUSTOMERS and result["customer_id"] not in arrived:
                result = "orphan"
            where = f"{source.name}:{line}"
            if isinstance(result, str):
                assert t["outcome"] == "reject" and t["rule"] == result, where
                rules_seen.add(result)
            else:
                assert t["outcome"] == "ok", f"{where}: truth says {t['rule']}"
                assert t["clean"] == result, where
                if source is CUSTOMERS:
                    arrived.add(result["customer_id"])
    assert rules_seen == {"required", "currency_format", "date_format", "orphan"}


def test_every_ok_email_and_phone_is_valid(dataset: Dataset) -> None:
    for source in (CUSTOMERS, CONTACTS):
        for t, _fields in dataset.ok(source.name):
            clean = t["clean"]
            if clean["email"] is not None:
                assert validate_email(clean["email"], check_deliverability=False).normalized == clean["email"]
            if clean["phone"] is not None:
                number = phonenumbers.parse(clean["phone"], None)
                assert phonenumbers.is_valid_number(number)
                assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == clean["phone"]


def test_the_noise_is_there(dataset: Dataset) -> None:
    """The reference cleanser had work to do: the noisy text differs from the clean value often."""
    changed: dict[str, int] = {}
    for t, f in dataset.ok(CUSTOMERS.name):
        c = t["clean"]
        for key, raw in (
            ("first_name", f[1]),
            ("email", f[3]),
            ("street", f[5]),
            ("country", f[8]),
            ("birth_date", f[10]),
        ):
            if c[key] is not None and raw != c[key]:
                changed[key] = changed.get(key, 0) + 1
        if c["phone"] is not None and f[4] != c["phone"]:
            changed["phone"] = changed.get("phone", 0) + 1
    assert set(changed) == {"first_name", "email", "street", "country", "birth_date", "phone"}
    formats = {re.sub(r"\d", "9", f[4]) for t, f in dataset.ok(CUSTOMERS.name) if t["clean"]["phone"]}
    assert len(formats) > 30
