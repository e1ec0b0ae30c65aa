"""Which lines the legacy-database load takes (no database needed for this part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmflow.demo_data.layout import SOURCE_FILES
from crmflow.demo_data.legacy_db import legacy_columns, loadable_lines

pytestmark = pytest.mark.unit


def test_malformed_and_mis_encoded_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(
        b"A,B,C\n"
        b"1,x,y\n"
        b"2,x\n"  # too few fields
        b"3,x,y,z\n"  # too many
        b"4,M\xfcller,y\n"  # latin-1, not UTF-8
        b'5,"a, quoted",M\xc3\xbcller\n'
        b'6,"unterminated,y\n'
        b"7,,\n"
        b"8,x,y"  # no final newline
    )
    assert list(loadable_lines(path, 3)) == [b"1,x,y\n", b'5,"a, quoted",M\xc3\xbcller\n', b"7,,\n", b"8,x,y\n"]


def test_columns_are_the_headers_in_lower_case() -> None:
    customers = SOURCE_FILES[0]
    assert legacy_columns(customers)[:2] == ("customer_id", "first_name")
    assert all(len(legacy_columns(s)) == len(s.columns) for s in SOURCE_FILES)
