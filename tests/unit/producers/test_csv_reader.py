"""The CSV reader on crafted files: rejects per line, physical line numbers, resume marks."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest

from producers.exceptions import SourceOpenError
from producers.readers import CsvReader, FileMark, Item, Record, Rejected
from producers.readers.csvfile import ends_in_quotes

pytestmark = pytest.mark.unit

HEADER = b"Customer_ID,First_Name,City\n"


def write(tmp_path: Path, body: bytes, name: str = "customers.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(body)
    return path


def fmark(item: Item) -> FileMark:
    assert isinstance(item.mark, FileMark)
    return item.mark


def read_all(path: Path, key: str = "Customer_ID", start: FileMark | None = None, **dialect: str) -> list[Item]:
    with CsvReader(path, key=key, start=start, **dialect) as reader:  # type: ignore[arg-type]
        return list(reader)


def test_good_lines_keep_raw_values_and_positions(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + b"C1, Ann ,Berlin\nC2,,\n")
    items = read_all(path)
    assert items == [
        Record("C1", "customers.csv:2", {"Customer_ID": "C1", "First_Name": " Ann ", "City": "Berlin"}, items[0].mark),
        Record("C2", "customers.csv:3", {"Customer_ID": "C2", "First_Name": "", "City": ""}, items[1].mark),
    ]
    assert items[-1].mark == FileMark(offset=path.stat().st_size, line=4)


def test_wrong_field_count_rejects_that_line_only(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + b"C1,Ann,Berlin\nC2,Bob,Paris,extra\nC3,Cy\nC4,Di,Rome\n")
    items = read_all(path)
    assert [type(i).__name__ for i in items] == ["Record", "Rejected", "Rejected", "Record"]
    bad = items[1]
    assert isinstance(bad, Rejected)
    assert (bad.position, bad.rule, bad.error) == ("customers.csv:3", "csv_malformed", "expected 3 fields, found 4")
    assert bad.raw == b"C2,Bob,Paris,extra\n"
    assert isinstance(items[2], Rejected) and items[2].position == "customers.csv:4"
    assert isinstance(items[3], Record) and items[3].position == "customers.csv:5"


def test_invalid_utf8_rejects_with_encoding_rule_and_no_value_in_error(tmp_path: Path) -> None:
    # Declared UTF-8 (undeclared, a file whose only non-ASCII line is cp1252 would be read as cp1252).
    path = write(tmp_path, HEADER + b"C1,Ann,Berlin\nC2,J\xf6rg,K\xf6ln\nC3,Cy,Rome\n")
    items = read_all(path, encoding="utf-8")
    bad = items[1]
    assert isinstance(bad, Rejected)
    assert (bad.position, bad.rule) == ("customers.csv:3", "encoding")
    assert "offset 4" in bad.error and "rg" not in bad.error
    assert bad.raw == b"C2,J\xf6rg,K\xf6ln\n"
    assert [i.position for i in items if isinstance(i, Record)] == ["customers.csv:2", "customers.csv:4"]


def test_quoted_comma_and_escaped_quote(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + b'C1,"Smith, Ann","the ""Big"" City"\n')
    (item,) = read_all(path)
    assert isinstance(item, Record)
    assert item.fields == {"Customer_ID": "C1", "First_Name": "Smith, Ann", "City": 'the "Big" City'}


def test_quoted_newline_spans_physical_lines(tmp_path: Path) -> None:
    body = HEADER + b'C1,Ann,Berlin\nC2,"Bob\nthe second\nline",Paris\nC3,Cy,Rome\n'
    path = write(tmp_path, body)
    items = read_all(path)
    assert [i.position for i in items] == ["customers.csv:2", "customers.csv:3", "customers.csv:6"]
    assert isinstance(items[1], Record)
    assert items[1].fields["First_Name"] == "Bob\nthe second\nline"
    assert items[1].mark == FileMark(offset=body.index(b"C3"), line=6)


def test_crlf_line_endings_and_bom(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfCustomer_ID,First_Name,City\r\nC1,Ann,Berlin\r\nC2,\"A\r\nB\",X\r\n")
    items = read_all(path)
    assert [i.fields for i in items if isinstance(i, Record)] == [
        {"Customer_ID": "C1", "First_Name": "Ann", "City": "Berlin"},
        {"Customer_ID": "C2", "First_Name": "A\r\nB", "City": "X"},
    ]


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + b"C1,Ann,Berlin\n\nC2,Bob,Paris")  # no final newline
    items = read_all(path)
    assert [i.position for i in items] == ["customers.csv:2", "customers.csv:4"]


def test_unterminated_quote_at_end_of_file(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + b'C1,Ann,Berlin\nC2,"Bob,Paris\nC3,Cy,Rome\n')
    items = read_all(path)
    assert isinstance(items[1], Rejected)
    assert (items[1].position, items[1].rule) == ("customers.csv:3", "csv_malformed")
    assert "not closed" in items[1].error
    assert fmark(items[1]).line == 5


def test_runaway_quote_is_bounded(tmp_path: Path) -> None:
    rows = b"".join(b"C%d,Ann,Berlin\n" % i for i in range(10, 30))
    path = write(tmp_path, HEADER + b'C1,"Bob,Paris\n' + rows)
    with CsvReader(path, key="Customer_ID", max_record_lines=5) as reader:
        items = list(reader)
    assert isinstance(items[0], Rejected) and items[0].position == "customers.csv:2"
    assert fmark(items[0]).line == 7  # lines 2-6 were swallowed by the open quote, then given up
    assert all(isinstance(i, Record) for i in items[1:])
    assert items[1].position == "customers.csv:7"


def test_stray_quote_inside_unquoted_field_is_literal(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + b'C1,O"Brien,Cork\nC2,Ann,Berlin\n')
    items = read_all(path)
    assert [i.fields["First_Name"] for i in items if isinstance(i, Record)] == ['O"Brien', "Ann"]


def test_overlong_line_is_rejected_and_reading_goes_on(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + b"C1," + b"x" * 5000 + b",Y\nC2,Ann,Berlin\n")
    with CsvReader(path, key="Customer_ID", max_line_bytes=1024) as reader:
        items = list(reader)
    assert isinstance(items[0], Rejected) and items[0].rule == "csv_malformed"
    assert len(items[0].raw) == 1024
    assert isinstance(items[1], Record) and items[1].position == "customers.csv:3"


def test_resume_from_a_mark_continues_with_the_next_item(tmp_path: Path) -> None:
    body = HEADER + b'C1,Ann,Berlin\nC2,"B\nob",Paris\nC3,\xff,Rome\nC4,Di,Oslo\n'
    path = write(tmp_path, body)
    everything = read_all(path)
    for i, item in enumerate(everything):
        assert read_all(path, start=fmark(item)) == everything[i + 1 :]


def test_key_column_matches_case_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + b"C1,Ann,Berlin\n")
    (item,) = read_all(path, key="customer_id")
    assert isinstance(item, Record) and item.key == "C1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"A,B\n", "key column"),
        (b"Customer_ID,A,A\n", "twice"),
        (b"Customer_ID,\xff\n", "not UTF-8"),
    ],
)
def test_unusable_header_fails_the_source(tmp_path: Path, body: bytes, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(SourceOpenError, match=message):
        read_all(path)


def test_missing_file_fails_the_source(tmp_path: Path) -> None:
    with pytest.raises(SourceOpenError, match="cannot open"):
        read_all(tmp_path / "nope.csv")


def test_ends_in_quotes_agrees_with_the_csv_module() -> None:
    """Random lines of a, comma, quote and space: our scanner and csv must agree whether a record is open."""
    rng = random.Random(7)
    for _ in range(5000):
        line = "".join(rng.choice('a,"  ') for _ in range(rng.randint(0, 12)))
        rows = list(csv.reader(io.StringIO(line + "\n" + "z\n"), strict=False))
        # csv joins the next line into the record exactly when a quoted field is still open.
        csv_open = len(rows) == 1
        assert ends_in_quotes(line.encode(), False) == csv_open, line
