"""JSON Lines files: one JSON object per physical line, UTF-8.

Values become strings untouched in meaning: strings as they are, ``null`` as None, numbers, booleans,
arrays and objects as their JSON text. A line that is not a JSON object -> ``json_malformed``; bytes that
are not UTF-8 -> ``encoding``. Positions are ``<file name>:<1-based line>``; blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from producers.exceptions import SourceOpenError
from producers.readers.base import FileMark, Item, ReaderBase, Record, Rejected
from producers.readers.lines import (
    DEFAULT_MAX_LINE_BYTES,
    READ_BUFFER_BYTES,
    physical_lines,
    strip_eol,
    utf8_error,
)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class JsonlReader(ReaderBase):
    """Streams ``path``; ``key`` names the member holding the primary key (case-insensitive fallback)."""

    def __init__(
        self,
        path: Path,
        *,
        key: str,
        start: FileMark | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.path = path
        self.name = path.name
        self.key = key
        self.mark = start or FileMark(offset=0, line=1)
        self.max_line_bytes = max_line_bytes
        self._fh: BinaryIO | None = None
        self._size: int | None = None

    @property
    def total(self) -> int | None:
        return self._size

    @property
    def start(self) -> int:
        return self.mark.offset

    def open(self) -> None:
        try:
            fh = self.path.open("rb", buffering=READ_BUFFER_BYTES)
        except OSError as exc:
            raise SourceOpenError(f"cannot open {self.path}: {exc.strerror}") from exc
        self._fh = fh
        self._size = self.path.stat().st_size
        if self.mark.offset > self._size:
            self.close()
            raise SourceOpenError(
                f"{self.name}: resume offset {self.mark.offset} is beyond the end of the file "
                f"({self._size} bytes); run with --restart"
            )
        fh.seek(self.mark.offset)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __iter__(self) -> Iterator[Item]:
        if self._fh is None:
            raise RuntimeError("JsonlReader.open() must be called before iterating")
        return self._items(self._fh)

    def _items(self, fh: BinaryIO) -> Iterator[Item]:
        offset, line = self.mark.offset, self.mark.line
        name, key = self.name, self.key
        for data, size, overflow in physical_lines(fh, self.max_line_bytes):
            first = line
            line += 1
            offset += size
            here = FileMark(offset=offset, line=line)
            position = f"{name}:{first}"
            if overflow:
                error = f"line longer than {self.max_line_bytes} bytes"
                yield Rejected(position, "json_malformed", error, data, here)
                continue
            body = strip_eol(data)
            if not body.strip():
                continue
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Rejected(position, "encoding", utf8_error(exc), data, here)
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                # The decoder's message is a fixed phrase ("Expecting value"); it never quotes the input.
                error = f"invalid JSON: {exc.msg} at column {exc.colno}"
                yield Rejected(position, "json_malformed", error, data, here)
                continue
            if not isinstance(obj, dict):
                error = f"line is a JSON {type(obj).__name__}, expected an object"
                yield Rejected(position, "json_malformed", error, data, here)
                continue
            fields = {str(k): _as_text(v) for k, v in obj.items()}
            yield Record(_key_of(fields, key), position, fields, here)
        self.mark = FileMark(offset=offset, line=line)


def _key_of(fields: dict[str, str | None], key: str) -> str:
    value = fields.get(key)
    if value is None and key not in fields:
        folded = key.casefold()
        value = next((v for k, v in fields.items() if k.casefold() == folded), None)
    return value or ""
