"""The ``pii`` config section (errors name file, key path and line), the key, the profile, the log filter."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from crmflow.config import ConfigLoadError, Problem, load_config
from crmflow.entities import ENTITY_NAMES, business_fields
from crmflow.exceptions import ConfigError
from crmflow.pii import (
    AccountRules,
    FieldRule,
    PiiConfig,
    PiiKeyError,
    PiiRedactingFilter,
    field_kind,
    pii_key,
    resolve_profile,
    scrub_text,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key-0123456789abcdef"

BASE = """\
run: {name: t}
sources:
  customers: {kind: csv, path: customers.csv, entity: account, key: Customer_ID}
entities:
  account:
    fields:
      - {source: Customer_ID, target: customer_id}
      - {source: Name, target: full_name}
pii:
  profile: staging
"""  # the pii section's own keys start on line 11


def load(tmp_path: Path, pii: str) -> PiiConfig:
    path = tmp_path / "crmflow.yaml"
    path.write_text(BASE + pii, encoding="utf-8")
    config = load_config(path)
    assert config.pii is not None
    return config.pii


def errors(tmp_path: Path, pii: str) -> list[Problem]:
    with pytest.raises(ConfigLoadError) as err:
        load(tmp_path, pii)
    return err.value.problems


def test_pii_section_loads(tmp_path: Path) -> None:
    pii = load(tmp_path, """\
  key_file: secrets/pii.key
  pseudonym_length: 16
  email_domain: keep
  entities:
    account: {street: redact, city: partial}
    contact:
      last_name: {policy: pseudonym, prefix: ln-}
    case:
      subject: {policy: redact, token: REDACTED}
""")  # fmt: skip
    assert pii.profile == "staging" and pii.key_env == "CRMFLOW_PII_KEY" and pii.defaults
    assert pii.key_file == tmp_path / "secrets" / "pii.key"  # relative to the config file
    assert pii.entities.account.rules() == {"street": FieldRule(policy="redact"), "city": FieldRule(policy="partial")}
    assert pii.entities.contact.rules()["last_name"].prefix == "ln-"
    assert pii.entities.case.rules()["subject"].token == "REDACTED"
    assert pii.entities.sale.rules() == {}


def test_no_pii_section_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "crmflow.yaml"
    path.write_text(BASE.split("pii:")[0], encoding="utf-8")
    assert load_config(path).pii is None


def test_demo_config_has_a_production_pii_section() -> None:
    pii = load_config(REPO / "deploy" / "demo" / "crmflow.yaml").pii
    assert pii is not None and pii.profile == "production"


@pytest.mark.parametrize(
    ("section", "path", "line", "message"),
    [
        ("  entities:\n    account: {email: scramble}\n", "pii.entities.account.email", 12,
         "expected 'keep', 'redact', 'partial', 'pseudonym' or 'format_preserving'"),
        ("  entities:\n    account:\n      emial: redact\n", "pii.entities.account.emial", 13, "unknown key"),
        ("  entities:\n    acount: {email: redact}\n", "pii.entities.acount", 12, "unknown key"),
        ("  entities:\n    contact: {job_title: pseudonym}\n    account:\n      phone: partial\n",
         "pii.entities.account.phone", 14, "partial does not fit phone, a phone field ('*** *** 1234' is not E.164)"),
        ("  entities:\n    account: {birth_date: pseudonym}\n", "pii.entities.account.birth_date", 12,
         "pseudonym does not fit birth_date, a date field (a pseudonym is not a date); expected one of: keep, "
         "redact, format_preserving, partial"),
        ("  entities:\n    account: {street: format_preserving}\n", "pii.entities.account.street", 12,
         "no format to preserve"),
        ("  entities:\n    account: {full_name: redact}\n", "pii.entities.account.full_name", 12,
         "account.full_name is required: redact it to a token"),
        ("  entities:\n    case: {case_creation_date: redact}\n", "pii.entities.case.case_creation_date", 12,
         "case.case_creation_date is a required date field: it can only be kept"),
        ("  entities:\n    account: {phone: {policy: redact, token: X}}\n", "pii.entities.account.phone", 12,
         "a token would not be a valid phone: a phone field is redacted to null"),
        ("  entities:\n    account: {email: {policy: partial, prefix: e-}}\n", "pii.entities.account.email", 12,
         "prefix only goes with policy pseudonym"),
        ("  entities:\n    account: {email: {policy: pseudonym, token: X}}\n", "pii.entities.account.email", 12,
         "token only goes with policy redact"),
        ("  entities:\n    sale: {total_sales: partial}\n", "pii.entities.sale.total_sales", 12,
         "expected one of: keep, redact"),
        ("  pseudonym_length: 4\n", "pii.pseudonym_length", 11, "greater than or equal to 8"),
        ("  email_domain: drop\n", "pii.email_domain", 11, "expected 'pseudonym' or 'keep'"),
        ("  colour: blue\n", "pii.colour", 11, "unknown key"),
    ],
)  # fmt: skip
def test_bad_pii_sections_name_file_path_and_line(
    tmp_path: Path, section: str, path: str, line: int, message: str
) -> None:
    (problem,) = errors(tmp_path, section)
    assert (problem.path, problem.line, problem.file) == (path, line, tmp_path / "crmflow.yaml")
    assert message in problem.message
    assert str(problem).startswith(f"{tmp_path / 'crmflow.yaml'}:{line}: error: {path}: ")


def test_bad_profile(tmp_path: Path) -> None:
    path = tmp_path / "crmflow.yaml"
    path.write_text(BASE.replace("profile: staging", "profile: prod"), encoding="utf-8")
    with pytest.raises(ConfigLoadError) as err:
        load_config(path)
    (problem,) = err.value.problems
    assert (problem.path, problem.line) == ("pii.profile", 10)
    assert "expected 'production', 'staging' or 'test'" in problem.message


def test_a_key_pasted_into_key_env_is_not_echoed(tmp_path: Path) -> None:
    (problem,) = errors(tmp_path, "  key_env: 'hunter2-secret/key=='\n")
    assert problem.path == "pii.key_env" and "NAME of an environment variable" in problem.message
    assert "hunter2" not in str(problem)


def test_every_entity_field_can_be_configured() -> None:
    entities = PiiConfig().entities
    for entity in ENTITY_NAMES:
        assert set(type(getattr(entities, entity)).model_fields) == set(business_fields(entity)), entity


def test_field_kinds() -> None:
    kinds = {f: field_kind("account", f) for f in AccountRules.model_fields}
    assert kinds["birth_date"] == kinds["customer_since"] == "date"
    assert [kinds[f] for f in ("email", "phone", "postal_code", "country")] == ["email", "phone", "postal", "code"]
    assert kinds["first_name"] == kinds["full_name"] == "name" and kinds["street"] == "text"
    assert field_kind("sale", "total_sales") == "number"


# ------------------------------------------------------------------------------------- profile and key


def test_resolve_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMFLOW_PII_PROFILE", raising=False)
    assert resolve_profile(None) == "production"
    assert resolve_profile(PiiConfig(profile="test")) == "test"
    monkeypatch.setenv("CRMFLOW_PII_PROFILE", "staging")
    assert resolve_profile(None) == resolve_profile(PiiConfig(profile="production")) == "staging"
    monkeypatch.setenv("CRMFLOW_PII_PROFILE", "live")
    with pytest.raises(ConfigError, match="CRMFLOW_PII_PROFILE"):
        resolve_profile(None)


def test_pii_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMFLOW_PII_KEY", raising=False)
    with pytest.raises(PiiKeyError, match=r"environment variable CRMFLOW_PII_KEY .* is not set") as err:
        pii_key(PiiConfig())
    assert err.value.path == ("pii", "key_env") and isinstance(err.value, ConfigError)
    monkeypatch.setenv("CRMFLOW_PII_KEY", KEY)
    secret = pii_key(PiiConfig())
    assert secret.get_secret_value() == KEY
    assert KEY not in repr(secret) and KEY not in str(secret)


def test_pii_key_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "pii.key"
    key_file.write_text(f"  {KEY}\n", encoding="utf-8")
    key_file.chmod(0o600)
    assert pii_key(PiiConfig(key_file=key_file)).get_secret_value() == KEY
    with pytest.raises(PiiKeyError, match="cannot read the key file") as err:
        pii_key(PiiConfig(key_file=tmp_path / "missing.key"))
    assert err.value.path == ("pii", "key_file")


# ------------------------------------------------------------------------------------------ log filter


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(PiiRedactingFilter())
    logger = logging.getLogger("tests.pii.filter")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def test_filter_scrubs_formatted_messages(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("mail %s or call %s", "jane.doe@example.com", "+49 30 1234567")
    logger.warning("phone (415) 555-0123, also 415.555.0199 and 4155550188; id=%(id)s", {"id": "bob@acme.io"})
    text = stream.getvalue()
    assert "jane.doe" not in text and "1234567" not in text and "555-0123" not in text and "bob@" not in text
    assert "INFO mail j***@example.com or call *** *** 4567" in text
    assert "phone *** *** 0123, also *** *** 0199 and *** *** 0188; id=b***@acme.io" in text


def test_filter_scrubs_exception_text(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("cannot reach jane.doe@example.com at +14155550123")
    except ValueError:
        logger.exception("failed for %s", "john@example.org")
    text = stream.getvalue()
    assert "Traceback" in text and "ValueError: cannot reach j***@example.com at *** *** 0123" in text
    assert "jane.doe" not in text and "4155550123" not in text and "john@" not in text


def test_filter_scrubs_stack_info_and_survives_bad_args(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("two %s %s", "only-one@example.com")  # args that do not fit: no crash, still scrubbed
    logger.info("with stack for +44 20 7946 0958", stack_info=True)
    text = stream.getvalue()
    assert "only-one@" not in text and "o***@example.com" in text
    assert "7946 0958" not in text and "Stack (most recent call last)" in text


def test_filter_leaves_pipeline_numbers_alone() -> None:
    text = ("crmflow.demo.raw.customers[3]@1234567890 customers.csv:42 C0000001 read 1234567 records in "
            "12.5s, 25000.75/s; 2024-01-05 12:00:00; broker 127.0.0.1:19092; run demo-20250101T120000Z-1a2b3c; "
            "20240105-120000-ab12cd; id 123e4567-e89b-12d3-a456-426614174000; slot confirmed at 4/50000000, "
            "resuming from 0/3000148")  # fmt: skip
    assert scrub_text(text) == text


@pytest.mark.parametrize("phone", ["030/1234567", "0301/234567", "415/555-0123", "+49 30/1234567"])
def test_a_phone_with_one_slash_is_not_taken_for_an_lsn(phone: str) -> None:
    assert scrub_text(f"call {phone} now") == f"call *** *** {phone[-4:]} now"
