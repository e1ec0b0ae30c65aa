"""CSV files: header row, then one record per line; one bad line rejects that line only.

The dialect (delimiter, quote character, encoding) is declared by the source or detected when the file
opens (:mod:`producers.readers.dialect`); the default is comma, ``"`` and UTF-8. A UTF-8 byte-order mark
is skipped, and lines may end in ``\n`` or ``\r\n``.

The file is read in binary. Physical lines are joined into one record while a quoted field is open (a
small scanner that follows the ``csv`` module's quoting rules), then the record is decoded and parsed.
Working on bytes keeps the resume marks exact byte offsets whatever the encoding (it must be
ASCII-compatible, so a newline, quote or delimiter byte is always that character). Positions are
``<file name>:<1-based physical line of the record's first line>``, the header being line 1, so a record
with a quoted newline at lines 7-8 is ``customers.csv:7`` and the next one is ``customers.csv:9``.

Rejects: bytes that are not valid in the encoding -> ``encoding``; a wrong field count, a quoted field
never closed, or a record longer than the limits -> ``csv_malformed``. Blank lines are skipped (they hold
no record).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from producers.exceptions import SourceOpenError
from producers.readers.base import FileMark, Item, ReaderBase, Record, Rejected
from producers.readers.dialect import UTF8_BOM, CsvDialect, DialectName, resolve_dialect
from producers.readers.lines import (
    DEFAULT_MAX_LINE_BYTES,
    READ_BUFFER_BYTES,
    physical_lines,
    strip_eol,
    utf8_error,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORD_LINES = 64
DEFAULT_MAX_RECORD_BYTES = 512 * 1024


def ends_in_quotes(line: bytes, in_quotes: bool, quote: bytes = b'"', delimiter: bytes = b",") -> bool:
    """Whether a quoted field is still open at the end of ``line`` (which has no line terminator).

    Follows the ``csv`` module (doublequote, non-strict): a quote opens a quoted field only as the
    first character of a field; inside one, a doubled quote is a literal quote and a single one closes
    it; text after the closing quote up to the next delimiter belongs to the same field.
    """
    i = 0
    n = len(line)
    find = line.find
    q = quote[0]
    while True:
        if in_quotes:
            j = find(quote, i)
            if j < 0:
                return True
            if j + 1 < n and line[j + 1] == q:
                i = j + 2
                continue
            in_quotes = False
            i = j + 1
        elif i < n and line[i] == q:
            in_quotes = True
            i += 1
            continue
        k = find(delimiter, i)
        if k < 0:
            return False
        i = k + 1


class CsvReader(ReaderBase):
    """Streams ``path``; ``key`` names the primary-key column (matched case-insensitively if not exact).

    ``delimiter``, ``quotechar``, ``encoding`` and ``dialect`` are the source's declarations (None:
    detect); ``resolved`` is a dialect resolved before (the checkpoint's) and wins over both. After
    :meth:`open`, ``dialect`` is the one in use.
    """

    def __init__(
        self,
        path: Path,
        *,
        key: str,
        start: FileMark | None = None,
        delimiter: str | None = None,
        quotechar: str | None = None,
        encoding: str | None = None,
        dialect: DialectName = "auto",
        resolved: CsvDialect | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_record_lines: int = DEFAULT_MAX_RECORD_LINES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.path = path
        self.name = path.name
        self.key = key
        self.mark = start
        self.declared = {"delimiter": delimiter, "quotechar": quotechar, "encoding": encoding}
        self.dialect_name: DialectName = dialect
        self.dialect = resolved or CsvDialect()
        self._resolved = resolved is not None
        self.max_line_bytes = max_line_bytes
        self.max_record_lines = max_record_lines
        self.max_record_bytes = max_record_bytes
        self.header: list[str] = []
        self.key_index = -1
        self._fh: BinaryIO | None = None
        self._size: int | None = None
        self._start = 0

    @property
    def total(self) -> int | None:
        return self._size

    @property
    def start(self) -> int:
        return self._start

    def open(self) -> None:
        try:
            fh = self.path.open("rb", buffering=READ_BUFFER_BYTES)
        except OSError as exc:
            raise SourceOpenError(f"cannot open {self.path}: {exc.strerror}") from exc
        self._fh = fh
        self._size = self.path.stat().st_size
        try:
            if not self._resolved:
                self.dialect = resolve_dialect(fh, self.name, dialect=self.dialect_name, **self.declared)
            header_mark = self._read_header(fh)
        except BaseException:
            self.close()
            raise
        mark = self.mark or header_mark
        if mark.offset < header_mark.offset or mark.offset > self._size:
            self.close()
            raise SourceOpenError(
                f"{self.name}: resume offset {mark.offset} is outside the file's records "
                f"({header_mark.offset}..{self._size} bytes); run with --restart"
            )
        fh.seek(mark.offset)
        self.mark = mark
        self._start = mark.offset

    def _read_header(self, fh: BinaryIO) -> FileMark:
        fh.seek(0)
        consumed = len(UTF8_BOM) if fh.read(len(UTF8_BOM)) == UTF8_BOM else 0
        fh.seek(consumed)
        d = self.dialect
        quote, delimiter = d.quotechar.encode("ascii"), d.delimiter.encode("ascii")
        lines = physical_lines(fh, self.max_line_bytes)
        parts: list[bytes] = []
        in_quotes = False
        for data, size, overflow in lines:
            if overflow:
                raise SourceOpenError(f"{self.name}:1: header line longer than {self.max_line_bytes} bytes")
            parts.append(data)
            consumed += size
            in_quotes = ends_in_quotes(strip_eol(data), in_quotes, quote, delimiter)
            if not in_quotes or len(parts) >= self.max_record_lines:
                break
        if not parts:
            raise SourceOpenError(f"{self.name} is empty: expected a header row")
        try:
            text = d.decode(strip_eol(b"".join(parts)))
            header = next(csv.reader([text], delimiter=d.delimiter, quotechar=d.quotechar))
        except UnicodeDecodeError as exc:
            shown = "UTF-8" if d.encoding == "utf-8" else d.encoding
            shown += f" or {d.fallback}" if d.fallback else ""
            raise SourceOpenError(f"{self.name}:1: header is not {shown}: {utf8_error(exc)}") from None
        except (csv.Error, StopIteration):
            raise SourceOpenError(f"{self.name}:1: header row cannot be parsed as CSV ({d.describe()})") from None
        if len(set(header)) != len(header):
            raise SourceOpenError(f"{self.name}:1: header names a column twice")
        self.header = header
        self.key_index = _column_index(header, self.key, self.name)
        return FileMark(offset=consumed, line=1 + len(parts))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __iter__(self) -> Iterator[Item]:
        if self._fh is None or self.mark is None:
            raise RuntimeError("CsvReader.open() must be called before iterating")
        return self._items(self._fh, self.mark)

    def _items(self, fh: BinaryIO, mark: FileMark) -> Iterator[Item]:
        offset, line = mark.offset, mark.line
        header, ncols, key_index, name = self.header, len(self.header), self.key_index, self.name
        max_lines = self.max_record_lines
        d = self.dialect
        decode, delim, quotechar = d.decode, d.delimiter, d.quotechar
        quote, delimiter = quotechar.encode("ascii"), delim.encode("ascii")
        lines = physical_lines(fh, self.max_line_bytes)
        for data, size, overflow in lines:
            first = line
            line += 1
            offset += size
            problem: str | None = None
            if overflow:
                problem = f"line longer than {self.max_line_bytes} bytes"
            elif quote in data and ends_in_quotes(strip_eol(data), False, quote, delimiter):
                # A quoted field spans lines: keep reading physical lines until it closes.
                parts = [data]
                record_bytes = size
                while True:
                    nxt = next(lines, None)
                    if nxt is None:
                        problem = "quoted field not closed before the end of the file"
                        break
                    more, more_size, more_overflow = nxt
                    line += 1
                    offset += more_size
                    record_bytes += more_size
                    parts.append(more)
                    if more_overflow:
                        problem = f"line longer than {self.max_line_bytes} bytes inside a quoted field"
                        break
                    if not ends_in_quotes(strip_eol(more), True, quote, delimiter):
                        break
                    if len(parts) >= max_lines or record_bytes > self.max_record_bytes:
                        problem = f"quoted field still open after {len(parts)} lines ({record_bytes} bytes)"
                        break
                data = b"".join(parts)
            here = FileMark(offset, line)
            position = f"{name}:{first}"
            if problem is not None:
                yield Rejected(position, "csv_malformed", problem, data, here)
                continue
            body = strip_eol(data)
            if not body:
                continue  # a blank line is not a record
            try:
                text = decode(body)
            except UnicodeDecodeError as exc:
                yield Rejected(position, "encoding", utf8_error(exc), data, here)
                continue
            if quotechar in text:
                try:
                    row = next(csv.reader([text], delimiter=delim, quotechar=quotechar))
                except csv.Error:
                    yield Rejected(position, "csv_malformed", "line cannot be parsed as CSV", data, here)
                    continue
            else:
                row = text.split(delim)
            if len(row) != ncols:
                error = f"expected {ncols} fields, found {len(row)}"
                yield Rejected(position, "csv_malformed", error, data, here)
                continue
            fields: dict[str, str | None] = dict(zip(header, row, strict=True))
            yield Record(row[key_index], position, fields, here)
        self.mark = FileMark(offset=offset, line=line)


def _column_index(header: list[str], key: str, name: str) -> int:
    """Index of ``key`` in ``header``: exact match first, then case-insensitive."""
    if key in header:
        return header.index(key)
    folded = [h.casefold() for h in header]
    if folded.count(key.casefold()) == 1:
        return folded.index(key.casefold())
    raise SourceOpenError(f"{name}:1: key column {key!r} is not in the header (columns: {', '.join(header)})")
