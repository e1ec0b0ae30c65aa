"""Date parsing: the contract's three legacy formats (or the config's list) to ``datetime.date``."""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import lru_cache

from pydantic import Field

from processors.exceptions import FieldInvalid
from processors.transforms.base import EMPTY_CONTEXT, Params, TransformContext, clean_text

#: Slash is always month first, dot always day first (docs/data-contract.md).
DEFAULT_DATE_FORMATS: tuple[str, ...] = ("%m/%d/%Y", "%d.%m.%Y", "%Y-%m-%d")

# Fast equivalents of strptime for the default formats (same leniency: 1- or 2-digit day and month,
# 4-digit year); any other format goes through strptime.
_FAST: dict[str, tuple[re.Pattern[str], tuple[int, int, int]]] = {
    # format: (pattern, group numbers of year, month, day)
    "%m/%d/%Y": (re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})"), (3, 1, 2)),
    "%d.%m.%Y": (re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})"), (3, 2, 1)),
    "%Y-%m-%d": (re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})"), (1, 2, 3)),
}


class DateParams(Params):
    formats: tuple[str, ...] = Field(
        default=DEFAULT_DATE_FORMATS, min_length=1, description="strptime formats, tried in order"
    )


def _try_format(text: str, fmt: str) -> date | None:
    fast = _FAST.get(fmt)
    if fast is None:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            return None
    pattern, (y, m, d) = fast
    match = pattern.fullmatch(text)
    if match is None:
        return None
    year, month, day = match.group(y, m, d)
    try:
        return date(int(year), int(month), int(day))
    except ValueError:  # 02/30/2024: the shape fits, the calendar does not
        return None


# With the default formats the separator alone says which one can fit (their patterns are disjoint).
_BY_SEPARATOR = {"/": "%m/%d/%Y", ".": "%d.%m.%Y", "-": "%Y-%m-%d"}


class _Blank:
    """Cached result for a value that is blank after the whitespace rule (missing, not invalid)."""


_BLANK = _Blank()


@lru_cache(maxsize=32768)
def _parse(raw: str, formats: tuple[str, ...]) -> date | _Blank | None:
    """The parsed date, None if no format fits, ``_BLANK`` if there is nothing after the whitespace rule."""
    text = clean_text(raw)
    if text is None:
        return _BLANK
    if formats == DEFAULT_DATE_FORMATS:
        separator = text[2:3] if text[2:3] in ("/", ".") else text[1:2] if text[1:2] in ("/", ".") else "-"
        return _try_format(text, _BY_SEPARATOR[separator])
    for fmt in formats:
        parsed = _try_format(text, fmt)
        if parsed is not None:
            return parsed
    return None


def parse_date(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    formats: tuple[str, ...] = DEFAULT_DATE_FORMATS,
) -> date | None:
    """Parse a date with the first of ``formats`` that fits; none fits → rule ``date_format``."""
    if value is None:
        return None
    parsed = _parse(value, formats)
    if parsed is None:
        raise FieldInvalid("date_format", "not a date in any accepted format")
    return None if isinstance(parsed, _Blank) else parsed
