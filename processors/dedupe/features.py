"""Compact match features of a record: what the ``records`` table keeps per record id.

A feature dict holds the record's clean values under short keys (only the non-null ones), as JSON
types: dates as ISO strings. It is all matching and survivorship need, so neither ever reads the
original record again. Comparison forms (folded names, the first name without middle initials) are
derived on use and cached: names and streets repeat a lot, and storing them would double the state.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import date
from functools import lru_cache
from typing import Any, Final

from processors.dedupe.config import DedupeEntity

Features = dict[str, Any]

#: Target field → feature key, per entity (source is the record metadata field).
FIELDS: Final[dict[DedupeEntity, dict[str, str]]] = {
    "account": {
        "first_name": "fn", "last_name": "ln", "email": "em", "phone": "ph", "street": "st", "city": "ci",
        "postal_code": "pc", "country": "co", "region": "rg", "birth_date": "bd", "customer_since": "cs",
        "source": "src", "national_id": "ni", "tax_id": "tx", "legacy_account_number": "la",
        "company_registration_number": "cr",
    },
    "contact": {
        "first_name": "fn", "last_name": "ln", "email": "em", "phone": "ph", "job_title": "jt",
        "customer_id": "pa", "source": "src", "national_id": "ni", "tax_id": "tx",
    },
}  # fmt: skip
ID_FIELDS: Final[dict[DedupeEntity, str]] = {"account": "customer_id", "contact": "contact_id"}

_ALNUM_RUNS: Final = re.compile(r"[0-9a-z]+")
_STREET_WORDS: Final = {
    "st": "street", "ave": "avenue", "rd": "road", "blvd": "boulevard", "dr": "drive", "ln": "lane",
    "str": "strasse",
}  # fmt: skip
_SOUNDEX: Final = str.maketrans("bfpvcgjkqsxzdtlmnr", "111122222222334556")


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def extract(record: Mapping[str, Any], entity: DedupeEntity, extra: Iterable[str] = ()) -> Features:
    """The feature dict of ``record`` (a clean target entity dict): non-null values under short keys.

    ``extra``: further fields a config compares or blocks on (any mapped field), kept under their own name.
    """
    out: Features = {}
    for field, key in FIELDS[entity].items():
        value = record.get(field)
        if value is not None and value != "":
            out[key] = value.isoformat() if isinstance(value, date) else value  # (_json_value, inline: hot)
    for field in extra:
        value = record.get(field)
        if value is not None and value != "":
            out[feature_key(field, entity)] = _json_value(value)
    return out


def feature_key(field: str, entity: DedupeEntity) -> str:
    """The feature key of a target field: its short key when it has one, else the field name itself."""
    return FIELDS[entity].get(field, field)


@lru_cache(maxsize=1 << 18)
def fold(text: str) -> str:
    """Lower-case ASCII letters and digits, words separated by one space (accents and punctuation gone)."""
    if text.isascii():  # most values: no decomposition to do (casefold is lower on ASCII)
        return " ".join(_ALNUM_RUNS.findall(text.lower()))
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_ALNUM_RUNS.findall(ascii_only.replace("ß", "ss")))


@lru_cache(maxsize=1 << 16)
def first_name_form(first: str) -> str:
    """The folded first name without trailing middle initials: ``John K.`` → ``john``, ``J.`` → ``j``."""
    tokens = fold(first).split()
    while len(tokens) > 1 and len(tokens[-1]) == 1:
        tokens.pop()
    return " ".join(tokens)


@lru_cache(maxsize=1 << 16)
def street_form(street: str) -> str:
    """The folded street with street-type abbreviations expanded (``12 Main St.`` → ``12 main street``).

    The mapper already expands them in clean accounts; other sources (contacts' addresses, a future CDC
    source) may not, and a missed expansion would cost the street its points.
    """
    return " ".join(_STREET_WORDS.get(word, word) for word in fold(street).split())


@lru_cache(maxsize=1 << 16)
def soundex(text: str) -> str:
    """American Soundex of the folded text (letters only); ``""`` when it has no letter."""
    letters = [c for c in fold(text) if "a" <= c <= "z"]
    if not letters:
        return ""
    codes = "".join(letters).translate(_SOUNDEX)
    out = [letters[0].upper()]
    last = codes[0]
    for letter, code in zip(letters[1:], codes[1:], strict=True):
        if code.isdigit() and code != last:
            out.append(code)
            if len(out) == 4:
                break
        if letter not in "hw":  # h and w do not separate two equal codes; vowels do
            last = code
    return "".join(out).ljust(4, "0")


def initial(name: str | None) -> str:
    """First letter of the folded name, or ``""``."""
    return fold(name)[:1] if name else ""


def initials_pair(feats: Features) -> str:
    """Sorted initials of first and last name (``"js"`` for John Smith and for Smith John); ``""`` if none."""
    a, b = initial(feats.get("fn")), initial(feats.get("ln"))
    if not a or not b:
        return ""
    return a + b if a <= b else b + a
