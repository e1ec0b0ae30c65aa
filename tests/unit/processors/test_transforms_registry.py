"""The transform registry: names, parameter models, binding."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from processors.transforms import EMPTY_CONTEXT, TRANSFORMS, TransformName, UnknownTransform, bind, get_transform

pytestmark = pytest.mark.unit

REQUIRED = {
    "none", "copy", "trim", "name_case", "upper", "lower", "merge", "split", "parse_date", "parse_currency",
    "convert_currency", "email", "phone_e164", "street", "postal_code", "country_iso2", "lookup", "default",
    "constant",
}  # fmt: skip


def test_literal_and_registry_agree() -> None:
    assert set(get_args(TransformName)) == set(TRANSFORMS)
    assert set(TRANSFORMS) >= REQUIRED


def test_every_transform_passes_missing_through_or_makes_a_value() -> None:
    for name, transform in TRANSFORMS.items():
        if name in ("default", "constant"):
            assert bind(name, {"value": "x"})(None, EMPTY_CONTEXT) == "x"
        elif name == "join":
            assert bind(name, {"fields": ["a"]})(None, EMPTY_CONTEXT) is None
        elif name == "lookup":
            assert bind(name, {"table": "t"})(None, EMPTY_CONTEXT) is None
        else:
            assert transform.bind()(None, EMPTY_CONTEXT) is None, name
        assert transform.doc, name


def test_unknown_transform_lists_the_valid_names() -> None:
    with pytest.raises(UnknownTransform) as err:
        get_transform("mege")
    assert "unknown transform 'mege'" in str(err.value)
    assert "merge" in str(err.value)


def test_bind_validates_parameters() -> None:
    assert bind("merge", {"sep": "-"})(("a", "b"), EMPTY_CONTEXT) == "a-b"
    with pytest.raises(ValidationError):
        bind("merge", {"sepp": "-"})
    with pytest.raises(ValidationError):
        bind("parse_currency", {"output": "cents"})
    with pytest.raises(ValidationError):
        bind("phone_e164", {"region": "usa"})


def test_metadata_for_the_mapper() -> None:
    assert TRANSFORMS["merge"].takes_many
    assert not TRANSFORMS["trim"].takes_many
    assert TRANSFORMS["phone_e164"].field_refs == ("region_from",)
    assert TRANSFORMS["lookup"].table_refs == ("table",)
    assert not TRANSFORMS["constant"].needs_source
