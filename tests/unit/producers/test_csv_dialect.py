"""CSV dialects: declared or sniffed delimiter, quote and encoding; BOM, CRLF and exact resume offsets."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from producers.exceptions import SourceOpenError
from producers.readers import CsvReader, FileMark, Item, Record, Rejected
from producers.readers.dialect import CsvDialect, check_encoding, sniff_delimiter, sniff_encoding

pytestmark = pytest.mark.unit

BOM = codecs.BOM_UTF8


def windows_export(tmp_path: Path) -> Path:
    """``;``, cp1252, CRLF, a BOM, a quoted field with ``;`` and a CRLF inside."""
    text = ("Customer_ID;First_Name;City\r\n"
            "C1;Jürgen;Köln\r\n"
            'C2;"Bärbel; Anna";"Düssel\r\ndorf"\r\n'
            "C3;Renée;Zürich\r\n")  # fmt: skip
    path = tmp_path / "export.csv"
    path.write_bytes(BOM + text.encode("cp1252"))
    return path


def read(path: Path, start: FileMark | None = None, **kw: str) -> tuple[CsvReader, list[Item]]:
    reader = CsvReader(path, key="Customer_ID", start=start, **kw)  # type: ignore[arg-type]
    with reader:
        return reader, list(reader)


@pytest.mark.parametrize("declared", [{}, {"delimiter": ";", "encoding": "cp1252"}, {"dialect": "auto"}])
def test_windows_export_reads_with_its_dialect_declared_or_sniffed(tmp_path: Path, declared: dict[str, str]) -> None:
    path = windows_export(tmp_path)
    reader, items = read(path, **declared)
    assert reader.header == ["Customer_ID", "First_Name", "City"]
    assert reader.dialect.delimiter == ";"
    assert [i.fields for i in items if isinstance(i, Record)] == [
        {"Customer_ID": "C1", "First_Name": "Jürgen", "City": "Köln"},
        {"Customer_ID": "C2", "First_Name": "Bärbel; Anna", "City": "Düssel\r\ndorf"},
        {"Customer_ID": "C3", "First_Name": "Renée", "City": "Zürich"},
    ]
    assert [i.position for i in items] == ["export.csv:2", "export.csv:3", "export.csv:5"]
    assert items[-1].mark == FileMark(offset=path.stat().st_size, line=6)


def test_resume_marks_are_byte_offsets_in_multibyte_and_crlf_files(tmp_path: Path) -> None:
    path = tmp_path / "utf8.csv"
    path.write_bytes(BOM + "Customer_ID,Name\r\nC1,Ärger\r\nC2,日本語\r\nC3,Ōsaka\r\n".encode())
    reader, items = read(path)
    assert reader.dialect == CsvDialect(",", '"', "utf-8")
    after_first = items[0].mark
    assert isinstance(after_first, FileMark)
    assert path.read_bytes()[: after_first.offset].endswith("Ärger\r\n".encode())
    _, rest = read(path, start=after_first, **reader.dialect.to_json())
    assert [(i.position, i.fields["Name"]) for i in rest if isinstance(i, Record)] == [
        ("utf8.csv:3", "日本語"),
        ("utf8.csv:4", "Ōsaka"),
    ]


def test_resolved_dialect_of_a_checkpoint_wins_over_sniffing(tmp_path: Path) -> None:
    path = windows_export(tmp_path)
    reader = CsvReader(path, key="Customer_ID", resolved=CsvDialect(";", '"', "cp1252"))
    with reader:
        assert reader.dialect == CsvDialect(";", '"', "cp1252")
        assert len(list(reader)) == 3


def test_a_utf8_file_with_a_few_broken_lines_stays_strict_utf8(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes("Customer_ID,Name\nC1,Zoë\nC2,Ørsted\n".encode() + b"C3,J\xf6rg\n")
    reader, items = read(path)
    assert reader.dialect.encoding == "utf-8" and reader.dialect.fallback is None
    assert isinstance(items[2], Rejected) and items[2].rule == "encoding"


def test_sniffed_cp1252_still_reads_a_valid_utf8_line_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "win.csv"
    path.write_bytes(b"Customer_ID,Name\nC1,J\xf6rg\nC2,M\xfcller\n" + "C3,Zoë\n".encode())
    reader, items = read(path)
    assert reader.dialect.fallback == "cp1252"
    assert [i.fields["Name"] for i in items if isinstance(i, Record)] == ["Jörg", "Müller", "Zoë"]


def test_tab_and_single_quote_dialects(tmp_path: Path) -> None:
    path = tmp_path / "tab.csv"
    path.write_text("Customer_ID\tName\nC1\t'Smith\tAnn'\n")
    reader, items = read(path, quotechar="'")
    assert reader.dialect.delimiter == "\t"
    assert isinstance(items[0], Record) and items[0].fields["Name"] == "Smith\tAnn"
    _, items = read(path, dialect="excel-tab")  # TAB and '"': the single quotes are text, the TAB splits
    assert isinstance(items[0], Rejected) and items[0].error == "expected 2 fields, found 3"


def test_sniffing_helpers() -> None:
    assert sniff_delimiter("a;b;c\n1;2;3\n") == (";", '"')
    assert sniff_delimiter("a|b\n1|2\n")[0] == "|"
    assert sniff_delimiter("single\nvalue\n")[0] == ","
    assert sniff_encoding(b"plain ascii\n") == "utf-8"
    assert sniff_encoding(b"M\xfcller\n") == "cp1252"
    assert sniff_encoding("Müller\n".encode() + b"M\xfcller\n") == "utf-8"  # a tie goes to UTF-8
    # A UTF-8 export's stray bytes (0xFF, or under 1% of the lines) are damage, not an 8-bit export.
    assert sniff_encoding(b"ascii,line\n" * 5 + b"Urgent\xff\n") == "utf-8"
    assert sniff_encoding(b"ascii,line\n" * 200 + b"M\xfcller\n") == "utf-8"
    assert sniff_encoding(b"ascii,line\n" * 50 + b"M\xfcller\n") == "cp1252"


def test_wide_encodings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not ASCII-compatible"):
        check_encoding("utf-16")
    with pytest.raises(ValueError, match="unknown encoding"):
        check_encoding("klingon")
    assert check_encoding("Windows-1252") == "cp1252" and check_encoding("utf-8-sig") == "utf-8"
    path = tmp_path / "u16.csv"
    path.write_bytes("Customer_ID,Name\n".encode("utf-16"))
    with pytest.raises(SourceOpenError, match="UTF-16/32"):
        read(path)
