"""What every transform shares: the read-only context it may consult and the whitespace rule.

A transform is a plain function ``f(value, ctx=EMPTY_CONTEXT, /, **params) -> clean value``. It applies
the whitespace rule to a string input, returns None for a missing value (and passes None through), raises
:class:`~processors.exceptions.FieldInvalid` when the value breaks its rule, and never mutates anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ReferenceData:
    """Reference data from the migration config, shared read-only by every record.

    ``rates`` are units of ``base_currency`` per one unit of the keyed currency (EUR: 1.08 means
    1 EUR = 1.08 USD). ``lookups`` are the named lookup tables (key → value); ``folded_lookups`` the same
    tables with case-folded keys.
    """

    base_currency: str = "USD"
    rates: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({"USD": Decimal(1)}))
    lookups: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: _EMPTY)
    folded_lookups: Mapping[str, Mapping[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Case-insensitive lookups are the common case; fold the keys once, not per record.
        folded = {
            name: MappingProxyType({key.casefold(): value for key, value in table.items()})
            for name, table in self.lookups.items()
        }
        object.__setattr__(self, "folded_lookups", MappingProxyType(folded))


class TransformContext(NamedTuple):
    """The record around the value being cleaned.

    ``raw`` holds the record's raw source fields, ``clean`` the target fields cleaned so far (the mapper
    cleans referenced fields first), ``reference`` the config's reference data. Transforms only read it.
    """

    raw: Mapping[str, str | None]
    clean: Mapping[str, Any]
    reference: ReferenceData


EMPTY_CONTEXT = TransformContext(raw=_EMPTY, clean=_EMPTY, reference=ReferenceData())


class Params(BaseModel):
    """Base of every transform's parameter model: frozen, unknown parameters are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoParams(Params):
    """For transforms that take no parameters."""


def clean_text(value: str | None) -> str | None:
    """The whitespace rule: trim, collapse inner runs of whitespace to one space; empty → None.

    Every transform applies it to its string input first (a non-string, e.g. a JSON number, is taken as
    its text), so a transform gets raw source values and no step pays for it twice.
    """
    if value is None:
        return None
    try:
        return " ".join(value.split()) or None
    except AttributeError:
        return " ".join(str(value).split()) or None
