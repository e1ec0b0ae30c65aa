"""What every reader yields, and the resume marks a checkpoint stores.

A reader streams one source in a fixed order and yields, per record, either a :class:`Record` (raw fields
as strings, untouched) or a :class:`Rejected` (a line that is not a record: wrong field count, bytes that
are not UTF-8, bad JSON). Both carry the :data:`Mark` just *after* them: a reader opened with that mark
continues with the next item, which is what makes a snapshot resumable.

Lifecycle: construct (cheap, nothing opened) -> :meth:`Reader.open` (opens the file or connection, reads
the header or the column list, knows ``total``) -> iterate once -> :meth:`Reader.close` (idempotent).
Readers are context managers doing open/close.

The item and mark classes are plain slotted dataclasses, not frozen ones: a frozen dataclass costs twice
as much to build, and readers build two per record. Treat them as immutable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self

RejectRule = Literal["csv_malformed", "encoding", "json_malformed"]


@dataclass(slots=True)
class FileMark:
    """Resume point in a file: byte ``offset`` and 1-based physical ``line`` of the next unread line."""

    offset: int
    line: int

    @property
    def progress(self) -> int:
        return self.offset

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "line": self.line}


@dataclass(slots=True)
class KeyMark:
    """Resume point in a table read in key order: the last ``key`` read and how many ``rows`` so far."""

    key: str
    rows: int

    @property
    def progress(self) -> int:
        return self.rows

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "rows": self.rows}


Mark = FileMark | KeyMark


def mark_from_json(data: dict[str, Any]) -> Mark:
    """The inverse of ``to_json``; raises ``ValueError`` on anything else."""
    if set(data) == {"offset", "line"} and all(isinstance(data[k], int) for k in data):
        return FileMark(offset=data["offset"], line=data["line"])
    if set(data) == {"key", "rows"} and isinstance(data["key"], str) and isinstance(data["rows"], int):
        return KeyMark(key=data["key"], rows=data["rows"])
    raise ValueError(f"not a resume mark: keys {sorted(data)}")


@dataclass(slots=True)
class Record:
    """One source record: its primary key (``""`` when empty), position and raw fields.

    ``fields`` keeps every value as read: CSV empty values stay ``""``, SQL NULL is ``None``.
    """

    key: str
    position: str
    fields: dict[str, str | None]
    mark: Mark


@dataclass(slots=True)
class Rejected:
    """A line that is not a record. ``error`` is PII-free; ``raw`` holds the bytes for the dead letter."""

    position: str
    rule: RejectRule
    error: str
    raw: bytes
    mark: Mark


Item = Record | Rejected


class Reader(Protocol):
    """A source opened for one pass. ``total`` and ``start`` are in the unit of ``Mark.progress``
    (bytes for files, rows for tables), for progress bars; ``total`` is None when unknown."""

    name: str

    @property
    def total(self) -> int | None: ...

    @property
    def start(self) -> int: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[Item]: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ReaderBase:
    """Context-manager plumbing shared by the readers."""

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
