"""Change events of the legacy database (``<prefix>.cdc.<schema>.<table>``) as the LegacyRecords the mappers take.

The CDC producer (``crmflow cdc``) writes Debezium-style envelopes: ``before``, ``after``, ``op`` (c/u/d/r),
``ts_ms`` and ``source`` (lsn, txId, schema, table, snapshot, the commit time ``ts_ms``), with typed Avro values.
:func:`envelope_to_legacy` turns one into the LegacyRecord form a table snapshot has, so masking, cleansing
and every mapping rule apply to a change exactly as to a snapshot row:

- values in PostgreSQL's text form, as :mod:`producers.readers.table` reads them with ``::text`` (integers
  and numerics as digits, booleans ``true``/``false``, dates ``YYYY-MM-DD``, timestamptz in UTC as
  ``YYYY-MM-DD HH:MM:SS[.ffffff]+00``, jsonb as its canonical text), SQL NULL as None;
- ``position`` ``<schema>.<table>@<LSN>`` (LSN as PostgreSQL prints it, ``0/16B3748``), ``op`` INSERT, UPDATE,
  DELETE or SNAPSHOT (c, u, d, r), ``captured_at`` the commit time of the change's transaction;
- an unchanged TOASTed column (the ``Unchanged`` marker ``{}``) never becomes a value. An UPDATE carries its
  old row only when the table has ``REPLICA IDENTITY FULL`` (with the default identity the producer turns a
  key change into a delete and an insert, so a ``u`` event has no ``before``): then the value is taken from
  ``before``. Otherwise the column is left out of ``fields`` and named in :attr:`Change.unchanged`; the
  mapper marks the target fields it feeds as unchanged and the sink keeps their stored values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final

from crmflow.entities import column_type, id_field, required_fields

__all__ = ["OPS", "CdcSource", "Change", "ChangeFormatError", "delete_record", "envelope_to_legacy", "format_lsn",
           "pg_text"]

#: Debezium's op letters → the LegacyRecord op.
OPS: Final[Mapping[str, str]] = {"c": "INSERT", "u": "UPDATE", "d": "DELETE", "r": "SNAPSHOT"}


class ChangeFormatError(ValueError):
    """An envelope this module cannot read (unknown op, no row); the message names the topic position."""


@dataclass(frozen=True)
class Change:
    """One change as a LegacyRecord (``record``), its order (``lsn``: the commit LSN of its transaction, or of a
    snapshot row where it was read; the change's own WAL position when the envelope has no ``commit_lsn``) and the
    source columns left unchanged."""

    record: dict[str, Any]
    lsn: int
    unchanged: frozenset[str]

    @property
    def deleted(self) -> bool:
        return bool(self.record["op"] == "DELETE")


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL prints it: ``<high 32 bits>/<low 32 bits>`` in upper-case hex."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _is_unchanged(value: Any) -> bool:
    return isinstance(value, dict) and not value


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _timestamptz_text(value: datetime) -> str:
    utc = value.astimezone(UTC) if value.tzinfo else value
    text = utc.strftime("%Y-%m-%d %H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "+00"


def pg_text(value: Any) -> str | None:
    """A decoded Avro value in PostgreSQL's text output form (``::text``); None stays None.

    Raises ValueError for the ``Unchanged`` marker: it is never a value (the caller decides what it means).
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, datetime):
        return _timestamptz_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if _is_unchanged(value):
        raise ValueError("the Unchanged marker has no text form")
    raise ValueError(f"a value of type {type(value).__name__} has no PostgreSQL text form here")


def envelope_to_legacy(
    envelope: Mapping[str, Any], *, source: str, entity: str, key: str, run_id: str, origin: str = ""
) -> Change:
    """The LegacyRecord of one change of the source ``source`` (feeding ``entity``; ``key`` its key column).

    ``origin`` (``topic[partition]@offset``) names the event in errors. See the module docs for the forms.
    """
    op = str(envelope.get("op"))
    if op not in OPS:
        raise ChangeFormatError(f"{origin}: op {op!r} is not one of c, u, d, r")
    src = envelope.get("source") or {}
    before, after = envelope.get("before"), envelope.get("after")
    row = before if op == "d" else after
    if row is None:
        raise ChangeFormatError(f"{origin}: op {op!r} without its {'before' if op == 'd' else 'after'} row")
    fields: dict[str, str | None] = {}
    unchanged: set[str] = set()
    for column, value in row.items():
        if _is_unchanged(value):
            old = before.get(column) if op == "u" and before is not None else None
            if before is not None and op == "u" and not _is_unchanged(old):
                fields[column] = pg_text(old)  # REPLICA IDENTITY FULL: the old row has the value
            else:
                unchanged.add(column)
            continue
        try:
            fields[column] = pg_text(value)
        except ValueError as exc:
            raise ChangeFormatError(f"{origin}: column {column}: {exc}") from None
    key_value = fields.get(key, fields.get(key.lower()))
    if key_value is None:
        raise ChangeFormatError(f"{origin}: the change has no value for the source's key column {key}")
    lsn = int(src.get("lsn") or 0)
    # The order of a row's changes is their transactions' commit order, not their own WAL positions: a change
    # written before a snapshot chunk was read and committed after it is newer than the chunk's copy of the row.
    order = int(src.get("commit_lsn") or lsn)
    table = f"{src.get('schema', '')}.{src.get('table', '')}"
    committed = src.get("ts_ms")
    captured_at = datetime.fromtimestamp((committed if committed is not None else envelope["ts_ms"]) / 1000, UTC)
    record = {
        "source": source,
        "entity": entity,
        "source_key": key_value,
        "position": f"{table}@{format_lsn(lsn)}",
        "run_id": run_id,
        "op": OPS[op],
        "captured_at": captured_at,
        "fields": fields,
    }
    return Change(record, order, frozenset(unchanged))


@dataclass(frozen=True)
class CdcSource:
    """A table source whose table is captured: the source name, the entity it feeds and its key column."""

    source: str
    entity: str
    key: str


def delete_record(entity: str, change: Change) -> dict[str, Any]:
    """The mapped record of a DELETE: the entity's external id, the change's position, its LSN and
    ``deleted``. Its other required fields hold empty values of their type (the Avro contract requires
    them): the sink reads only the id of a delete and writes none of its values."""
    rec = change.record
    out: dict[str, Any] = {f: _EMPTY[column_type(entity, f)] for f in required_fields(entity)}
    out[id_field(entity)] = rec["source_key"]
    out.update(run_id=rec["run_id"], source=rec["source"], source_position=rec["position"], quality_flags=[],
               mapped_at=datetime.now(UTC), golden_id=None, source_lsn=change.lsn, deleted=True,
               unchanged_fields=[])
    return out


_EMPTY: Final[Mapping[str, Any]] = {"text": "", "date": date(1970, 1, 1), "numeric": Decimal(0),
                                    "timestamptz": datetime(1970, 1, 1, tzinfo=UTC), "text[]": []}
