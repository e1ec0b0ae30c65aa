"""Contact details: e-mail (email-validator syntax rules) and phone numbers (phonenumbers, E.164).

Both libraries cost 20-50 µs a call, which alone would eat the per-record budget, so each has a fast path
that only ever accepts what the library accepts; anything the fast path is unsure of, and every
rejection, is decided by the library itself (phone: see ``processors/transforms/phone.py``).
``tests/unit/processors/test_transforms_contact.py`` checks the fast paths against the libraries.
"""

from __future__ import annotations

import re
from functools import lru_cache

import email_validator
from pydantic import Field

from processors.exceptions import FieldInvalid
from processors.transforms.base import EMPTY_CONTEXT, Params, TransformContext, clean_text
from processors.transforms.phone import to_e164

# --- e-mail -----------------------------------------------------------------------------------------

# A strict subset of what email-validator accepts (no deliverability check): ASCII dot-atom local part,
# LDH host labels (no "--", so no Punycode), a letters-only TLD, RFC length limits.
_SIMPLE_EMAIL = re.compile(
    r"[a-z0-9_+\-]{1,64}(?:\.[a-z0-9_+\-]+)*@(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)
_SPECIAL_USE_DOMAINS = frozenset(email_validator.SPECIAL_USE_DOMAIN_NAMES)
# email-validator rejects a special-use name as the domain or any suffix of it.
_SPECIAL_USE_ARE_LABELS = all("." not in d for d in _SPECIAL_USE_DOMAINS)


def _simple_email_ok(address: str) -> bool:
    if len(address) > 254 or _SIMPLE_EMAIL.fullmatch(address) is None:
        return False
    local, _, domain = address.rpartition("@")
    if len(local) > 64 or "--" in domain:
        return False
    if _SPECIAL_USE_ARE_LABELS:
        return domain.rpartition(".")[2] not in _SPECIAL_USE_DOMAINS
    labels = domain.split(".")
    return not any(".".join(labels[i:]) in _SPECIAL_USE_DOMAINS for i in range(len(labels)))


def _email_ok(address: str) -> bool:
    if _simple_email_ok(address):
        return True
    try:
        email_validator.validate_email(address, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return False
    return True


@lru_cache(maxsize=16384)
def _email(raw: str) -> tuple[str | None, bool]:
    """``(address, valid)``; address None when there is nothing after the whitespace rule."""
    text = clean_text(raw)
    if text is None:
        return None, True
    address = text.lower()
    return address, _email_ok(address)


def email(value: str | None, ctx: TransformContext = EMPTY_CONTEXT, /) -> str | None:
    """Whitespace rule, lower case, email-validator syntax check; invalid → rule ``email_format``."""
    if value is None:
        return None
    address, valid = _email(value)
    if not valid:
        raise FieldInvalid("email_format", "not a syntactically valid e-mail address")
    return address


# --- phone ------------------------------------------------------------------------------------------


class PhoneParams(Params):
    region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$", description="default region for national numbers")
    region_from: str | None = Field(
        default=None, description="target field (cleaned first) whose value is the default region"
    )


def phone_e164(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    region: str | None = None,
    region_from: str | None = None,
) -> str | None:
    """Parse with phonenumbers (default region: the ``region_from`` field, else ``region``), to E.164.

    Not parseable or not a valid number → rule ``phone_format``.
    """
    text = clean_text(value)
    if text is None:
        return None
    default_region = region
    if region_from is not None:
        default_region = ctx.clean.get(region_from) or region
    e164 = to_e164(text, default_region)
    if e164 is None:
        raise FieldInvalid("phone_format", "not a valid phone number for the record's country")
    return e164
