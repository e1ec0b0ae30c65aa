"""``--rate name=value`` overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crmflow.demo_data import QualityRates, parse_rate_overrides, rate_names
from crmflow.demo_data.exceptions import InvalidRateError, UnknownRateError

pytestmark = pytest.mark.unit


def test_overrides_apply_and_keep_the_rest() -> None:
    rates = parse_rate_overrides(["duplicate=0.25", " orphan = 0 "])
    assert rates.duplicate == 0.25 and rates.orphan == 0.0
    assert rates.phone_format == QualityRates().phone_format


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownRateError) as err:
        parse_rate_overrides(["dupes=0.1"])
    assert "dupes" in str(err.value)
    assert all(name in str(err.value) for name in rate_names())


@pytest.mark.parametrize("item", ["duplicate", "duplicate=x", "=0.1", "duplicate=1.5", "duplicate=-0.1"])
def test_bad_overrides(item: str) -> None:
    with pytest.raises(InvalidRateError):
        parse_rate_overrides([item])


def test_rates_are_frozen_and_strict() -> None:
    rates = QualityRates()
    with pytest.raises(ValidationError):
        rates.duplicate = 0.5
    with pytest.raises(ValidationError):
        QualityRates(dupes=0.1)  # type: ignore[call-arg]
