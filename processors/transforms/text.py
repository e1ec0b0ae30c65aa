"""Text transforms: identity, whitespace, case, merge/split, defaults, constants and table lookups."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field

from processors.exceptions import FieldInvalid
from processors.transforms.base import EMPTY_CONTEXT, Params, TransformContext, clean_text

_NAME_SEPARATORS = re.compile(r"([ \-'])")


def none(value: Any, ctx: TransformContext = EMPTY_CONTEXT, /) -> Any:
    """No transformation (a field without transforms still gets the whitespace rule from the mapper)."""
    return value


def trim(value: str | None, ctx: TransformContext = EMPTY_CONTEXT, /) -> str | None:
    """The whitespace rule: trim, collapse inner whitespace; empty → None."""
    return clean_text(value)


@lru_cache(maxsize=65536)
def _name_case(raw: str) -> str | None:
    text = clean_text(raw)
    if text is None:
        return None
    return "".join(part[:1].upper() + part[1:].lower() for part in _NAME_SEPARATORS.split(text))


def name_case(value: str | None, ctx: TransformContext = EMPTY_CONTEXT, /) -> str | None:
    """Whitespace rule, then each word upper-case first, lower-case rest; words split at space, - and '.

    ``o'brien`` → ``O'Brien``, ``anne-marie`` → ``Anne-Marie``, ``j.`` → ``J.``.
    """
    return None if value is None else _name_case(value)


def upper(value: str | None, ctx: TransformContext = EMPTY_CONTEXT, /) -> str | None:
    """Whitespace rule, then upper case."""
    text = clean_text(value)
    return None if text is None else text.upper()


def lower(value: str | None, ctx: TransformContext = EMPTY_CONTEXT, /) -> str | None:
    """Whitespace rule, then lower case."""
    text = clean_text(value)
    return None if text is None else text.lower()


class MergeParams(Params):
    sep: str = " "


def merge(
    value: Sequence[str | None] | None, ctx: TransformContext = EMPTY_CONTEXT, /, *, sep: str = " "
) -> str | None:
    """Join several source fields with ``sep``, skipping missing (or blank) parts; all missing → None."""
    if value is None:
        return None
    parts = [text for text in map(clean_text, value) if text is not None]
    return sep.join(parts) if parts else None


class JoinParams(Params):
    fields: tuple[str, ...] = Field(min_length=1, description="target fields (cleaned first) to join")
    sep: str = " "


def join(
    current: Any, ctx: TransformContext = EMPTY_CONTEXT, /, *, fields: tuple[str, ...], sep: str = " "
) -> str | None:
    """Join already cleaned target fields (full_name = first_name + " " + last_name), skipping missing ones."""
    clean = ctx.clean
    parts = [part for part in (clean.get(name) for name in fields) if part is not None]
    return sep.join(map(str, parts)) if parts else None


class SplitParams(Params):
    sep: str | None = Field(default=None, description="separator; None splits at runs of whitespace")
    index: int = Field(default=0, description="which part to keep; negative counts from the end")
    maxsplit: int = Field(default=-1, description="at most this many splits (1 keeps the rest together)")


def split(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    sep: str | None = None,
    index: int = 0,
    maxsplit: int = -1,
) -> str | None:
    """One part of a field split at ``sep``; a part that does not exist is missing (None)."""
    if value is None:
        return None
    parts = value.split(sep, maxsplit)
    try:
        return clean_text(parts[index])
    except IndexError:
        return None


class ValueParams(Params):
    value: Any = Field(description="the value to use")


def default(current: Any, ctx: TransformContext = EMPTY_CONTEXT, /, *, value: Any) -> Any:
    """``value`` when the input is missing (None or blank), else the input."""
    if isinstance(current, str):
        current = clean_text(current)
    return value if current is None else current


def constant(current: Any, ctx: TransformContext = EMPTY_CONTEXT, /, *, value: Any) -> Any:
    """Always ``value``, whatever the input."""
    return value


class LookupParams(Params):
    table: str = Field(description="name of a table under reference.lookups")
    case_sensitive: bool = False
    on_unknown: Literal["flag", "keep", "null"] = Field(
        default="flag", description="a value not in the table: null + flag <field>_unknown, keep it, or null"
    )


def lookup(
    value: str | None,
    ctx: TransformContext = EMPTY_CONTEXT,
    /,
    *,
    table: str,
    case_sensitive: bool = False,
    on_unknown: Literal["flag", "keep", "null"] = "flag",
) -> str | None:
    """Replace the value by its entry in a reference lookup table."""
    text = clean_text(value)
    if text is None:
        return None
    if case_sensitive:
        found = ctx.reference.lookups[table].get(text)
    else:
        found = ctx.reference.folded_lookups[table].get(text.casefold())
    if found is not None:
        return found
    if on_unknown == "flag":
        raise FieldInvalid("lookup", f"value not in lookup table {table!r}", suffix="unknown")
    return text if on_unknown == "keep" else None
