"""PII masking: each policy on examples, determinism, keys, profiles, and masked records that still validate."""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import phonenumbers
import pytest
from email_validator import validate_email
from pydantic import SecretStr

from crmflow.config import ConfigLoadError, load_config
from crmflow.entities import ENTITY_NAMES, validate_entity
from crmflow.exceptions import ConfigError
from crmflow.pii import FieldRule, PiiConfig, partial_email, partial_phone, partial_text
from crmflow.serialization import load_schema
from processors.masking import KeyedHash, Masker
from processors.masking.keyed import base32_token, letters_token
from processors.masking.policies import format_preserving, mask_function
from processors.transforms.address import POSTAL_CODE_PATTERNS

pytestmark = pytest.mark.unit

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "another-key-9876543210fedcba"
META: dict[str, Any] = {
    "run_id": "r1", "source": "customers", "source_position": "customers.csv:2", "quality_flags": [],
    "mapped_at": datetime(2024, 1, 1, tzinfo=UTC), "golden_id": None,
}  # fmt: skip
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
POSTAL_CODES = {"US": "94105", "CA": "K1A 0B1", "DE": "10115", "FR": "75001", "NL": "1011 AB", "GB": "SW1A 1AA"}


def masker(profile: str = "staging", key: str = KEY, **pii: Any) -> Masker:
    return Masker(PiiConfig(**pii), profile=profile, key=SecretStr(key))  # type: ignore[arg-type]


def keyed(key: str = KEY) -> KeyedHash:
    return KeyedHash(SecretStr(key))


def account(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "customer_id": "C0000001", "full_name": "Anne-Marie O'Brien", "first_name": "Anne-Marie",
        "last_name": "O'Brien", "email": "anne.obrien@acme.com", "phone": "+14155550123",
        "street": "123 Main Street", "city": "Boston", "postal_code": "02118", "country": "US", "region": "NA",
        "birth_date": date(1980, 2, 29), "customer_since": date(2010, 5, 1),
    }  # fmt: skip
    return validate_entity("account", {**META, **base, **fields})


def contact(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "contact_id": "K0000001", "customer_id": "C0000001", "full_name": "Anne-Marie O'Brien",
        "first_name": "Anne-Marie", "last_name": "O'Brien", "email": "anne.obrien@acme.com",
        "phone": "+14155550123", "job_title": "Buyer",
    }  # fmt: skip
    return validate_entity("contact", {**META, "source": "contacts", **base, **fields})


SALE: dict[str, Any] = {
    "sale_id": "S1", "customer_id": "C0000001", "total_sales": Decimal("10.80"), "currency": "USD",
    "original_amount": Decimal("10.00"), "original_currency": "EUR", "sale_date": date(2023, 3, 4),
    "product": "Widget",
}  # fmt: skip
CASE: dict[str, Any] = {
    "case_id": "T1", "customer_id": "C0000001", "case_creation_date": date(2023, 3, 5),
    "subject": "Call Jane at +1 415", "status": "Open", "priority": "High",
}  # fmt: skip
SAMPLES: dict[str, dict[str, Any]] = {
    "account": account(),
    "contact": contact(),
    "sale": validate_entity("sale", {**META, "source": "sales", **SALE}),
    "case": validate_entity("case", {**META, "source": "tickets", **CASE}),
}


# ------------------------------------------------------------------------------------------- the keyed hash


@pytest.mark.parametrize("key", [KEY, "k" * 100])  # longer than a SHA-256 block: hashed first, as RFC 2104
def test_keyed_hash_is_hmac_sha256(key: str) -> None:
    expected = hmac.digest(key.encode(), b"email\0jane@example.com", hashlib.sha256)
    assert keyed(key).mac(b"email\0", "jane@example.com") == expected


def test_encodings() -> None:
    mac = keyed().mac(b"text\0", "x")
    assert re.fullmatch(r"[a-z2-7]{12}", base32_token(mac, 12))
    assert re.fullmatch(r"[a-z2-7]{24}", base32_token(mac, 24))
    assert re.fullmatch(r"[a-z]{24}", letters_token(mac, 24))
    assert base32_token(mac, 12) == base32_token(mac, 24)[:12]


# -------------------------------------------------------------------------------------------- policies


def test_redact() -> None:
    out = masker(entities={"account": {"street": "redact", "city": {"policy": "redact", "token": "REDACTED"}}})
    masked = out.mask("account", account())
    assert masked["street"] is None and masked["city"] == "REDACTED"


def test_partial() -> None:
    assert partial_email("jane.doe@example.com") == "j***@example.com"
    assert partial_phone("+14155551234") == "*** *** 1234"
    assert partial_text("Jane") == "J***"
    out = masker(entities={"account": {"first_name": "partial", "last_name": "partial", "email": "partial",
                                       "birth_date": "partial", "postal_code": "partial"}})  # fmt: skip
    masked = out.mask("account", account())
    assert (masked["first_name"], masked["last_name"], masked["full_name"]) == ("A***", "O***", "A*** O***")
    assert masked["email"] == "a***@acme.com"
    assert masked["birth_date"] == date(1980, 1, 1)
    assert masked["postal_code"] == "0***"


def test_pseudonym() -> None:
    out = masker(entities={"account": {"street": "pseudonym", "last_name": {"policy": "pseudonym", "prefix": "ln-"},
                                       "email": "pseudonym"}})  # fmt: skip
    masked = out.mask("account", account())
    assert re.fullmatch(r"[a-z2-7]{12}", masked["street"])
    assert re.fullmatch(r"[a-z2-7]{12}", masked["email"])
    assert re.fullmatch(r"[A-Z][a-z]{11}", masked["first_name"])  # names: a capitalised word
    assert re.fullmatch(r"ln-[A-Z][a-z]{11}", masked["last_name"])
    assert re.fullmatch(r"[a-z2-7]{20}", masker(pseudonym_length=20).mask("account", account())["street"])


def test_format_preserving_email() -> None:
    masked = masker().mask("account", account())["email"]
    local, domain = masked.split("@")
    assert re.fullmatch(r"[a-z2-7]{12}", local) and re.fullmatch(r"[a-z2-7]{8}\.example\.com", domain)
    validate_email(masked, check_deliverability=False)  # the contract's syntax check
    # Addresses at one domain keep sharing a (masked) domain.
    assert masker().mask("contact", contact(email="bob@acme.com"))["email"].endswith("@" + domain)
    kept = masker(email_domain="keep").mask("account", account())["email"]
    assert kept.endswith("@acme.com") and kept.split("@")[0] == local


@pytest.mark.parametrize("region", ["US", "CA", "DE", "FR", "NL", "GB", "IE", "AT", "CH", "IN"])
def test_format_preserving_phone_keeps_country_code_and_length(region: str) -> None:
    mask = format_preserving("phone", keyed(), PiiConfig())
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assert example is not None
    number = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    masked = mask(number)
    country = str(example.country_code)
    assert E164.match(masked) and masked != number and len(masked) == len(number)
    assert masked.startswith(f"+{country}{str(example.national_number)[0]}")
    assert phonenumbers.parse(masked).country_code == example.country_code


def test_format_preserving_phone_fails_closed() -> None:
    mask = format_preserving("phone", keyed(), PiiConfig())
    assert [mask(v) for v in ("4155550123", "+1", "+0123456", "+1415x550123", "+999123456")] == [None] * 5


@pytest.mark.parametrize("country", sorted(POSTAL_CODES))
def test_format_preserving_postal_code_keeps_the_country_shape(country: str) -> None:
    mask = format_preserving("postal", keyed(), PiiConfig())
    code = POSTAL_CODES[country]
    masked = [mask(code), mask(code + "-1234") if country == "US" else mask(code)]
    assert masked[0] != code
    for value in masked:
        assert POSTAL_CODE_PATTERNS[country].fullmatch(value), value


@pytest.mark.parametrize("day", [date(1980, 2, 29), date(1999, 12, 31), date(2001, 1, 1), date(9999, 12, 31)])
def test_format_preserving_date_same_year_other_day(day: date) -> None:
    mask = format_preserving("date", keyed(), PiiConfig())
    masked = mask(day)
    assert isinstance(masked, date) and masked.year == day.year and masked != day
    assert mask(day.isoformat()) == masked.isoformat()


def test_mask_function_keep_is_none() -> None:
    assert mask_function("keep", "email", keyed(), PiiConfig()) is None


# ------------------------------------------------------------------------------------- determinism, keys


def test_deterministic_across_calls_entities_and_maskers() -> None:
    first, second = masker(), masker()
    a = first.mask("account", account())
    c = second.mask("contact", contact(first_name="Anne-Marie", last_name="Smith", full_name="Anne-Marie Smith"))
    assert first.mask("account", account()) == a
    assert c["email"] == a["email"] and c["phone"] == a["phone"]  # same person, another entity, another masker
    assert c["first_name"] == a["first_name"] and c["last_name"] != a["last_name"]
    # A name masks the same in either name field.
    swapped = first.mask("account", account(first_name="O'Brien", last_name="Anne-Marie", full_name="x"))
    assert (swapped["first_name"], swapped["last_name"]) == (a["last_name"], a["first_name"])


def test_different_keys_give_different_pseudonyms() -> None:
    a = masker(key=KEY).mask("account", account())
    b = masker(key=OTHER_KEY).mask("account", account())
    for field in ("first_name", "last_name", "email", "phone", "street", "postal_code"):
        assert a[field] != b[field], field
    assert masker(key=KEY).key_id != masker(key=OTHER_KEY).key_id


def test_full_name_is_rebuilt_from_masked_parts() -> None:
    out = masker()
    masked = out.mask("account", account())
    assert masked["full_name"] == f"{masked['first_name']} {masked['last_name']}"
    only_last = out.mask("account", account(first_name=None, full_name="O'Brien"))
    assert only_last["full_name"] == masked["last_name"]
    neither = out.mask("account", account(first_name=None, last_name=None, full_name="Anne-Marie O'Brien"))
    assert re.fullmatch(r"[A-Z][a-z]{11}", neither["full_name"])  # pseudonymised as a whole
    assert out.policies("account")["full_name"].startswith("rebuilt")
    explicit = masker(entities={"account": {"full_name": {"policy": "redact", "token": "REDACTED"}}})
    assert explicit.mask("account", account())["full_name"] == "REDACTED"


def test_mask_returns_a_new_dict_and_keeps_nulls_and_missing_fields() -> None:
    record = account(email=None, phone=None)
    before = dict(record)
    masked = masker().mask("account", record)
    assert record == before and masked is not record
    assert masked["email"] is None and masked["phone"] is None
    assert masker().mask("account", {"customer_id": "C1", "email": "a@b.co"}).keys() == {"customer_id", "email"}


def test_defaults_off_masks_only_the_listed_fields() -> None:
    out = masker(defaults=False, entities={"account": {"email": "partial"}})
    masked = out.mask("account", account())
    assert masked == {**account(), "email": "a***@acme.com"}
    assert out.policies("account") == {"email": "partial"}


def test_keep_overrides_a_default() -> None:
    masked = masker(entities={"account": {"street": "keep"}}).mask("account", account())
    assert masked["street"] == "123 Main Street" and masked["email"] != account()["email"]


# ------------------------------------------------------------------------- masked records fit the contract

ALL_POLICIES = {
    "account": {"customer_id": "pseudonym", "city": "partial", "region": {"policy": "redact", "token": "X"},
                "country": "redact", "customer_since": "format_preserving", "street": "partial"},
    "contact": {"job_title": "pseudonym", "email": "pseudonym", "first_name": "format_preserving",
                "last_name": "partial"},
    "sale": {"product": "partial", "sale_date": "format_preserving", "original_amount": "redact",
             "currency": "redact"},
    "case": {"subject": {"policy": "redact", "token": "REDACTED"}, "case_creation_date": "partial",
             "status": "pseudonym"},
}  # fmt: skip


@pytest.mark.parametrize("entities", [{}, ALL_POLICIES], ids=["defaults", "every-policy"])
@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_masked_records_validate_and_encode(entity: str, entities: dict[str, Any]) -> None:
    masked = masker(entities=entities).mask(entity, SAMPLES[entity])
    validated = validate_entity(entity, masked)
    fastavro.schemaless_writer(io.BytesIO(), load_schema(f"target/{entity}").parsed, validated)
    if entity == "account":
        assert masked["email"] != SAMPLES[entity]["email"]


def test_masked_demo_like_records_validate_for_every_country() -> None:
    out = masker()
    for country, postal in POSTAL_CODES.items():
        example = phonenumbers.example_number(country)
        assert example is not None
        phone = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
        record = account(country=country, postal_code=postal, phone=phone, email=f"x.{country.lower()}@mail.{country}")
        masked = validate_entity("account", out.mask("account", record))
        assert POSTAL_CODE_PATTERNS[country].fullmatch(masked["postal_code"])
        assert phonenumbers.parse(masked["phone"]).country_code == example.country_code


# ------------------------------------------------------------------------------------ profiles and keys


def test_production_is_inactive_and_needs_no_key() -> None:
    out = Masker(PiiConfig(profile="production"))
    assert not out.active and out.key_id is None and out.policies("account") == {}
    record = account()
    masked = out.mask("account", record)
    assert masked == record and masked is not record


@pytest.mark.parametrize("profile", ["staging", "test"])
def test_staging_and_test_are_active(profile: str) -> None:
    out = masker(profile=profile)
    assert out.active and out.mask("account", account())["email"] != account()["email"]


def test_active_profile_without_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs the pii key"):
        Masker(PiiConfig(profile="staging"))


CONFIG = """\
run: {name: t}
sources:
  customers: {kind: csv, path: customers.csv, entity: account, key: Customer_ID}
entities:
  account:
    fields:
      - {source: Customer_ID, target: customer_id}
      - {source: Name, target: full_name}
"""


def write_config(tmp_path: Path, pii: str = "") -> Path:
    path = tmp_path / "crmflow.yaml"
    path.write_text(CONFIG + pii, encoding="utf-8")
    return path


def test_from_config_profile_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMFLOW_PII_PROFILE", raising=False)
    monkeypatch.setenv("CRMFLOW_PII_KEY", KEY)
    assert not Masker.from_config(load_config(write_config(tmp_path))).active  # no pii section: production
    cfg = load_config(write_config(tmp_path, "pii: {profile: staging}\n"))
    assert Masker.from_config(cfg).profile == "staging"
    monkeypatch.setenv("CRMFLOW_PII_PROFILE", "production")
    assert not Masker.from_config(cfg).active
    monkeypatch.setenv("CRMFLOW_PII_PROFILE", "test")
    assert Masker.from_config(load_config(write_config(tmp_path))).profile == "test"
    monkeypatch.setenv("CRMFLOW_PII_PROFILE", "prod")
    with pytest.raises(ConfigError, match="CRMFLOW_PII_PROFILE='prod': expected one of: production, staging, test"):
        Masker.from_config(cfg)


def test_missing_key_names_the_variable_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMFLOW_PII_PROFILE", raising=False)
    monkeypatch.delenv("MY_PII_KEY", raising=False)
    path = write_config(tmp_path, "pii:\n  profile: staging\n  key_env: MY_PII_KEY\n")
    with pytest.raises(ConfigLoadError) as err:
        Masker.from_config(load_config(path))
    assert str(err.value).startswith(f"{path}:11: error: pii.key_env: environment variable MY_PII_KEY")
    assert "is not set" in str(err.value)
    monkeypatch.setenv("MY_PII_KEY", "short")
    with pytest.raises(ConfigLoadError, match="shorter than 16 bytes"):
        Masker.from_config(load_config(path))


def test_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMFLOW_PII_PROFILE", raising=False)
    (tmp_path / "pii.key").write_text(KEY + "\n", encoding="utf-8")
    (tmp_path / "pii.key").chmod(0o600)
    cfg = load_config(write_config(tmp_path, "pii: {profile: test, key_file: pii.key}\n"))
    from_file = Masker.from_config(cfg)
    assert from_file.mask("account", account()) == masker(key=KEY).mask("account", account())
    missing = load_config(write_config(tmp_path, "pii: {profile: test, key_file: nope.key}\n"))
    with pytest.raises(ConfigLoadError, match=r"pii\.key_file: cannot read the key file .*nope\.key"):
        Masker.from_config(missing)


def test_the_key_never_shows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CRMFLOW_PII_PROFILE", raising=False)
    monkeypatch.setenv("CRMFLOW_PII_KEY", KEY)
    out = Masker.from_config(load_config(write_config(tmp_path, "pii: {profile: staging}\n")))
    shown = [repr(out), str(out), repr(keyed()), str(vars(out)), repr(FieldRule(policy="pseudonym"))]
    assert not any(KEY in text for text in shown)
