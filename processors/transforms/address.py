"""Addresses: street abbreviations, postal codes checked per country, country names to ISO alpha-2."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pydantic import Field

from processors.exceptions import FieldInvalid
from processors.transforms.base import EMPTY_CONTEXT, Params, TransformContext, clean_text

# --- country ----------------------------------------------------------------------------------------

#: The spellings the contract maps (matched case-insensitively after the whitespace rule).
COUNTRY_ALIASES: dict[str, str] = {
    "us": "US", "usa": "US", "united states": "US",
    "de": "DE", "deutschland": "DE", "germany": "DE",
    "fr": "FR", "france": "FR",
    "nl": "NL", "netherlands": "NL",
    "gb": "GB", "uk": "GB", "united kingdom": "GB",
    "ca": "CA", "canada": "CA",
}  # fmt: skip


class CountryParams(Params):
    table: str | None = Field(
        default=None, description="a reference.lookups table of extra spellings → ISO code (case-insensitive)"
    )


def country_iso2(
    value: str | None, ctx: TransformContext = EMPTY_CONTEXT, /, *, table: str | None = None
) -> str | None:
    """Country name or code → ISO 3166-1 alpha-2; unknown → rule ``country_unknown`` (flag suffix unknown)."""
    text = clean_text(value)
    if text is None:
        return None
    key = text.casefold()
    code = COUNTRY_ALIASES.get(key)
    if code is None and table is not None:
        code = ctx.reference.folded_lookups[table].get(key)
    if code is None:
        raise FieldInvalid("country_unknown", "country not recognised", suffix="unknown")
    return code


def _country(ctx: TransformContext, country: str | None, country_from: str | None) -> str | None:
    if country_from is not None:
        found = ctx.clean.get(country_from)
        if isinstance(found, str):
            return found
    return country


class CountryRefParams(Params):
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$", description="fixed country")
    country_from: str | None = Field(
        default=None, description="target field (cleaned first) holding the record's ISO country"
    )


# --- street -----------------------------------------------------------------------------------------

STREET_ABBREVIATIONS: dict[str, str] = {
    "st": "Street", "ave": "Avenue", "rd": "Road", "blvd": "Boulevard", "dr": "Drive", "ln": "Lane",
}  # fmt: skip
#: Only expanded when the record's country is DE.
GERMAN_ABBREVIATIONS: dict[str, str] = {"str": "Straße"}

# A whole word: after the start or a space, before a space, a comma or the end; optional trailing dot.
_WORD = r"(?<!\S)({})\.?(?=[\s,]|\Z)"
_STREET = re.compile(_WORD.format("|".join(STREET_ABBREVIATIONS)), re.IGNORECASE)
_STREET_DE = re.compile(_WORD.format("|".join({**STREET_ABBREVIATIONS, **GERMAN_ABBREVIATIONS})), re.IGNORECASE)
_DE_WORDS = {**STREET_ABBREVIATIONS, **GERMAN_ABBREVIATIONS}


def _expand(match: re.Match[str]) -> str:
    return _DE_WORDS[match[1].lower()]


@lru_cache(maxsize=32768)
def _street(text: str, german: bool) -> str:
    return (_STREET_DE if german else _STREET).sub(_expand, text)


def street(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    country: str | None = None,
    country_from: str | None = None,
) -> str | None:
    """Whitespace rule; St/Ave/Rd/Blvd/Dr/Ln (and Str in DE) expanded as whole words, any case, dot or not."""
    text = clean_text(value)
    if text is None:
        return None
    return _street(text, _country(ctx, country, country_from) == "DE")


# --- postal code ------------------------------------------------------------------------------------

POSTAL_CODE_PATTERNS: dict[str, re.Pattern[str]] = {
    "US": re.compile(r"\d{5}(?:-\d{4})?"),
    "CA": re.compile(r"[A-Z]\d[A-Z] \d[A-Z]\d"),
    "DE": re.compile(r"\d{5}"),
    "FR": re.compile(r"\d{5}"),
    "NL": re.compile(r"\d{4} [A-Z]{2}"),
    # Outward code (A9, A99, AA9, AA99, A9A, AA9A), one space, inward code (9AA).
    "GB": re.compile(r"[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}"),
}


class PostalCodeParams(CountryRefParams):
    unknown_country: Literal["keep", "invalid"] = Field(
        default="keep", description="no country or no pattern for it: keep the code unchecked, or invalid"
    )


def postal_code(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    country: str | None = None,
    country_from: str | None = None,
    unknown_country: Literal["keep", "invalid"] = "keep",
) -> str | None:
    """Whitespace rule, upper case, checked against the country's pattern; mismatch → ``postal_code_format``."""
    text = clean_text(value)
    if text is None:
        return None
    code = text.upper()
    country_code = _country(ctx, country, country_from)
    pattern = POSTAL_CODE_PATTERNS.get(country_code) if country_code is not None else None
    if pattern is None:
        if unknown_country == "keep":
            return code
        raise FieldInvalid("postal_code_format", "no postal code pattern for the record's country")
    if pattern.fullmatch(code) is None:
        raise FieldInvalid("postal_code_format", "postal code does not fit the country's pattern")
    return code
