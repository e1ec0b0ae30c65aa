"""Money: parse legacy amounts (``$1,234.50``, ``1.234,50 EUR``...) and convert to the base currency.

Accepted: an optional currency marker before and/or after the number – a symbol (``$`` USD, ``US$``,
``€`` EUR, ``£`` GBP, ``C$``/``CA$`` CAD) or an ISO 4217 code (any case) – and an optional ``-`` sign.
The number uses either ``,`` thousands and ``.`` decimals (``1,234.50``) or ``.`` thousands and ``,``
decimals (``1.234,50``); at most two decimals, thousands groups of exactly three digits, so the two
readings never overlap (``1.234`` is one thousand two hundred thirty-four). Two markers must agree. A bare
number is in ``default_currency``. Anything else is rule ``currency_format``.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Literal

from pydantic import Field

from processors.exceptions import FieldInvalid
from processors.transforms.base import EMPTY_CONTEXT, Params, TransformContext, clean_text

CENT = Decimal("0.01")
_ONE = Decimal(1)

SYMBOLS: dict[str, str] = {"$": "USD", "US$": "USD", "€": "EUR", "£": "GBP", "C$": "CAD", "CA$": "CAD"}

_MARKER = r"US\$|CA?\$|[A-Za-z]{3}|[$€£]"
_AMOUNT = re.compile(rf"(?P<pre>{_MARKER})?\s?(?P<sign>-)?\s?(?P<num>\d[\d.,]*)\s?(?P<post>{_MARKER})?")
_US_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d+(?:\.\d{1,2})?")
_EU_NUMBER = re.compile(r"\d{1,3}(?:\.\d{3})+(?:,\d{1,2})?|\d+,\d{1,2}")

Output = Literal["amount", "currency"]


class CurrencyParams(Params):
    default_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$", description="currency of a bare number")
    output: Output = Field(default="amount", description="amount (a Decimal) or currency (ISO 4217 code)")


def _marker_currency(marker: str | None) -> str | None:
    if marker is None:
        return None
    return SYMBOLS.get(marker) or marker.upper()


_NOTHING: tuple[Decimal, str] = (Decimal(0), "")  # blank after the whitespace rule (cached as such)


@lru_cache(maxsize=32768)
def _parse(raw: str, default_currency: str) -> tuple[Decimal, str] | None:
    text = clean_text(raw)
    if text is None:
        return _NOTHING
    match = _AMOUNT.fullmatch(text)
    if match is None:
        return None
    pre = _marker_currency(match["pre"])
    post = _marker_currency(match["post"])
    if pre is not None and post is not None and pre != post:
        return None
    num = match["num"]
    if _US_NUMBER.fullmatch(num):
        digits = num.replace(",", "")
    elif _EU_NUMBER.fullmatch(num):
        digits = num.replace(".", "").replace(",", ".")
    else:
        return None
    amount = Decimal(digits).quantize(CENT, rounding=ROUND_HALF_UP)
    if match["sign"]:
        amount = -amount
    return amount, pre or post or default_currency


def parse_money(text: str, default_currency: str = "USD") -> tuple[Decimal, str] | None:
    """``(amount rounded half-up to 2 places, ISO currency)``, None if blank; else FieldInvalid."""
    parsed = _parse(text, default_currency)
    if parsed is None:
        raise FieldInvalid("currency_format", "not an amount in an accepted format")
    return None if parsed is _NOTHING else parsed


def parse_currency(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    default_currency: str = "USD",
    output: Output = "amount",
) -> Decimal | str | None:
    """The amount (or its currency) as written in the legacy value, before any conversion."""
    parsed = None if value is None else parse_money(value, default_currency)
    if parsed is None:
        return None
    return parsed[0] if output == "amount" else parsed[1]


@lru_cache(maxsize=32768)
def _convert(amount: Decimal, rate: Decimal) -> Decimal:
    return (amount * rate).quantize(CENT, rounding=ROUND_HALF_UP)


def convert_currency(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    default_currency: str = "USD",
    output: Output = "amount",
) -> Decimal | str | None:
    """The amount converted to the base currency with the config's rates, half-up to 2 places.

    ``output: currency`` gives the base currency code (for a ``currency`` field next to the amount).
    A currency without a rate is rule ``currency_format``: the amount cannot be stated in the base.
    """
    parsed = None if value is None else parse_money(value, default_currency)
    if parsed is None:
        return None
    amount, currency = parsed
    reference = ctx.reference
    rate = _ONE if currency == reference.base_currency else reference.rates.get(currency)
    if rate is None:
        raise FieldInvalid("currency_format", "currency has no rate in reference.currency_rates")
    if output == "currency":
        return reference.base_currency
    return _convert(amount, rate)
