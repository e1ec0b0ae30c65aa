"""Contact details: e-mail (email-validator syntax rules) and phone numbers (phonenumbers, E.164).

Both libraries cost 20-50 µs a call, which alone would eat the per-record budget, so each has a fast path
that only ever accepts what the library accepts; anything the fast path is unsure of, and every
rejection, is decided by the library itself (phone: see ``processors/transforms/phone.py``).
``tests/unit/processors/test_transforms_contact.py`` checks the fast paths against the libraries.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

import email_validator
from pydantic import Field

from processors.exceptions import FieldFlagged, FieldInvalid
from processors.transforms.base import EMPTY_CONTEXT, Params, TransformContext, clean_text
from processors.transforms.phone import parse_e164

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


#: What ``phone_e164`` does with a vanity number (letters for digits, ``030 CALL NOW``).
VanityPolicy = Literal["reject", "flag", "convert"]


class PhoneParams(Params):
    region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$", description="default region for national numbers")
    region_from: str | None = Field(
        default=None, description="target field (cleaned first) whose value is the default region"
    )
    vanity: VanityPolicy = Field(
        default="flag",
        description="a number written with letters (030 CALL NOW): flag (convert to digits, flag "
        "<field>_vanity), convert (digits, no flag) or reject (an invalid value, rule phone_vanity)",
    )


def phone_e164(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    region: str | None = None,
    region_from: str | None = None,
    vanity: VanityPolicy = "flag",
) -> str | None:
    """Parse with phonenumbers (default region: the ``region_from`` field, else ``region``), to E.164.

    Not parseable or not a valid number → rule ``phone_format``. A vanity number (three or more letters
    standing for keypad digits: ``030 CALL NOW`` → ``+49302255669``) is handled per ``vanity``:

    - ``flag`` (default): converted to digits and kept, with the quality flag ``<field>_vanity``;
    - ``convert``: converted to digits and kept, no flag;
    - ``reject``: an invalid value, rule ``phone_vanity``: the field's ``invalid:`` policy applies (flag:
      null plus ``<field>_invalid``; reject: the record is dead-lettered), as for any invalid number.

    Config: ``{phone_e164: {region_from: country, vanity: reject}}``; any other ``vanity`` value is a
    config error naming the parameter.
    """
    text = clean_text(value)
    if text is None:
        return None
    default_region = region
    if region_from is not None:
        default_region = ctx.clean.get(region_from) or region
    e164, is_vanity = parse_e164(text, default_region)
    if e164 is None:
        raise FieldInvalid("phone_format", "not a valid phone number for the record's country")
    if is_vanity and vanity != "convert":
        if vanity == "reject":
            raise FieldInvalid("phone_vanity", "a vanity number (letters for digits); the config rejects them")
        raise FieldFlagged(e164, "vanity")
    return e164
