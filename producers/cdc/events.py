"""A captured table's columns as Avro, and its changes as Debezium-style envelopes.

Type mapping (PostgreSQL → Avro), values arriving in PostgreSQL's text format (``DateStyle=ISO``,
``TimeZone=UTC`` on the replication connection):

=================================  ===========================================================================
smallint, integer                  ``int``
bigint                             ``long``
numeric(p, s)                      ``bytes`` with logical type ``decimal`` (precision p, scale s): exact, and what
                                   Debezium's ``decimal.handling.mode=precise`` writes
numeric (no precision)             ``string`` (Avro decimals need a fixed scale; the text keeps every digit)
real, double precision             ``double``
boolean                            ``boolean``
date                               ``int``, logical ``date``
timestamptz                        ``long``, logical ``timestamp-micros`` (UTC)
text, varchar, char, uuid, json,   ``string`` (jsonb as its canonical text, like Debezium's ``io.debezium.data.Json``)
jsonb, timestamp, anything else
enum                               ``string``: adding a label in PostgreSQL is then no schema change; the labels
                                   are listed in the field's ``doc``
=================================  ===========================================================================

Every row column is a union ``["null", <type>, "Unchanged"]``. ``Unchanged`` is an empty record: the branch an
UPDATE's unchanged TOASTed column takes (pgoutput's ``u``), so the placeholder can never be read as a value;
decoded, it is ``{}`` (see :func:`is_unchanged`). The key is a record of the primary-key columns.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import psycopg

from producers.cdc.exceptions import CdcConfigError
from producers.cdc.pgoutput import UNCHANGED, TupleValue

__all__ = ["ColumnInfo", "Op", "TableEvents", "TableInfo", "is_unchanged", "load_table"]

Op = Literal["c", "u", "d", "r"]
UNCHANGED_RECORD: dict[str, Any] = {"type": "record", "name": "Unchanged", "namespace": "io.crmflow.cdc", "fields": [],
                                    "doc": "an unchanged TOASTed value PostgreSQL did not send; keep the old value"}


def is_unchanged(value: Any) -> bool:
    """Whether a decoded row value is the ``Unchanged`` marker (an empty record), not a value."""
    return isinstance(value, dict) and not value


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_oid: int
    type_name: str  # format_type(): "numeric(12,2)", "timestamp with time zone", "tier"
    type_modifier: int
    kind: str  # pg_type.typtype: b base, e enum, d domain...
    enum_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    key: tuple[str, ...]  # primary-key columns, in key order

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


_COLUMNS_SQL = """
select a.attname, a.atttypid::int, format_type(a.atttypid, a.atttypmod), a.atttypmod, t.typtype::text,
       coalesce((select k.n from unnest(i.indkey) with ordinality k(att, n) where k.att = a.attnum), 0),
       coalesce((select array_agg(e.enumlabel::text order by e.enumsortorder) from pg_enum e
                 where e.enumtypid = t.oid), '{}')
from pg_attribute a
join pg_type t on t.oid = a.atttypid
left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped
order by a.attnum
"""


def load_table(conn: psycopg.Connection[Any], qualified: str) -> TableInfo:
    """The columns and primary key of ``schema.table`` from the catalog; CdcConfigError if missing or keyless."""
    schema, _, name = qualified.rpartition(".")
    try:
        rows = conn.execute(_COLUMNS_SQL, (qualified,)).fetchall()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        raise CdcConfigError(f"table {qualified} (cdc.tables) does not exist in the legacy database") from None
    columns = tuple(ColumnInfo(r[0], r[1], r[2], r[3], r[4], tuple(r[6])) for r in rows)
    key = tuple(r[0] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5]))
    if not key:
        raise CdcConfigError(f"table {qualified} (cdc.tables) has no primary key; CDC events are keyed by it")
    return TableInfo(schema or "public", name, columns, key)


def _avro_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text) if re.match(r"[A-Za-z_]", text) else f"_{text}"


Converter = Callable[[str], Any]


def _numeric(precision: int, scale: int) -> Converter:
    def convert(text: str) -> Decimal:
        value = Decimal(text)
        if not value.is_finite():
            raise ValueError("NaN/Infinity has no Avro decimal")
        return value

    return convert


def _timestamptz(text: str) -> datetime:
    return datetime.fromisoformat(text)


def column_type(col: ColumnInfo) -> tuple[Any, Converter]:
    """The Avro type of a column and the function from its text value to the Avro value."""
    oid = col.type_oid
    if oid in (21, 23):
        return "int", int
    if oid == 20:
        return "long", int
    if oid == 1700 and col.type_modifier >= 4:
        precision, scale = ((col.type_modifier - 4) >> 16) & 0xFFFF, (col.type_modifier - 4) & 0xFFFF
        return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}, _numeric(
            precision, scale
        )
    if oid in (700, 701):
        return "double", float
    if oid == 16:
        return "boolean", lambda text: text == "t"
    if oid == 1082:
        return {"type": "int", "logicalType": "date"}, date.fromisoformat
    if oid == 1184:
        return {"type": "long", "logicalType": "timestamp-micros"}, _timestamptz
    return "string", str


class TableEvents:
    """One captured table: its Avro key and envelope schemas, and rows (pgoutput tuples) → envelopes."""

    def __init__(self, table: TableInfo, *, database: str) -> None:
        self.table = table
        self.database = database
        types = [column_type(c) for c in table.columns]
        self._converters: list[Converter] = [conv for _, conv in types]
        self._names = [c.name for c in table.columns]
        self._key_index = [self._names.index(k) for k in table.key]
        ns = f"io.crmflow.cdc.{_avro_name(database)}.{_avro_name(table.schema)}.{_avro_name(table.name)}"
        fields = []
        for i, (col, (avro, _)) in enumerate(zip(table.columns, types, strict=True)):
            doc = f"{col.type_name}" + (f"; enum labels: {', '.join(col.enum_labels)}" if col.enum_labels else "")
            unchanged: Any = UNCHANGED_RECORD if i == 0 else "io.crmflow.cdc.Unchanged"
            fields.append({"name": col.name, "type": ["null", avro, unchanged], "default": None, "doc": doc})
        value = {"type": "record", "name": "Value", "namespace": ns, "fields": fields}
        self.key_schema: dict[str, Any] = {
            "type": "record", "name": "Key", "namespace": ns,
            "fields": [{"name": table.columns[i].name, "type": types[i][0]} for i in self._key_index],
        }  # fmt: skip
        self.value_schema: dict[str, Any] = {
            "type": "record", "name": "Envelope", "namespace": ns,
            "doc": f"a change of {table.qualified} in database {database}, Debezium's envelope",
            "fields": [
                {"name": "before", "type": ["null", value], "default": None},
                {"name": "after", "type": ["null", "Value"], "default": None},
                {"name": "op", "type": "string", "doc": "c create, u update, d delete, r read (snapshot)"},
                {"name": "ts_ms", "type": "long", "doc": "when crmflow produced the event"},
                {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.crmflow.cdc",
                                            "fields": [
                    {"name": "connector", "type": "string"},
                    {"name": "db", "type": "string"},
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "lsn", "type": "long", "doc": "the change's WAL position"},
                    {"name": "txId", "type": ["null", "long"], "default": None},
                    {"name": "ts_ms", "type": "long", "doc": "the transaction's commit time"},
                    {"name": "snapshot", "type": "boolean"},
                    {"name": "commit_lsn", "type": ["null", "long"], "default": None,
                     "doc": "the WAL position of the transaction's commit record (a snapshot row: where it was "
                            "read): a row's changes in commit order, the order to apply them in"},
                ]}},
            ],
        }  # fmt: skip

    def row(self, values: Sequence[TupleValue]) -> dict[str, Any]:
        """A pgoutput tuple as a row record: text converted, ``u`` as the Unchanged marker, nulls as None."""
        if len(values) != len(self._names):
            raise ValueError(f"{self.table.qualified}: tuple has {len(values)} columns, the table {len(self._names)}")
        out: dict[str, Any] = {}
        for name, conv, value in zip(self._names, self._converters, values, strict=True):
            if value is None:
                out[name] = None
            elif value is UNCHANGED:
                out[name] = {}
            elif isinstance(value, str):
                out[name] = conv(value)
            else:
                raise ValueError(f"{self.table.qualified}.{name}: binary tuple values are not requested")
        return out

    def key(self, values: Sequence[TupleValue]) -> dict[str, Any]:
        """The key record from a tuple (new row, or the old key of a delete)."""
        out = {}
        for i in self._key_index:
            value = values[i]
            if not isinstance(value, str):
                raise ValueError(f"{self.table.qualified}: key column {self._names[i]} missing from the tuple")
            out[self._names[i]] = self._converters[i](value)
        return out

    def envelope(
        self, op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None, *, lsn: int, xid: int | None,
        commit_ms: int, snapshot: bool = False, commit_lsn: int | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """``commit_lsn``: the commit record's LSN of the change's transaction; None (a snapshot row): ``lsn``."""
        return {
            "before": before, "after": after, "op": op, "ts_ms": int(time.time() * 1000),
            "source": {"connector": "crmflow", "db": self.database, "schema": self.table.schema,
                       "table": self.table.name, "lsn": lsn, "txId": xid, "ts_ms": commit_ms, "snapshot": snapshot,
                       "commit_lsn": lsn if commit_lsn is None else commit_lsn},
        }  # fmt: skip
