"""Text transforms: whitespace, name case, merge/split, defaults, lookups (docs/data-contract.md)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from processors.exceptions import FieldInvalid
from processors.transforms import EMPTY_CONTEXT, ReferenceData, TransformContext, clean_text
from processors.transforms.text import (
    constant,
    default,
    join,
    lookup,
    lower,
    merge,
    name_case,
    none,
    split,
    trim,
    upper,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  John   Smith ", "John Smith"),
        ("\tJohn\n", "John"),
        ("   ", None),
        ("", None),
        (None, None),
        ("a\u00a0 b", "a b"),  # no-break space is whitespace too
    ],
)
def test_whitespace_rule(raw: str | None, clean: str | None) -> None:
    assert clean_text(raw) == clean
    assert trim(raw) == clean


def test_none_is_the_identity() -> None:
    assert none(" x ") == " x "
    assert none(None) is None


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("o'brien", "O'Brien"),
        ("O'BRIEN", "O'Brien"),
        ("anne-marie", "Anne-Marie"),
        ("ANNE-MARIE", "Anne-Marie"),
        ("j.", "J."),
        ("j. r. r.", "J. R. R."),
        ("  mary   ann ", "Mary Ann"),
        ("jürgen müller", "Jürgen Müller"),
        ("van dijk", "Van Dijk"),
        ("McDonald", "Mcdonald"),  # the contract's rule, literally; the generator avoids such names
        ("", None),
        (None, None),
    ],
)
def test_name_case(raw: str | None, clean: str | None) -> None:
    assert name_case(raw) == clean


def test_name_case_is_the_identity_on_canonical_names() -> None:
    for name in ("O'Brien", "Anne-Marie", "J.", "Zoë", "Smith"):
        assert name_case(name) == name


def test_upper_lower() -> None:
    assert upper("  ab  c ") == "AB C"
    assert lower(" AB  C") == "ab c"
    assert upper(" ") is None
    assert lower(None) is None


@pytest.mark.parametrize(
    ("parts", "sep", "merged"),
    [
        (("John", "Smith"), " ", "John Smith"),
        ((" John ", None), " ", "John"),
        ((None, "Smith"), " ", "Smith"),
        (("", "  "), " ", None),
        (("a", "b", "c"), ", ", "a, b, c"),
        (("a", None, "c"), "-", "a-c"),
    ],
)
def test_merge_skips_missing_parts(parts: tuple[str | None, ...], sep: str, merged: str | None) -> None:
    assert merge(parts, sep=sep) == merged


def test_merge_of_nothing() -> None:
    assert merge(None) is None


@pytest.mark.parametrize(
    ("raw", "kwargs", "part"),
    [
        ("John Smith", {}, "John"),
        ("John Smith", {"index": 1}, "Smith"),
        ("Mary Ann Smith", {"index": -1}, "Smith"),
        ("Mary Ann Smith", {"index": 1, "maxsplit": 1}, "Ann Smith"),
        ("Smith, John", {"sep": ",", "index": 1}, "John"),
        ("John", {"index": 1}, None),
        (None, {}, None),
    ],
)
def test_split(raw: str | None, kwargs: dict[str, object], part: str | None) -> None:
    assert split(raw, EMPTY_CONTEXT, **kwargs) == part  # type: ignore[arg-type]


def test_default_and_constant() -> None:
    assert default(None, value="Not Available") == "Not Available"
    assert default("x", value="Not Available") == "x"
    assert constant("x", value="USD") == "USD"
    assert constant(None, value="USD") == "USD"


def _ctx(**tables: dict[str, str]) -> TransformContext:
    return TransformContext(
        raw=MappingProxyType({}), clean=MappingProxyType({}), reference=ReferenceData(lookups=tables)
    )


def test_lookup_is_case_insensitive_by_default() -> None:
    ctx = _ctx(priorities={"P1": "High", "P2": "Medium"})
    assert lookup("p1", ctx, table="priorities") == "High"
    assert lookup("P2", ctx, table="priorities", case_sensitive=True) == "Medium"
    assert lookup(None, ctx, table="priorities") is None


def test_lookup_unknown_value_policies() -> None:
    ctx = _ctx(priorities={"P1": "High"})
    with pytest.raises(FieldInvalid) as err:
        lookup("P9", ctx, table="priorities")
    assert err.value.suffix == "unknown"
    assert "P9" not in str(err.value)  # never the value
    assert lookup("P9", ctx, table="priorities", on_unknown="keep") == "P9"
    assert lookup("P9", ctx, table="priorities", on_unknown="null") is None
    assert lookup("p1", ctx, table="priorities", case_sensitive=True, on_unknown="null") is None


def test_join_reads_cleaned_target_fields() -> None:
    ctx = TransformContext(MappingProxyType({}), MappingProxyType({"first_name": "Anne-Marie", "last_name": None}),
                           ReferenceData())  # fmt: skip
    assert join(None, ctx, fields=("first_name", "last_name")) == "Anne-Marie"
    assert join(None, ctx, fields=("last_name",)) is None
    both = ctx._replace(clean=MappingProxyType({"first_name": "J.", "last_name": "Smith"}))
    assert join(None, both, fields=("first_name", "last_name"), sep=" ") == "J. Smith"
