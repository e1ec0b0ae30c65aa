"""Every source's header against the config's mapping, before anything moves.

The mapping reads a source's columns by name (exact, else the lower-case spelling, as
:mod:`processors.mapping` does). A mapped column that the source does not have would be null in every
record, silently, or reject every record of a required field. So ``config check`` and the snapshot
compare, per source, the columns the config reads (field mappings of the source's entity, and the segment
field) with the source's header:

- CSV: the header row, read with the source's dialect;
- tables: the column list (``SELECT * ... LIMIT 0``, no rows read);
- JSONL: skipped; a JSON object names its members per line, so there is no header to compare.

A missing column is reported with the file (or table), the column and the config line of the field
mapping that reads it. Column names are not personal data; values are never read here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from crmflow.connections import PostgresConnection, as_postgres
from producers.exceptions import HeaderMismatchError, SourceOpenError, SourceUnavailableError
from producers.readers.csvfile import CsvReader
from producers.readers.dialect import CsvDialect
from producers.runs import cfg_get
from producers.sources import SourceSpec

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ColumnUse:
    """A source column the config reads, and where the config reads it (``path`` into the config)."""

    column: str
    path: KeyPath


@dataclass(frozen=True)
class MissingColumn:
    """A column the config reads that the source's header lacks."""

    source: str
    where: str
    """The file path or table name."""
    column: str
    path: KeyPath
    config_file: Path | None
    config_line: int | None
    header: tuple[str, ...]

    def __str__(self) -> str:
        at = _format_path(self.path)
        if self.config_file is not None and self.config_line is not None:
            at = f"{self.config_file}:{self.config_line} ({at})"
        return (f"{self.where}: column {self.column!r} is not in the header of source {self.source} "
                f"(read by {at}); the header has: {', '.join(self.header)}")  # fmt: skip


def _format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _sources_of(mapping: Any) -> tuple[str, ...]:
    sources = cfg_get(mapping, "sources")
    if isinstance(sources, tuple | list):
        return tuple(str(s) for s in sources)
    raw = cfg_get(mapping, "source")
    if raw is None:
        return ()
    return (raw,) if isinstance(raw, str) else tuple(str(s) for s in raw)


def columns_read(cfg: Any, spec: SourceSpec) -> list[ColumnUse]:
    """The source columns the config reads from ``spec``: its entity's field mappings and its segment field."""
    out: list[ColumnUse] = []
    entities = cfg_get(cfg, "entities")
    entity = entities.get(spec.entity) if isinstance(entities, Mapping) else None
    fields = cfg_get(entity, "fields") if entity is not None else None
    for i, fm in enumerate(fields or ()):
        for column in _sources_of(fm):
            out.append(ColumnUse(column, ("entities", spec.entity, "fields", i, "source")))
    if spec.segment is not None:
        out.append(ColumnUse(spec.segment.field, ("sources", spec.name, "segment", "field")))
    return out


def has_column(header: Iterable[str], column: str, *, casefold: bool = False) -> bool:
    """Whether the mapping finds ``column`` in a record with these names: exact or its lower-case spelling
    (``casefold``: any case, as the segment filter and the key column match)."""
    names = set(header)
    if column in names or column.lower() in names:
        return True
    return casefold and column.casefold() in {n.casefold() for n in names}


def read_header(spec: SourceSpec, dialect: CsvDialect | None = None) -> tuple[str, ...] | None:
    """The source's column names (None for JSONL), CSV with ``dialect`` if given (else declared/detected).
    Raises SourceOpenError (missing file, bad header, key column missing) or SourceUnavailableError."""
    if spec.kind == "jsonl":
        return None
    if spec.kind == "csv":
        reader = spec.open_reader(None, dialect)
        assert isinstance(reader, CsvReader)
        with reader:
            return tuple(reader.header)
    assert spec.dsn is not None and spec.table is not None
    return table_columns(spec.dsn, spec.table)


def table_columns(dsn: PostgresConnection | str, table: str, *, connect_timeout_s: int = 10) -> tuple[str, ...]:
    """The column names of ``table`` (``schema.table`` or ``table``), without reading a row."""
    parts = table.split(".")
    if len(parts) > 2 or not all(parts):
        raise SourceOpenError(f"table {table!r}: expected 'table' or 'schema.table'")
    try:
        with as_postgres(dsn).connect(connect_timeout=connect_timeout_s) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(sql.Identifier(*parts)))
            return tuple(c.name for c in cur.description or [])
    except psycopg.errors.UndefinedTable as exc:
        raise SourceOpenError(f"table {table} does not exist (check the source's table)") from exc
    except psycopg.OperationalError as exc:
        raise SourceUnavailableError(f"table {table}: cannot read its columns: {exc}") from exc
    except psycopg.Error as exc:
        raise SourceOpenError(f"table {table}: cannot read its columns ({exc.sqlstate or type(exc).__name__})") from exc


def missing_columns(cfg: Any, spec: SourceSpec, header: Sequence[str]) -> Iterator[MissingColumn]:
    """Every column the config reads from ``spec`` that ``header`` lacks, once per reading field mapping."""
    where = str(spec.path) if spec.path is not None else str(spec.table or spec.name)
    line_of = getattr(cfg, "line_of", None)
    file = getattr(cfg, "file", None)
    for use in columns_read(cfg, spec):
        segment = use.path[0] == "sources"
        if not has_column(header, use.column, casefold=segment):
            line = line_of(use.path) if callable(line_of) else None
            yield MissingColumn(spec.name, where, use.column, use.path, file, line, tuple(header))


def check_headers(
    cfg: Any, specs: Sequence[SourceSpec], dialects: Mapping[str, CsvDialect | None] | None = None
) -> None:
    """Raise :class:`HeaderMismatchError` listing every mapped column missing from a source's header.
    ``dialects`` holds CSV dialects already resolved per source name (a resumed run's)."""
    problems: list[str] = []
    for spec in specs:
        header = read_header(spec, (dialects or {}).get(spec.name))
        if header is not None:
            problems.extend(str(m) for m in missing_columns(cfg, spec, header))
    if problems:
        raise HeaderMismatchError(problems)
