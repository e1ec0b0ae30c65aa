"""The masking policies as plain functions of one value, built once per field by :func:`mask_function`.

Each built function takes a non-null value of its field (as the mapper produced it: ``str``, or
``datetime.date`` for dates) and returns the masked value, which fits the same field of the entity model
and the Avro schema. What fits which field is checked when the config loads (:mod:`crmflow.pii`).

Format-preserving schemes (all derived from the keyed HMAC of the whole value, so deterministic):

- e-mail: ``<pseudonym>@<domain pseudonym>.example.com``. The local part is the pseudonym of the whole
  address; the domain is pseudonymised on its own, so addresses of one company still share a domain. A
  subdomain of example.com (RFC 2606) can never deliver mail to a real person and, unlike ``.invalid``,
  passes the e-mail syntax check of the data contract (``email-validator``). ``email_domain: keep`` keeps
  the real domain instead.
- phone: E.164 with the same country code, the same length and the same first national digit (the number
  type: mobile or fixed line in most plans); the other digits come from the HMAC. It is a well-formed
  number, deliberately not checked against the numbering plan: it may be unassigned, never a real
  person's number on purpose.
- postal code: every digit replaced by a digit and every letter by a letter, separators kept, so the code
  keeps its country's shape (``SW1A 1AA`` → ``QK7E 4TZ``; US ZIP+4 keeps its hyphen).
- date: the same year, moved by 1 to 364 (365) days within that year, wrapping around; never the same day.
- name: a letters-only, capitalised pseudonym (``Kqzvmbtexlap``), as the name pseudonym is anyway.
"""

from __future__ import annotations

from calendar import isleap
from collections.abc import Callable
from datetime import date
from functools import lru_cache
from typing import Any, Final

import phonenumbers

from crmflow.pii import FieldKind, PiiConfig, Policy, partial_email, partial_text
from processors.masking.keyed import KeyedHash, base32_token, letters_token

MaskFn = Callable[[Any], Any]

#: Values of these kinds repeat a lot (first names, birth dates, postal codes): their masks are cached.
CACHE_SIZE: Final = 32768
_DOMAINS: Final[dict[FieldKind, bytes]] = {
    "name": b"name\0", "email": b"email\0", "phone": b"phone\0", "postal": b"postal\0", "date": b"date\0",
    "text": b"text\0",
}  # fmt: skip
_EMAIL_DOMAIN: Final = b"email-domain\0"
_DIGITS: Final = "0123456789"
_COUNTRY_CODES: Final = frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
#: The first three digits of an E.164 number → the length of its country code (codes are prefix-free).
_COUNTRY_CODE_SIZE: Final = {
    f"{n:03d}": size for n in range(100, 1000) for size in (1, 2, 3) if f"{n:03d}"[:size] in _COUNTRY_CODES
}
_POWERS: Final = tuple(10**n for n in range(16))
_UPPER: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mask_function(
    policy: Policy, kind: FieldKind, keyed: KeyedHash, pii: PiiConfig, *, token: str | None = None, prefix: str = ""
) -> MaskFn | None:
    """The mask of one field; None for ``keep``."""
    if policy == "keep":
        return None
    if policy == "redact":
        return lambda _value: token
    if policy == "partial":
        return _PARTIAL.get(kind, partial_text)
    if policy == "pseudonym":
        return pseudonym(kind, keyed, pii.pseudonym_length, prefix)
    return format_preserving(kind, keyed, pii)


def pseudonym(kind: FieldKind, keyed: KeyedHash, length: int, prefix: str = "") -> MaskFn:
    """``prefix`` + base32 of the HMAC; for names a capitalised letters-only pseudonym (``Kqzvmbtexlap``)."""
    domain = _DOMAINS[kind]
    mac = keyed.mac
    if kind == "name":  # a name's format is a capitalised word: pseudonym and format_preserving coincide
        return lru_cache(CACHE_SIZE)(lambda value: prefix + letters_token(mac(domain, value), length).capitalize())
    return lambda value: prefix + base32_token(mac(domain, value), length)


def format_preserving(kind: FieldKind, keyed: KeyedHash, pii: PiiConfig) -> MaskFn:
    """The format-preserving mask of a field of ``kind`` (email, phone, postal, date or name)."""
    number = keyed.number
    if kind == "email":
        return _email(keyed, pii.pseudonym_length, keep_domain=pii.email_domain == "keep")
    if kind == "phone":
        return lambda value: _phone(keyed.mac(_DOMAINS["phone"], value), value)
    if kind == "postal":
        return lru_cache(CACHE_SIZE)(lambda value: _postal(number(_DOMAINS["postal"], value), value))
    if kind == "date":
        return lru_cache(CACHE_SIZE)(lambda value: _date(keyed, value))
    if kind == "name":
        return pseudonym("name", keyed, pii.pseudonym_length)
    raise ValueError(f"no format-preserving mask for a {kind} field")  # the config check rules this out


def _email(keyed: KeyedHash, length: int, *, keep_domain: bool) -> MaskFn:
    mac, local_domain = keyed.mac, _DOMAINS["email"]

    @lru_cache(CACHE_SIZE)
    def domain_pseudonym(domain: str) -> str:
        return f"{base32_token(mac(_EMAIL_DOMAIN, domain), 8)}.example.com"

    def email(value: str) -> str:
        domain = value.rpartition("@")[2]
        masked_domain = domain if keep_domain and domain else domain_pseudonym(domain)
        return f"{base32_token(mac(local_domain, value), length)}@{masked_domain}"

    return email


def _phone(mac: bytes, value: str) -> str | None:
    """Same country code, length and first national digit; None (fail closed) if ``value`` is not E.164."""
    digits = value[1:]
    size = _COUNTRY_CODE_SIZE.get(digits[:3])
    rest = len(digits) - (size or 0) - 1
    if size is None or rest < 1 or value[0] != "+" or not digits.isdigit():
        return None
    # 64 bits of the MAC modulo at most 10**13: uneven by less than 2**-20.
    return f"+{digits[: size + 1]}{str(int.from_bytes(mac[:8], 'big') % _POWERS[rest]).zfill(rest)}"


def _postal(number: int, value: str) -> str:
    out = []
    for char in value:
        if "0" <= char <= "9":
            number, digit = divmod(number, 10)
            out.append(_DIGITS[digit])
        elif char.isalpha():
            number, letter = divmod(number, 26)
            out.append(_UPPER[letter] if char.isupper() else _UPPER[letter].lower())
        else:
            out.append(char)
    return "".join(out)


def _date(keyed: KeyedHash, value: date | str) -> date | str:
    if isinstance(value, str):  # an ISO date held as text
        masked = _date(keyed, date.fromisoformat(value))
        assert isinstance(masked, date)
        return masked.isoformat()
    first = date(value.year, 1, 1).toordinal()
    days = 366 if isleap(value.year) else 365
    shift = 1 + keyed.number(_DOMAINS["date"], value.isoformat()) % (days - 1)
    return date.fromordinal(first + (value.toordinal() - first + shift) % days)


def _partial_date(value: date | str) -> date | str:
    """1 January of the year: the year survives, the day does not."""
    if isinstance(value, str):
        return f"{value[:4]}-01-01"
    return date(value.year, 1, 1)


_PARTIAL: Final[dict[FieldKind, MaskFn]] = {"email": partial_email, "date": _partial_date}
