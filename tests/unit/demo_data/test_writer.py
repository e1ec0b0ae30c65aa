"""The CSV sink writes what csv.writer writes, one physical line per row."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest

from crmflow.demo_data.layout import SALES
from crmflow.demo_data.writer import CsvSink

pytestmark = pytest.mark.unit

PIECES = ["plain", "a,b", 'say "hi"', " padded ", "", "Zoë", "\udcfc", "x,", '"', "  ", "tab\there"]


def test_rows_are_written_as_csv_writer_writes_them(tmp_path: Path) -> None:
    rng = random.Random(4)
    rows = [[rng.choice(PIECES) + rng.choice(PIECES) for _ in range(rng.randint(2, 7))] for _ in range(2000)]
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow(SALES.columns)
    with CsvSink(tmp_path / "s.csv", SALES) as sink:
        for i, row in enumerate(rows, start=2):
            assert sink.row(row) == i
            writer.writerow(row)
    assert (tmp_path / "s.csv").read_bytes() == expected.getvalue().encode("utf-8", "surrogateescape")


def test_a_part_starts_at_its_line_without_header(tmp_path: Path) -> None:
    with CsvSink(tmp_path / "p.csv", SALES, header=False, line=41) as sink:
        assert sink.row(["S1", "C1", "1.00", "", ""]) == 42
    assert (tmp_path / "p.csv").read_text() == "S1,C1,1.00,,\n"
