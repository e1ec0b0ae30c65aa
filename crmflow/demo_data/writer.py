"""Buffered CSV output that knows its physical line number and can write bytes that are not UTF-8."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from crmflow.demo_data.layout import SourceFile

_FLUSH_EVERY = 8192


class CsvSink:
    """One legacy CSV file (or a part of one): one physical line per row.

    Rows are ``str``; raw bytes that are not UTF-8 travel as surrogate escapes (see
    :func:`crmflow.demo_data.noise.mis_encoded`) and are written back as those bytes. No field may
    contain a line break, so ``line`` is the physical line number the ground truth needs. A part of a
    file starts without header at ``line``, the number of lines the parts before it hold.
    """

    def __init__(self, path: Path, source: SourceFile, *, header: bool = True, line: int = 1) -> None:
        self.source = source
        self._file = path.open("wb")
        self._buf: list[str] = []
        self.write = self._buf.append  # csv.writer calls this once per row
        self._writer = csv.writer(self, lineterminator="\n")
        if header:
            self._writer.writerow(source.columns)
        self.line = line

    def row(self, fields: Sequence[str]) -> int:
        """Write ``fields`` as the next line and return its 1-based line number."""
        line = ",".join(fields)
        # Most rows need no quoting; joining them is six times faster than csv.writer, which gets the rest.
        if line.count(",") == len(fields) - 1 and '"' not in line and "\n" not in line and "\r" not in line:
            self._buf.append(line + "\n")
        else:
            self._writer.writerow(fields)
        self.line += 1
        if len(self._buf) >= _FLUSH_EVERY:
            self.flush()
        return self.line

    def flush(self) -> None:
        self._file.write("".join(self._buf).encode("utf-8", "surrogateescape"))
        self._buf.clear()

    def close(self) -> None:
        self.flush()
        self._file.close()

    def __enter__(self) -> CsvSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
