"""PostgreSQL tables, streamed in key order through a server-side cursor, resumable after the last key.

Every column is read as ``::text`` (SQL NULL stays None), so values reach Kafka exactly as the database
prints them. The count for the progress bar and the rows come from one REPEATABLE READ transaction, so
they agree. Resuming runs ``WHERE key > %s ORDER BY key``: the key column must be unique and not null
(the legacy tables' primary key). Positions are ``<schema>.<table>:<n>``, n being the row's 1-based
rank in key order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from crmflow.connections import PostgresConnection, as_postgres
from producers.exceptions import SourceOpenError, SourceUnavailableError
from producers.readers.base import Item, KeyMark, ReaderBase, Record

log = logging.getLogger(__name__)

DEFAULT_FETCH_ROWS = 5000


class TableReader(ReaderBase):
    """Streams ``table`` (``schema.table`` or ``table``) of the database at ``dsn``, ordered by ``key``."""

    def __init__(
        self,
        dsn: PostgresConnection | str,
        table: str,
        *,
        key: str,
        start: KeyMark | None = None,
        fetch_rows: int = DEFAULT_FETCH_ROWS,
        connect_timeout_s: int = 10,
    ) -> None:
        self.dsn = dsn
        self.table = table
        self.name = table
        self.key = key
        self.mark = start
        self.fetch_rows = fetch_rows
        self.connect_timeout_s = connect_timeout_s
        self.columns: list[str] = []
        self.key_column = ""
        self._conn: psycopg.Connection[Any] | None = None
        self._total: int | None = None

    @property
    def total(self) -> int | None:
        return self._total

    @property
    def start(self) -> int:
        return self.mark.rows if self.mark else 0

    def _ident(self) -> sql.Composable:
        parts = self.table.split(".")
        if len(parts) > 2 or not all(parts):
            raise SourceOpenError(f"table {self.table!r}: expected 'table' or 'schema.table'")
        return sql.Identifier(*parts)

    def open(self) -> None:
        ident = self._ident()
        try:
            conn = as_postgres(self.dsn).connect(connect_timeout=self.connect_timeout_s)
        except psycopg.OperationalError as exc:
            # psycopg's message names host and port, never the password.
            raise SourceUnavailableError(f"table {self.table}: cannot connect to PostgreSQL: {exc}") from exc
        self._conn = conn
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(ident))
                self.columns = [c.name for c in cur.description or []]
                self.key_column = _column(self.columns, self.key, self.table)
                where, params = self._where()
                cur.execute(sql.SQL("SELECT count(*) FROM {}{}").format(ident, where), params)
                row = cur.fetchone()
                self._total = self.start + (int(row[0]) if row else 0)
        except psycopg.errors.UndefinedTable as exc:
            self.close()
            raise SourceOpenError(f"table {self.table} does not exist (check the source's table)") from exc
        except psycopg.OperationalError as exc:
            self.close()
            raise SourceUnavailableError(f"table {self.table}: PostgreSQL failed: {exc}") from exc
        except psycopg.Error as exc:
            self.close()
            raise SourceOpenError(f"table {self.table}: {_reason(exc)}") from exc
        except BaseException:
            self.close()
            raise

    def _where(self) -> tuple[sql.Composable, list[Any]]:
        if self.mark is None:
            return sql.SQL(""), []
        return sql.SQL(" WHERE {} > %s").format(sql.Identifier(self.key_column)), [self.mark.key]

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            finally:
                self._conn.close()
                self._conn = None

    def __iter__(self) -> Iterator[Item]:
        if self._conn is None:
            raise RuntimeError("TableReader.open() must be called before iterating")
        return self._items(self._conn)

    def _items(self, conn: psycopg.Connection[Any]) -> Iterator[Item]:
        key_col = sql.Identifier(self.key_column)
        select = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in self.columns)
        where, params = self._where()
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(select, self._ident(), where, key_col)
        columns, key_index, name = self.columns, self.columns.index(self.key_column), self.table
        rows = self.start
        last_key = self.mark.key if self.mark else ""
        try:
            with conn.cursor(name="crmflow_snapshot") as cur:
                cur.itersize = self.fetch_rows
                cur.execute(query, params)
                for row in cur:
                    rows += 1
                    key = row[key_index]
                    if key is not None:
                        last_key = key
                    mark = KeyMark(key=last_key, rows=rows)
                    fields: dict[str, str | None] = dict(zip(columns, row, strict=True))
                    yield Record(key or "", f"{name}:{rows}", fields, mark)
        except psycopg.OperationalError as exc:
            raise SourceUnavailableError(f"table {self.table}: connection lost after row {rows}: {exc}") from exc
        except psycopg.Error as exc:
            raise SourceOpenError(f"table {self.table}: query failed after row {rows}: {_reason(exc)}") from exc
        self.mark = KeyMark(key=last_key, rows=rows)


def _column(columns: list[str], key: str, table: str) -> str:
    if key in columns:
        return key
    matches = [c for c in columns if c.casefold() == key.casefold()]
    if len(matches) == 1:
        return matches[0]
    raise SourceOpenError(f"table {table}: key column {key!r} not found (columns: {', '.join(columns)})")


def _reason(exc: psycopg.Error) -> str:
    """The server's primary message and SQLSTATE, without DETAIL (which may quote row values)."""
    primary = exc.diag.message_primary if exc.diag is not None else None
    return f"{primary or type(exc).__name__} (SQLSTATE {exc.sqlstate or '?'})"
