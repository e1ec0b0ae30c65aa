"""The PostgreSQL "legacy database": the demo CSV files as tables of schema ``legacy``.

Tables and columns are those of the CSV files (``docs/data-contract.md``), lower case, all ``text``, the
id column the primary key. A load truncates and refills all four tables in one transaction (so running
it again with the same files gives the same tables), streaming each file with ``COPY ... FROM STDIN``
in batches of lines. Lines that are malformed at the CSV level (wrong field count, bytes that are not
UTF-8) are skipped, as the contract says; every other line is loaded as written, noise included.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from crmflow.connections import PostgresConnection, as_postgres
from crmflow.demo_data.exceptions import LegacyLoadError
from crmflow.demo_data.layout import SOURCE_FILES, SourceFile

log = logging.getLogger(__name__)

LEGACY_SCHEMA: Final = "legacy"
_BATCH_LINES: Final = 20_000


def legacy_columns(source: SourceFile) -> tuple[str, ...]:
    """Column names of ``source``'s table: the CSV header in lower case."""
    return tuple(c.lower() for c in source.columns)


def legacy_table(source: SourceFile) -> sql.Identifier:
    """``legacy.<table>`` as a safely quoted identifier."""
    return sql.Identifier(LEGACY_SCHEMA, source.table)


def create_legacy_schema(conn: psycopg.Connection[Any]) -> None:
    """Create schema ``legacy`` and its four tables if missing (in the caller's transaction)."""
    conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(LEGACY_SCHEMA)))
    for source in SOURCE_FILES:
        id_column, *rest = legacy_columns(source)
        columns = [sql.SQL("{} text primary key").format(sql.Identifier(id_column))]
        columns += [sql.SQL("{} text").format(sql.Identifier(c)) for c in rest]
        conn.execute(
            sql.SQL("create table if not exists {} ({})").format(legacy_table(source), sql.SQL(", ").join(columns))
        )


def loadable_lines(path: Path, n_columns: int) -> Iterator[bytes]:
    """The data lines of a legacy CSV file that are well-formed: valid UTF-8, ``n_columns`` fields.

    Lines are yielded as read (bytes, with their newline), one physical line per record; the header
    is skipped.
    """
    with path.open("rb") as f:
        next(f, None)
        for raw in f:
            try:
                text = raw.decode("utf-8")
                fields = next(csv.reader((text,), strict=True))
            except (UnicodeDecodeError, csv.Error, StopIteration):
                continue
            if len(fields) == n_columns:
                yield raw if raw.endswith(b"\n") else raw + b"\n"


def _copy_file(
    conn: psycopg.Connection[Any],
    path: Path,
    source: SourceFile,
    batch_lines: int,
    on_progress: Callable[[str, int], None] | None,
) -> int:
    statement = sql.SQL("copy {} ({}) from stdin (format csv)").format(
        legacy_table(source), sql.SQL(", ").join(map(sql.Identifier, legacy_columns(source)))
    )
    loaded = 0
    batch: list[bytes] = []
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for line in loadable_lines(path, len(source.columns)):
            batch.append(line)
            if len(batch) >= batch_lines:
                copy.write(b"".join(batch))
                loaded += len(batch)
                batch.clear()
                if on_progress is not None:
                    on_progress(source.table, loaded)
        if batch:
            copy.write(b"".join(batch))
            loaded += len(batch)
    if on_progress is not None:
        on_progress(source.table, loaded)
    return loaded


def load_legacy_db(
    dsn: PostgresConnection | str,
    source_dir: Path,
    *,
    batch_lines: int = _BATCH_LINES,
    on_progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Replace the contents of the legacy tables with the CSV files in ``source_dir``.

    Returns the rows loaded per table. ``on_progress(table, rows_so_far)`` is called after each batch.
    Raises :class:`LegacyLoadError` if the database refuses; nothing is changed then.
    """
    missing = [s.name for s in SOURCE_FILES if not (source_dir / s.name).is_file()]
    if missing:
        raise LegacyLoadError(f"{source_dir} lacks {', '.join(missing)}; run crmflow demo-data --out there first")
    loaded: dict[str, int] = {}
    try:
        with as_postgres(dsn, setting="--legacy-dsn").connect() as conn:
            create_legacy_schema(conn)
            conn.execute(sql.SQL("truncate {}").format(sql.SQL(", ").join(legacy_table(s) for s in SOURCE_FILES)))
            for source in SOURCE_FILES:
                loaded[source.table] = _copy_file(conn, source_dir / source.name, source, batch_lines, on_progress)
                log.info(
                    "loaded %d rows into %s.%s",
                    loaded[source.table],
                    LEGACY_SCHEMA,
                    source.table,
                    extra={"stage": "legacy-db", "entity": source.entity},
                )
    except psycopg.Error as err:
        # psycopg's message may quote a row (PII); keep the class and SQLSTATE only.
        raise LegacyLoadError(
            f"loading the legacy database failed ({type(err).__name__}, sqlstate {err.sqlstate}); "
            "the transaction was rolled back, check the DSN and retry"
        ) from None
    return loaded
