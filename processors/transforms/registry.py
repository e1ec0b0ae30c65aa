"""The transforms a migration config can name, by name.

``TRANSFORMS`` maps each :data:`TransformName` to a :class:`Transform`: the plain function, the pydantic
model of its parameters, and what the mapper and ``crmflow config check`` need to know about it (does it
take several source fields, which parameters name other target fields or reference tables).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from processors.transforms import address, contact, dates, money, text
from processors.transforms.base import NoParams, Params, TransformContext

TransformName = Literal[
    "none", "copy", "trim", "name_case", "upper", "lower", "merge", "join", "split", "parse_date",
    "parse_currency", "convert_currency", "email", "phone_e164", "street", "postal_code",
    "country_iso2", "lookup", "default", "constant",
]  # fmt: skip

TRANSFORM_NAMES: tuple[str, ...] = get_args(TransformName)

#: A transform with its parameters bound: ``bound(value, ctx) -> clean value``.
BoundTransform = Callable[[Any, TransformContext], Any]


@dataclass(frozen=True, slots=True)
class Transform:
    """A registered transform.

    ``takes_many``: the input is the tuple of several source fields (``merge``); every other transform
    takes one value. ``field_refs``: parameters naming other target fields (one name or a list), which
    the mapper cleans first. ``table_refs``: parameters naming a ``reference.lookups`` table.
    ``shorthand``: the parameter a scalar stands for in ``{lookup: priorities}``. ``needs_source``:
    False for transforms that make a value without a source field (``constant``, ``default``, ``join``).
    """

    name: str
    func: Callable[..., Any]
    params: type[Params]
    doc: str
    takes_many: bool = False
    field_refs: tuple[str, ...] = ()
    table_refs: tuple[str, ...] = ()
    shorthand: str | None = None
    needs_source: bool = True

    def validate_params(self, params: Mapping[str, Any] | None) -> Params:
        """The parameters as the transform's model; raises ``pydantic.ValidationError``."""
        return self.params.model_validate(dict(params or {}))

    def bind(self, params: Mapping[str, Any] | None = None) -> BoundTransform:
        """The function with its (validated) parameters bound, ready for the hot path."""
        validated = self.validate_params(params)
        kwargs = {name: getattr(validated, name) for name in type(validated).model_fields}
        return functools.partial(self.func, **kwargs) if kwargs else self.func


def _t(name: str, func: Callable[..., Any], params: type[Params] = NoParams, **extra: Any) -> Transform:
    return Transform(name=name, func=func, params=params, doc=(func.__doc__ or "").strip().splitlines()[0], **extra)


TRANSFORMS: Mapping[str, Transform] = MappingProxyType(
    {
        t.name: t
        for t in (
            _t("none", text.none),
            _t("copy", text.none),
            _t("trim", text.trim),
            _t("name_case", text.name_case),
            _t("upper", text.upper),
            _t("lower", text.lower),
            _t("merge", text.merge, text.MergeParams, takes_many=True, shorthand="sep"),
            _t("join", text.join, text.JoinParams, field_refs=("fields",), shorthand="fields", needs_source=False),
            _t("split", text.split, text.SplitParams),
            _t("parse_date", dates.parse_date, dates.DateParams, shorthand="formats"),
            _t("parse_currency", money.parse_currency, money.CurrencyParams, shorthand="output"),
            _t("convert_currency", money.convert_currency, money.CurrencyParams, shorthand="output"),
            _t("email", contact.email),
            _t("phone_e164", contact.phone_e164, contact.PhoneParams, field_refs=("region_from",)),
            _t("street", address.street, address.CountryRefParams, field_refs=("country_from",)),
            _t("postal_code", address.postal_code, address.PostalCodeParams, field_refs=("country_from",)),
            _t("country_iso2", address.country_iso2, address.CountryParams, table_refs=("table",)),
            _t("lookup", text.lookup, text.LookupParams, table_refs=("table",), shorthand="table"),
            _t("default", text.default, text.ValueParams, shorthand="value", needs_source=False),
            _t("constant", text.constant, text.ValueParams, shorthand="value", needs_source=False),
        )
    }
)


class UnknownTransform(KeyError):  # noqa: N818 - a lookup miss, like KeyError
    """No transform of that name; the message lists the valid names."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown transform {self.name!r}; expected one of: {', '.join(TRANSFORM_NAMES)}"


def get_transform(name: str) -> Transform:
    """The registered transform ``name``; raises :class:`UnknownTransform`."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise UnknownTransform(name) from None


def bind(name: str, params: Mapping[str, Any] | None = None) -> BoundTransform:
    """Shortcut: ``get_transform(name).bind(params)``."""
    return get_transform(name).bind(params)


__all__ = [
    "TRANSFORMS", "TRANSFORM_NAMES", "BoundTransform", "Transform", "TransformName", "UnknownTransform",
    "bind", "get_transform",
]  # fmt: skip
