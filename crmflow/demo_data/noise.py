"""How a canonical value is written badly: the quality problems of the legacy CRM.

Each function takes the canonical value and a ``random.Random`` and returns the noisy *source text*.
None of them computes a clean value: the generator keeps the canonical value it started from as the
truth, and the functions here only promise what the contract's cleansing makes of their output
(documented per function).
"""

from __future__ import annotations

import math
import random
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from statistics import NormalDist
from typing import Final

from crmflow.demo_data.pools import name_case

_LOWER: Final = "abcdefghijklmnopqrstuvwxyz"
_CENT: Final = Decimal("0.01")
_NO_UTF8_BYTE: Final = "\udcff"  # surrogate-escaped 0xFF: never valid UTF-8

# Amount spellings of the contract, per currency: (prefix, number style, suffix). Styles: "plain"
# 1234.50, "grouped" 1,234.50, "euro" 1.234,50.
AMOUNT_FORMATS: Final[dict[str, tuple[tuple[str, str, str], ...]]] = {
    "USD": (("$", "grouped", ""), ("", "plain", ""), ("USD ", "plain", "")),
    "EUR": (("", "euro", " EUR"), ("€", "euro", "")),
    "GBP": (("£", "grouped", ""), ("", "plain", " GBP")),
    "CAD": (("CAD ", "plain", ""), ("", "plain", " CAD")),
}
_BAD_AMOUNTS: Final = ("$12.3.4", "1O0.00", "USD 12a.50", "EUR", "--", "12..50 GBP", "€ 1,2,3")


def pad_whitespace(value: str, rng: random.Random) -> str:
    """Stray spaces around ``value`` or a doubled inner space; the whitespace rule undoes them."""
    k = rng.random()
    if k < 0.3 and " " in value:
        i = value.index(" ")
        return value[:i] + "  " + value[i:]
    if k < 0.6:
        return value + " "
    if k < 0.85:
        return " " + value
    return "  " + value + " "


def case_noise(value: str, rng: random.Random) -> str:
    """Upper or lower case; for pooled names and cities name case restores the canonical value."""
    return value.upper() if rng.random() < 0.5 else value.lower()


def typo(name: str, rng: random.Random) -> str:
    """A one-character typo (substitution, transposition, deletion) away from the first letter.

    The result is itself a canonical name (name case is the identity on it); ``name`` is returned
    unchanged when it has no lower-case ASCII letter to change.
    """
    spots = [i for i in range(1, len(name)) if name[i] in _LOWER]
    if not spots:
        return name
    i = rng.choice(spots)
    kind = rng.random()
    if kind < 0.4 and i + 1 < len(name) and name[i + 1] in _LOWER and name[i] != name[i + 1]:
        out = name[:i] + name[i + 1] + name[i] + name[i + 2 :]
    elif kind < 0.7 and len(name) > 3:
        out = name[:i] + name[i + 1 :]
    else:
        out = name[:i] + rng.choice(_LOWER.replace(name[i], "")) + name[i + 1 :]
    return out if name_case(out) == out and out != name else name


def email_case(email: str, rng: random.Random) -> str:
    """Same address, other case (upper, or capitalised parts); lower-casing restores it."""
    if rng.random() < 0.3:
        return email.upper()
    local, _, domain = email.partition("@")
    return ".".join(p[:1].upper() + p[1:] for p in local.split(".")) + "@" + domain.capitalize()


def invalid_email(email: str, rng: random.Random) -> str:
    """An address email-validator rejects: no ``@``, two ``@``, ``..``, a comma, or no dot in the domain."""
    local, _, domain = email.partition("@")
    kind = rng.randrange(5)
    if kind == 0:
        return local + domain
    if kind == 1:
        return local + "@@" + domain
    if kind == 2:
        return local.replace(".", "..", 1) + "@" + domain if "." in local else local + "..x@" + domain
    if kind == 3:
        return local + "@" + domain.replace(".", ",", 1)
    return local + "@" + domain.partition(".")[0]


def invalid_postal(country: str, postal: str) -> str:
    """A postal code that fails its country's pattern after upper-casing and the whitespace rule."""
    if " " in postal:
        return postal.replace(" ", "")
    return postal[:-1]


def date_text(day: date, style: int) -> str:
    """``style`` 0 ISO, 1 ``MM/DD/YYYY``, 2 ``DD.MM.YYYY``: all parse back to ``day``."""
    if style == 1:
        return f"{day.month:02d}/{day.day:02d}/{day.year:04d}"
    if style == 2:
        return f"{day.day:02d}.{day.month:02d}.{day.year:04d}"
    return day.isoformat()


def invalid_date_text(day: date, rng: random.Random) -> str:
    """A date none of the accepted formats parses (day-first slashes, swapped ISO, Feb 30...)."""
    kind = rng.randrange(5)
    if kind == 0:
        return f"{max(day.day, 13):02d}/{day.month:02d}/{day.year:04d}"
    if kind == 1:
        return f"{day.year:04d}-{max(day.day, 13):02d}-{day.month:02d}"
    if kind == 2:
        return f"{day.month:02d}-{day.day:02d}-{day.year:04d}"
    if kind == 3:
        return f"30.02.{day.year:04d}"
    return f"{day.day:02d}.{day.month + 12:02d}.{day.year:04d}"


def amount_text(cents: int, currency: str, rng: random.Random) -> str:
    """``cents`` of ``currency`` in one of the contract's accepted spellings of that currency."""
    formats = AMOUNT_FORMATS[currency]
    prefix, style, suffix = formats[int(rng.random() * len(formats))]
    units, rest = divmod(cents, 100)
    if style == "plain":
        return f"{prefix}{units}.{rest:02d}{suffix}"
    if style == "grouped":
        return f"{prefix}{units:,}.{rest:02d}{suffix}"
    return f"{prefix}{units:,}".replace(",", ".") + f",{rest:02d}{suffix}"


def invalid_amount_text(rng: random.Random) -> str:
    return rng.choice(_BAD_AMOUNTS)


def to_base(cents: int, rate: Decimal) -> Decimal:
    """``cents`` converted with ``rate``, rounded half-up to 2 places (the contract's total_sales)."""
    return (Decimal(cents) * rate / 100).quantize(_CENT, rounding=ROUND_HALF_UP)


def to_base_cents(cents: int, rate: tuple[int, int]) -> int:
    """:func:`to_base` in integers, for the hot path: ``rate`` is ``Decimal.as_integer_ratio()``."""
    num, den = rate
    return (2 * cents * num + den) // (2 * den)


@lru_cache(maxsize=1)
def amount_table(size: int = 4096) -> tuple[int, ...]:
    """Quantiles, in cents, of a log-normal sale amount (median about 55 in the sale's currency)."""
    dist = NormalDist(4.0, 1.2)
    return tuple(min(99 + int(math.exp(dist.inv_cdf((i + 0.5) / size)) * 100), 50_000_000) for i in range(size))


class DateTexts:
    """Every day in a range spelled ISO, ``MM/DD/YYYY`` and ``DD.MM.YYYY``, computed once."""

    def __init__(self, first: date, last: date) -> None:
        self.first = first.toordinal()
        days = [date.fromordinal(o) for o in range(self.first, last.toordinal() + 1)]
        self.iso = tuple(date_text(d, 0) for d in days)
        self.styles = (self.iso, tuple(date_text(d, 1) for d in days), tuple(date_text(d, 2) for d in days))


@lru_cache(maxsize=1)
def date_texts() -> DateTexts:
    """Spellings of 1940-01-01 .. 2025-12-31, the days the demo data uses."""
    return DateTexts(date(1940, 1, 1), date(2025, 12, 31))


def malformed(fields: list[str], rng: random.Random) -> list[str]:
    """The row with one field too many (an unquoted comma in the export) or one or two too few."""
    if rng.random() < 0.5:
        i = rng.randrange(1, len(fields))
        return [*fields[:i], "x", *fields[i:]]
    return fields[: len(fields) - rng.randint(1, 2)]


def mis_encoded(fields: list[str]) -> list[str]:
    """The row as a legacy cp1252 export would write it: its bytes are not valid UTF-8.

    Returned strings carry the raw bytes surrogate-escaped; the CSV sink encodes them with
    ``surrogateescape``. An all-ASCII row gets one stray 0xFF byte.
    """
    out = [f.encode("cp1252", "replace").decode("utf-8", "surrogateescape") for f in fields]
    if not any("\udc80" <= c <= "\udcff" for f in out for c in f):
        out[-1] += _NO_UTF8_BYTE
    return out
