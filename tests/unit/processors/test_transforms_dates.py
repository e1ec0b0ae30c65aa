"""parse_date: MM/DD/YYYY, DD.MM.YYYY, YYYY-MM-DD → datetime.date; anything else is date_format."""

from __future__ import annotations

from datetime import date

import pytest

from processors.exceptions import FieldInvalid
from processors.transforms import EMPTY_CONTEXT
from processors.transforms.dates import parse_date

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("03/04/1980", date(1980, 3, 4)),  # slash: month first
        ("12/31/2023", date(2023, 12, 31)),
        ("04.03.1980", date(1980, 3, 4)),  # dot: day first
        ("31.12.2023", date(2023, 12, 31)),
        ("1980-03-04", date(1980, 3, 4)),
        ("02/29/2024", date(2024, 2, 29)),
        ("  2023-12-31 ", date(2023, 12, 31)),
        ("3/4/1980", date(1980, 3, 4)),  # strptime's leniency: one-digit day and month
    ],
)
def test_accepted_formats(raw: str, expected: date) -> None:
    assert parse_date(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "13/05/2020",  # day-first with slashes: month 13
        "2020-13-05",  # swapped ISO
        "05-20-2020",  # dashes, month first
        "30.02.2020",  # Feb 30
        "20.14.2020",
        "02/29/2023",  # not a leap year
        "12/31/99",  # two-digit year
        "2020/12/31",
        "yesterday",
        "N/A",
        "31-12-2023",
        "2023-12-31T10:00:00",
        "20231231",
    ],
)
def test_garbage_is_date_format(raw: str) -> None:
    with pytest.raises(FieldInvalid) as err:
        parse_date(raw)
    assert err.value.rule == "date_format"
    assert raw not in str(err.value)


def test_missing_is_none() -> None:
    assert parse_date(None) is None
    assert parse_date("  ") is None


def test_formats_parameter_restricts_and_extends() -> None:
    us_only = ("%m/%d/%Y",)
    assert parse_date("03/04/1980", EMPTY_CONTEXT, formats=us_only) == date(1980, 3, 4)
    with pytest.raises(FieldInvalid):
        parse_date("1980-03-04", EMPTY_CONTEXT, formats=us_only)
    assert parse_date("04 Mar 1980", EMPTY_CONTEXT, formats=("%d %b %Y",)) == date(1980, 3, 4)
