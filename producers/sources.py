"""The producer's view of a configured source, the segment filter, and opening the right reader.

:func:`source_specs` is the one place that reads the migration config's ``sources``; the rest of the
producer works on :class:`SourceSpec`, so a change in the config model touches only this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crmflow.connections import PostgresConnection
from crmflow.exceptions import ConfigError
from producers.readers.base import FileMark, KeyMark, Mark, Reader
from producers.readers.csvfile import CsvReader
from producers.readers.dialect import DIALECTS, CsvDialect, DialectName, check_delimiter, check_encoding
from producers.readers.jsonl import JsonlReader
from producers.readers.table import TableReader

SourceKind = Literal["csv", "jsonl", "table"]


def normalize_ws(value: str) -> str:
    """The contract's whitespace rule: trim, collapse internal runs to one space."""
    return " ".join(value.split())


@dataclass(frozen=True)
class SegmentFilter:
    """Keep records whose ``field`` is one of ``values`` (a phase of a phased migration: Region in [EU]).

    Compared after the contract's whitespace rule (so `` EU `` is in ``[EU]``) and case-sensitively, as the
    cleansed value would be; the field name matches case-insensitively. A missing or null field is outside.
    """

    field: str
    values: frozenset[str]

    @classmethod
    def of(cls, field: str, values: Iterable[str]) -> SegmentFilter:
        return cls(field, frozenset(normalize_ws(v) for v in values))

    def __call__(self, fields: Mapping[str, str | None]) -> bool:
        value = fields.get(self.field)
        if value is None and self.field not in fields:
            folded = self.field.casefold()
            value = next((v for k, v in fields.items() if k.casefold() == folded), None)
        return value is not None and normalize_ws(value) in self.values

    def __str__(self) -> str:
        return f"{self.field} in [{', '.join(sorted(self.values))}]"


@dataclass(frozen=True)
class SourceSpec:
    """One source to snapshot. ``entity`` is the target entity it feeds (account...); ``dsn`` is resolved
    from the config's ``dsn_env`` and never printed."""

    name: str
    kind: SourceKind
    entity: str
    key: str
    path: Path | None = None
    table: str | None = None
    dsn: PostgresConnection | None = field(default=None, repr=False)
    segment: SegmentFilter | None = None
    delimiter: str | None = None
    """CSV: declared delimiter (None: detected)."""
    quotechar: str | None = None
    """CSV: declared quote character (None: detected)."""
    encoding: str | None = None
    """CSV: declared encoding (None: detected, UTF-8 or cp1252)."""
    dialect: DialectName = "auto"
    """CSV: ``auto`` detects what is not declared; ``excel``/``excel-tab`` fix comma/TAB and ``"``."""

    @property
    def legacy_entity(self) -> str:
        """The legacy entity, for the envelope: the file's stem or the table's name (``customers``)."""
        if self.path is not None:
            return self.path.stem
        return (self.table or self.name).rsplit(".", 1)[-1]

    def open_reader(self, mark: Mark | None, dialect: CsvDialect | None = None) -> Reader:
        """A reader positioned after ``mark`` (from the start when None); not yet opened. ``dialect`` is a
        CSV dialect resolved by an earlier run (the checkpoint's), used instead of detecting it again."""
        if self.kind in ("csv", "jsonl"):
            assert self.path is not None
            if mark is not None and not isinstance(mark, FileMark):
                raise ConfigError(f"source {self.name}: checkpoint holds a table mark for a file source")
            if self.kind == "csv":
                return CsvReader(self.path, key=self.key, start=mark, delimiter=self.delimiter,
                                 quotechar=self.quotechar, encoding=self.encoding, dialect=self.dialect,
                                 resolved=dialect)  # fmt: skip
            return JsonlReader(self.path, key=self.key, start=mark)
        assert self.dsn is not None and self.table is not None
        if mark is not None and not isinstance(mark, KeyMark):
            raise ConfigError(f"source {self.name}: checkpoint holds a file mark for a table source")
        return TableReader(self.dsn, self.table, key=self.key, start=mark)


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, Mapping):
            if name in obj:
                return obj[name]
        elif hasattr(obj, name):
            return getattr(obj, name)
    return None


def _segment(raw: Any, source: str) -> SegmentFilter | None:
    if raw is None:
        return None
    fld = _get(raw, "field")
    values = _get(raw, "in_", "values", "in")
    if not isinstance(fld, str) or values is None or isinstance(values, str):
        raise ConfigError(f"sources.{source}.segment: expected {{field: <name>, in: [<value>, ...]}}")
    return SegmentFilter.of(fld, [str(v) for v in values])


def _csv_options(raw: Any, where: str, kind: str) -> dict[str, Any]:
    """The CSV dialect declarations of a source, checked (a mapping config is not validated by pydantic)."""
    out: dict[str, Any] = {}
    for name, check in (("delimiter", check_delimiter), ("quotechar", check_delimiter)):
        value = _get(raw, name)
        if value is not None:
            try:
                out[name] = check(str(value), name)
            except ValueError as exc:
                raise ConfigError(f"{where}.{exc}") from None
    encoding = _get(raw, "encoding")
    if encoding is not None:
        try:
            out["encoding"] = check_encoding(str(encoding))
        except ValueError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    dialect = _get(raw, "dialect")
    if dialect is not None:
        if dialect not in DIALECTS:
            raise ConfigError(f"{where}.dialect: expected one of {', '.join(DIALECTS)}, got {dialect!r}")
        out["dialect"] = dialect
    if out.get("dialect") == "auto":
        del out["dialect"]  # the default
    if out and kind != "csv":
        raise ConfigError(f"{where}: {', '.join(sorted(out))} only apply to csv sources")
    return out


def source_spec(name: str, raw: Any) -> SourceSpec:
    """Turn one config source (a pydantic model or a mapping) into a :class:`SourceSpec`."""
    where = f"sources.{name}"
    kind = _get(raw, "kind")
    if kind not in ("csv", "jsonl", "table"):
        raise ConfigError(f"{where}.kind: expected csv, jsonl or table, got {kind!r}")
    key = _get(raw, "key")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}.key: the primary-key column is required")
    entity = _get(raw, "entity") or name
    segment = _segment(_get(raw, "segment"), name)
    csv_options = _csv_options(raw, where, kind)
    if kind in ("csv", "jsonl"):
        path = _get(raw, "path")
        if path is None:
            raise ConfigError(f"{where}.path: required for a {kind} source")
        return SourceSpec(name, kind, str(entity), key, path=Path(path), segment=segment, **csv_options)
    table, dsn_env = _get(raw, "table"), _get(raw, "dsn_env")
    if not table or not dsn_env:
        raise ConfigError(f"{where}: a table source needs table and dsn_env")
    dsn = os.environ.get(str(dsn_env))
    if not dsn:
        raise ConfigError(f"{where}.dsn_env: environment variable {dsn_env} is not set (it holds the DSN)")
    db = PostgresConnection.from_env(str(dsn_env), dsn)
    return SourceSpec(name, kind, str(entity), key, table=str(table), dsn=db, segment=segment)


def source_specs(cfg: Any, only: Sequence[str] | None = None) -> list[SourceSpec]:
    """The config's sources in config order, or just ``only`` (unknown names are a ConfigError)."""
    raw = _get(cfg, "sources")
    if isinstance(raw, Mapping):
        named = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, Sequence):
        named = [(str(_get(s, "name")), s) for s in raw]
    else:
        raise ConfigError("sources: expected a mapping of source name to source")
    if only:
        known = {n for n, _ in named}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ConfigError(f"unknown source(s) {', '.join(unknown)}; the config has {', '.join(sorted(known))}")
        named = [(n, s) for n, s in named if n in only]
    return [source_spec(n, s) for n, s in named]
