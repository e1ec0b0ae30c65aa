"""Personal data: the ``pii`` section of the migration config, and a log filter that scrubs it.

Which target fields are personal data, and how each is masked, is declared per entity and field; the known
CRM fields (:data:`DEFAULT_POLICIES`) are masked unless listed. :mod:`processors.masking` applies it. ::

    pii:
      profile: staging            # production | staging | test; env CRMFLOW_PII_PROFILE overrides it
      key_env: CRMFLOW_PII_KEY    # env var holding the pseudonym key (the default); or key_file: path
      pseudonym_length: 12        # base32 characters of the HMAC in a pseudonym (60 bits)
      email_domain: pseudonym     # pseudonym (<token>.example.com) | keep
      encrypt_state: auto         # auto | true | false: the processor's internal topics (see StateCipher)
      entities:
        account: {street: redact, city: partial}
        contact: {last_name: {policy: pseudonym, prefix: ln-}}
        case: {subject: {policy: redact, token: REDACTED}}

Policies: keep, redact (null or ``token``), partial (``j***@example.com``, ``J***``, a date → 1 January),
pseudonym (keyed HMAC-SHA256 in base32), format_preserving (email, phone, postal code, date and name keep
their format). Loading checks that the policy's output fits the field, so a masked record always validates
(a phone can only be kept, redacted to null or format-preserved: ``*** *** 1234`` is not E.164).
Profile production masks nothing in the mapped records (only logs, through :class:`PiiRedactingFilter`);
staging and test mask the mapped records before they are produced.

What the processor keeps for itself before masking (the deduplication topic and its state's changelog:
the matcher needs the real values) is sealed with :class:`StateCipher`, AES-256-GCM under a key derived
from the same pii key, and opened only in the processor's memory.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, cast, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from crmflow.configbase import invalid
from crmflow.entities import entity_model, pii_defaults, required_fields
from crmflow.exceptions import ConfigError, TerminalError

__all__ = [
    "DEFAULT_POLICIES", "PROFILE_ENV", "FieldKind", "FieldRule", "PiiConfig", "PiiKeyError",
    "PiiRedactingFilter", "Policy", "Profile", "SealedDataError", "StateCipher", "field_kind", "partial_email",
    "partial_phone", "partial_text", "pii_key", "resolve_profile", "scrub_text", "state_cipher",
]  # fmt: skip

log = logging.getLogger(__name__)

Profile = Literal["production", "staging", "test"]
Policy = Literal["keep", "redact", "partial", "pseudonym", "format_preserving"]
#: What a field holds, which decides the policies that fit it.
FieldKind = Literal["name", "email", "phone", "postal", "date", "code", "number", "text"]

PROFILE_ENV: Final = "CRMFLOW_PII_PROFILE"
MIN_KEY_BYTES: Final = 16



def _default_policies() -> dict[str, Policy]:
    out: dict[str, Policy] = {}
    for field, policy in pii_defaults().items():
        if policy not in get_args(Policy):
            raise ValueError(f"crmflow.entities: field {field} declares pii {policy!r}, not one of {get_args(Policy)}")
        out[field] = cast(Policy, policy)
    return out


#: The known CRM fields masked by default (``defaults: true``), in any entity that has them, as the entity
#: contract declares them (:func:`crmflow.entities.pii_defaults`). full_name is not listed: by default it is
#: rebuilt from the masked first and last name (see processors.masking).
DEFAULT_POLICIES: Final[dict[str, Policy]] = _default_policies()

_NAMED_KINDS: Final[dict[str, FieldKind]] = {
    "first_name": "name", "last_name": "name", "full_name": "name", "email": "email", "phone": "phone",
    "postal_code": "postal", "country": "code", "currency": "code", "original_currency": "code",
}  # fmt: skip

#: Policies whose output fits each kind of field (besides keep and redact).
_FITS: Final[dict[FieldKind, frozenset[str]]] = {
    "name": frozenset({"partial", "pseudonym", "format_preserving"}), "phone": frozenset({"format_preserving"}),
    "email": frozenset({"partial", "pseudonym", "format_preserving"}), "code": frozenset(), "number": frozenset(),
    "postal": frozenset({"partial", "format_preserving"}), "date": frozenset({"partial", "format_preserving"}),
    "text": frozenset({"partial", "pseudonym"}),
}  # fmt: skip
_WHY_NOT: Final[dict[tuple[str, FieldKind], str]] = {
    ("partial", "phone"): " ('*** *** 1234' is not E.164)",
    ("pseudonym", "phone"): " (a pseudonym is not E.164)",
    ("pseudonym", "date"): " (a pseudonym is not a date)",
    ("pseudonym", "postal"): " (a pseudonym does not keep the country's postal code shape)",
    ("format_preserving", "text"): " (it has no format to preserve; use pseudonym)",
}
#: Kinds whose values have a shape a redaction token would break: they can only be redacted to null.
_NO_TOKEN: Final = frozenset({"phone", "date", "code", "number"})


def _types_in(annotation: Any) -> set[Any]:
    found = {annotation}
    for arg in get_args(annotation):
        found |= _types_in(arg)
    return found


def field_kind(entity: str, field: str) -> FieldKind:
    """The kind of ``entity.field``: by name for the known fields, else by the entity model's type."""
    if field in _NAMED_KINDS:
        return _NAMED_KINDS[field]
    types = _types_in(entity_model(entity).model_fields[field].annotation)
    if date in types:
        return "date"
    if Decimal in types:
        return "number"
    return "text"


def _shorthand(value: Any) -> Any:
    return {"policy": value} if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldRule(_Model):
    """How one field is masked; ``email: pseudonym`` is short for ``email: {policy: pseudonym}``."""

    policy: Policy
    token: str | None = Field(default=None, min_length=1, max_length=16, description="redact: value instead of null")
    prefix: str = Field(default="", max_length=16, pattern=r"^[A-Za-z0-9_.\-]*$", description="pseudonym: prepended")


Rule = Annotated[FieldRule | None, BeforeValidator(_shorthand)]


class _EntityRules(_Model):
    """The rules of one entity's fields; a field left out gets its default (or is kept)."""

    ENTITY: ClassVar[str]

    @field_validator("*")
    @classmethod
    def _fits(cls, rule: FieldRule | None, info: ValidationInfo) -> FieldRule | None:
        if rule is None or info.field_name is None:
            return rule
        if rule.token is not None and rule.policy != "redact":
            raise invalid("token only goes with policy redact")
        if rule.prefix and rule.policy != "pseudonym":
            raise invalid("prefix only goes with policy pseudonym")
        if rule.policy == "keep":
            return rule
        field = info.field_name
        kind = field_kind(cls.ENTITY, field)
        if rule.policy == "redact":
            required = field in required_fields(cls.ENTITY)
            if kind in _NO_TOKEN:
                if required:
                    raise invalid(f"{cls.ENTITY}.{field} is a required {kind} field: it can only be kept")
                if rule.token is not None:
                    raise invalid(f"a token would not be a valid {field}: a {kind} field is redacted to null")
            elif rule.token is None and required:
                raise invalid(f"{cls.ENTITY}.{field} is required: redact it to a token ({{policy: redact, "
                              "token: REDACTED}}), never to null")  # fmt: skip
            return rule
        if rule.policy not in _FITS[kind]:
            fitting = ", ".join(["keep", "redact", *sorted(_FITS[kind])])
            why = _WHY_NOT.get((rule.policy, kind), "")
            raise invalid(f"{rule.policy} does not fit {field}, a {kind} field{why}; expected one of: {fitting}")
        return rule

    def rules(self) -> dict[str, FieldRule]:
        """The fields given a rule in the config."""
        return {name: rule for name, rule in self if isinstance(rule, FieldRule)}


# One class per entity with one optional rule per business field, so a typo is an "unknown key" error at
# its own key path. tests/unit/test_pii_config.py checks that they list the fields of crmflow.entities.


class AccountRules(_EntityRules):
    ENTITY = "account"
    customer_id: Rule = None
    full_name: Rule = None
    first_name: Rule = None
    last_name: Rule = None
    email: Rule = None
    phone: Rule = None
    street: Rule = None
    city: Rule = None
    postal_code: Rule = None
    country: Rule = None
    region: Rule = None
    birth_date: Rule = None
    customer_since: Rule = None
    national_id: Rule = None
    tax_id: Rule = None
    legacy_account_number: Rule = None
    company_registration_number: Rule = None


class ContactRules(_EntityRules):
    ENTITY = "contact"
    contact_id: Rule = None
    customer_id: Rule = None
    full_name: Rule = None
    first_name: Rule = None
    last_name: Rule = None
    email: Rule = None
    phone: Rule = None
    job_title: Rule = None
    national_id: Rule = None
    tax_id: Rule = None


class SaleRules(_EntityRules):
    ENTITY = "sale"
    sale_id: Rule = None
    customer_id: Rule = None
    total_sales: Rule = None
    currency: Rule = None
    original_amount: Rule = None
    original_currency: Rule = None
    sale_date: Rule = None
    product: Rule = None


class CaseRules(_EntityRules):
    ENTITY = "case"
    case_id: Rule = None
    customer_id: Rule = None
    case_creation_date: Rule = None
    subject: Rule = None
    status: Rule = None
    priority: Rule = None


class PiiEntities(_Model):
    account: AccountRules = Field(default_factory=AccountRules)
    contact: ContactRules = Field(default_factory=ContactRules)
    sale: SaleRules = Field(default_factory=SaleRules)
    case: CaseRules = Field(default_factory=CaseRules)

    def of(self, entity: str) -> dict[str, FieldRule]:
        """The rules the config gives ``entity``'s fields."""
        rules: _EntityRules = getattr(self, entity)
        return rules.rules()


def _key_env_name(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        # Never echo it: it may be the key itself, pasted in by mistake.
        raise invalid("expected the NAME of an environment variable holding the key, never the key itself")
    return value


class PiiConfig(_Model):
    """The ``pii`` section; without one the profile is production (or ``$CRMFLOW_PII_PROFILE``)."""

    profile: Profile = "production"
    key_env: Annotated[str, BeforeValidator(_key_env_name)] = "CRMFLOW_PII_KEY"
    key_file: Path | None = Field(default=None, description="file holding the key; relative to the config file")
    pseudonym_length: int = Field(default=12, ge=8, le=24, description="base32 characters (5 bits each)")
    email_domain: Literal["pseudonym", "keep"] = "pseudonym"
    encrypt_state: Literal["auto", True, False] = Field(
        default="auto", description="seal the processor's internal topics: auto = when a key is set or the "
        "profile masks; true = always (a missing key is an error); false = never (clear values, see README)")
    defaults: bool = Field(default=True, description="mask the known CRM fields (DEFAULT_POLICIES)")
    entities: PiiEntities = Field(default_factory=PiiEntities)

    @field_validator("key_file", mode="before")
    @classmethod
    def _relative(cls, value: Any, info: ValidationInfo) -> Any:
        base = (info.context or {}).get("base_dir")
        if isinstance(value, str) and base is not None and not Path(value).is_absolute():
            return Path(os.path.normpath(Path(base) / value))
        return value


class PiiKeyError(ConfigError):
    """The pseudonym key is missing or unusable; ``path`` is the config key that names it."""

    def __init__(self, message: str, path: tuple[str, ...]) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def resolve_profile(pii: PiiConfig | None) -> Profile:
    """``$CRMFLOW_PII_PROFILE`` if set, else the config's profile (production without a pii section)."""
    override = os.environ.get(PROFILE_ENV, "").strip()
    if override:
        if override not in get_args(Profile):
            raise ConfigError(f"{PROFILE_ENV}={override!r}: expected one of: {', '.join(get_args(Profile))}")
        return override  # type: ignore[return-value]
    return pii.profile if pii is not None else "production"


def pii_key(pii: PiiConfig) -> SecretStr:
    """The pseudonym key from ``key_file`` if set, else from the variable ``key_env``; PiiKeyError if unusable."""
    if pii.key_file is not None:
        path, where = ("pii", "key_file"), f"the key file {pii.key_file}"
        try:
            key = pii.key_file.read_bytes().strip().decode("utf-8", "replace")
        except OSError as exc:
            raise PiiKeyError(f"cannot read {where} ({exc.__class__.__name__})", path) from None
        if pii.key_file.stat().st_mode & 0o077:
            log.warning("the pii key file is readable by group or others; chmod 600 it")
    else:
        path, where = ("pii", "key_env"), f"environment variable {pii.key_env}"
        key = os.environ.get(pii.key_env, "").strip()
        if not key:
            raise PiiKeyError(f"{where} (pii.key_env) is not set; it keys the pseudonyms and seals the processor's "
                              f"internal topics: export a secret of at least {MIN_KEY_BYTES} bytes, e.g. "
                              "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`", path)  # fmt: skip
    if len(key.encode()) < MIN_KEY_BYTES:
        raise PiiKeyError(f"the key in {where} is shorter than {MIN_KEY_BYTES} bytes", path)
    return SecretStr(key)


# ------------------------------------------------------------------------------ sealed internal state


class SealedDataError(TerminalError):
    """A sealed value does not open: another key sealed it, or it was altered. Names the key ids only."""


class StateCipher:
    """Seals the values a stage keeps for itself (AES-256-GCM), so Kafka never holds them in clear.

    The AES key is an HMAC of a fixed label under the pii key: one secret to manage, and a pseudonym never
    reveals anything about the encryption key (nor the reverse). A sealed value is ``MAGIC + key id (6
    bytes) + nonce (12) + ciphertext + tag (16)``: 35 bytes more than the clear value. ``context`` (the
    topic, or the changelog key) is authenticated with it, so a value moved to another key or topic does
    not open. Nonces are random: safe up to about 2**32 values per key.

    A value that does not start with :data:`MAGIC` was written in clear (before sealing was on) and is
    returned as it is: Avro's wire format starts with 0, JSON with ``{``.
    """

    MAGIC: Final = b"\xc5"
    _KEY_ID_BYTES: Final = 6
    _NONCE_BYTES: Final = 12

    def __init__(self, key: SecretStr) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # the core imports it lazily

        secret = hmac.digest(key.get_secret_value().encode(), b"crmflow sealed state v1", hashlib.sha256)
        self._aead = AESGCM(secret)
        self._key_id = hmac.digest(secret, b"key id", hashlib.sha256)[: self._KEY_ID_BYTES]
        self._block_secret = hmac.digest(secret, b"block keys", hashlib.sha256)
        #: Names the key in errors and logs without revealing it.
        self.key_id: str = self._key_id.hex()

    def __repr__(self) -> str:
        return f"StateCipher(key_id={self.key_id!r})"

    def seal(self, data: bytes, context: bytes) -> bytes:
        nonce = os.urandom(self._NONCE_BYTES)
        return self.MAGIC + self._key_id + nonce + self._aead.encrypt(nonce, data, context)

    def open(self, data: bytes, context: bytes) -> bytes:
        """The clear value of ``data`` (as it is when it was never sealed); SealedDataError if it does not open."""
        if not data.startswith(self.MAGIC):
            return data
        head = 1 + self._KEY_ID_BYTES
        key_id, nonce = data[1:head], data[head : head + self._NONCE_BYTES]
        if key_id != self._key_id:
            raise SealedDataError(f"sealed under pii key {key_id.hex()}, but the configured key is {self.key_id}: "
                                  "the key was changed (see README, Personal data: rotating the pii key)")
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(nonce, data[head + self._NONCE_BYTES :], context)
        except InvalidTag:
            raise SealedDataError(f"a value sealed under pii key {self.key_id} fails authentication "
                                  "(altered, or moved from another topic or key)") from None

    def block_key_secret(self) -> SecretStr:
        """A pepper for hashed block keys derived from the same key, for a matcher not given its own."""
        return SecretStr(self._block_secret.hex())


def state_cipher(pii: PiiConfig | None, profile: Profile) -> StateCipher | None:
    """The cipher of the processor's internal topics, or None when they stay in clear.

    ``encrypt_state: auto`` seals when the profile masks (its key is required anyway) or when a key is set
    in production; ``true`` always seals and needs the key (PiiKeyError naming ``pii.key_env``, i.e.
    ``CRMFLOW_PII_KEY`` by default); ``false`` never seals."""
    pii = pii or PiiConfig()
    if pii.encrypt_state is False:
        return None
    if pii.encrypt_state == "auto" and profile == "production":
        key_set = pii.key_file is not None or bool(os.environ.get(pii.key_env, "").strip())
        if not key_set:
            log.warning("the processor's internal topics hold account values in clear: set %s (pii.key_env) to "
                        "seal them", pii.key_env)
            return None
    return StateCipher(pii_key(pii))


# ------------------------------------------------------------------------------ partial display forms


def partial_text(value: str) -> str:
    """First character and ``***``: ``Jane`` → ``J***``."""
    return f"{value[:1]}***"


def partial_email(value: str) -> str:
    """First character of the local part, ``***``, the domain: ``jane@example.com`` → ``j***@example.com``."""
    local, at, domain = value.rpartition("@")
    return f"{local[:1]}***@{domain}" if at and local else partial_text(value)


def partial_phone(value: str) -> str:
    """Only the last 4 digits: ``+14155550123`` → ``*** *** 0123``."""
    digits = "".join(c for c in value if c.isdigit())
    return f"*** *** {digits[-4:]}"


# ------------------------------------------------------------------------------------------ logging

_EMAIL = re.compile(r"(?<![\w.+%-])[\w.+%-]+@(?:[\w-]+\.)+[\w-]+")
# A digit run that may be a phone number: optional + or (, 7-18 digits with up to two separators between
# them; not inside a word, an id, a path, a decimal or a topic[partition]@offset.
_PHONE = re.compile(r"(?<![\w@+.\-/#])(?:\+|\()?\d(?:[ ()./\-]{0,2}\d){6,17}(?![\w@])")
# Digit runs with separators that are not phone numbers: dates (+ hour), compact date-times (20240105-1200),
# IPv4 addresses, decimals and versions, and PostgreSQL LSNs whose hex digits happen to be decimal (4/50000000:
# a high part of one or two digits, never with a leading zero as an area code has it, e.g. 030/1234567).
_NOT_PHONE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?: \d{1,2})?|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|(?:19|20)\d{6}[-_ ]\d{4,6}"
    r"|\d{1,3}(?:\.\d{1,3}){3}|\d+\.\d+|(?:0|[1-9]\d?)/\d{1,8}"
)
_DIGITS = re.compile(r"\d")


def _phone(match: re.Match[str]) -> str:
    text = match[0]
    digits = len(_DIGITS.findall(text))
    if not 7 <= digits <= 15:
        return text
    if text[0] != "+":
        if _NOT_PHONE.fullmatch(text) is not None:
            return text
        if text.isdigit() and digits < 10:  # bare counts and offsets; national numbers have 10+ digits
            return text
    return partial_phone(text)


def scrub_text(text: str) -> str:
    """``text`` with e-mail addresses and phone-like digit runs in their partial forms."""
    if "@" in text:
        text = _EMAIL.sub(lambda m: partial_email(m[0]), text)
    return _PHONE.sub(_phone, text)


class PiiRedactingFilter(logging.Filter):
    """Scrubs e-mail addresses and phone numbers from log records; defence in depth for library logs.

    Install it on a handler (the CLI puts it on the root handler). It formats the message with its args,
    scrubs the result and drops the args, and replaces exception and stack text by their scrubbed form
    (``exc_text``, which formatters print; ``exc_info`` is cleared so no formatter renders the original).
    """

    _formatter: ClassVar[logging.Formatter] = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # args that do not fit msg: keep both, as text
            message = f"{record.msg!s} % {record.args!r}"
        record.msg, record.args = scrub_text(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrub_text(self._formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub_text(record.stack_info)
        return True
