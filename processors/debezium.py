"""Debezium's own change topics as the processor's input: its PostgreSQL connector's messages, JSON (with or without
``schemas.enable``) or Avro in the Confluent wire format, decoded into the envelope :mod:`processors.cdc` maps.

What Debezium writes (PostgreSQL connector, default converters: ``decimal.handling.mode=precise``,
``time.precision.mode=adaptive``) and what it becomes here:

- the envelope: ``op`` c/u/d/r (``t``, a TRUNCATE, and ``m``, a logical message, are not row changes: rejected
  with their own message), ``before``/``after``, ``source`` with ``lsn``, ``ts_ms`` (the commit time), ``txId``,
  ``schema``, ``table``, ``snapshot``; kept as they are;
- values, by the field's semantic type (``name`` in the JSON schema, ``connect.name`` in the Avro schema):
  ``io.debezium.time.Date`` (days since the epoch) → a date; ``MicroTimestamp``/``Timestamp``/``NanoTimestamp``
  (a ``timestamp`` without time zone) → its text ``YYYY-MM-DD HH:MM:SS[.ffffff]``; ``ZonedTimestamp`` (ISO-8601
  text of a ``timestamptz``) → an aware datetime; ``org.apache.kafka.connect.data.Decimal`` (the unscaled value,
  big-endian two's complement, base64 in JSON, its ``scale`` a schema parameter) and
  ``io.debezium.data.VariableScaleDecimal`` (``{scale, value}``) → a Decimal; ``MicroTime``/``Time`` → ``HH:MM:SS``
  text; Json, Enum, Uuid, text → the text; bytes → PostgreSQL's ``\\x`` hex text;
- ``__debezium_unavailable_value`` (an unchanged TOASTed column) → the ``Unchanged`` marker ``{}``, so the
  column keeps its value in the target, exactly as with crmflow's own capture.

JSON without schemas carries no semantic types: values are taken as they come. Dates then arrive as day numbers
and precise decimals as base64, so with ``schemas.enable=false`` set Debezium's ``decimal.handling.mode=string``
and map date columns yourself, or keep the schemas on.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

import orjson
from fastavro import parse_schema, schemaless_reader

from crmflow.serialization import SerializationError

__all__ = [
    "UNAVAILABLE",
    "DebeziumAvroDecoder",
    "DebeziumFormat",
    "DebeziumJsonDecoder",
    "convert_value",
    "normalise_envelope",
]  # fmt: skip

DebeziumFormat = Literal["json", "avro"]

UNAVAILABLE: Final = "__debezium_unavailable_value"
_UNAVAILABLE_BYTES: Final = UNAVAILABLE.encode()
_EPOCH: Final = datetime(1970, 1, 1)
_MAGIC: Final = 0
#: Time of day types: (multiply, divide) to microseconds.
_TIME_US: Final[Mapping[str, tuple[int, int]]] = {"io.debezium.time.MicroTime": (1, 1),
                                                  "io.debezium.time.Time": (1000, 1),
                                                  "io.debezium.time.NanoTime": (1, 1000)}


class DebeziumFormatError(SerializationError):
    """A message that is not a Debezium change event this module can read; the message names where it came from."""


def _timestamp_text(value: datetime) -> str:
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    return text + (f".{value.microsecond:06d}".rstrip("0") if value.microsecond else "")


def _decimal(unscaled: bytes, scale: int) -> Decimal:
    return Decimal(int.from_bytes(unscaled, "big", signed=True)).scaleb(-scale)


def _bytes(value: Any) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else bytes(value)


def convert_value(value: Any, semantic: str | None, params: Mapping[str, Any] | None = None) -> Any:
    """One column value of a Debezium event in the form :func:`processors.cdc.pg_text` reads (see the module)."""
    if value is None:
        return None
    if value in (UNAVAILABLE, _UNAVAILABLE_BYTES):
        return {}
    if semantic == "io.debezium.time.Date":
        return date(1970, 1, 1) + timedelta(days=int(value))
    if semantic == "io.debezium.time.MicroTimestamp":
        return _timestamp_text(_EPOCH + timedelta(microseconds=int(value)))
    if semantic == "io.debezium.time.Timestamp":
        return _timestamp_text(_EPOCH + timedelta(milliseconds=int(value)))
    if semantic == "io.debezium.time.NanoTimestamp":
        return _timestamp_text(_EPOCH + timedelta(microseconds=int(value) // 1000))
    if semantic == "io.debezium.time.ZonedTimestamp":
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    if semantic is not None and semantic in _TIME_US:
        mul, div = _TIME_US[semantic]
        return _timestamp_text(_EPOCH + timedelta(microseconds=int(value) * mul // div))[11:]
    if semantic == "org.apache.kafka.connect.data.Decimal":
        if isinstance(value, Decimal):  # Avro's decimal logical type, decoded by fastavro
            return value
        return _decimal(_bytes(value), int((params or {}).get("scale", 0)))
    if semantic == "io.debezium.data.VariableScaleDecimal" and isinstance(value, Mapping):
        return _decimal(_bytes(value["value"]), int(value["scale"]))
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return value


# --------------------------------------------------------------------------------------- the envelope


def _row(row: Mapping[str, Any] | None, types: Mapping[str, tuple[str | None, Mapping[str, Any]]]) -> Any:
    if row is None:
        return None
    return {col: convert_value(v, *types.get(col, (None, {}))) for col, v in row.items()}


def normalise_envelope(payload: Mapping[str, Any], types: Mapping[str, tuple[str | None, Mapping[str, Any]]],
                       *, origin: str = "") -> dict[str, Any]:  # fmt: skip
    """Debezium's envelope with every value converted (``types``: column → semantic type, parameters)."""
    op = payload.get("op")
    if op == "t":
        raise DebeziumFormatError(f"a TRUNCATE (op t) of {_table(payload)} is not applied to the target; delete "
                                  "the rows in the target on purpose if that is what you want", origin=origin or None)
    if op not in ("c", "u", "d", "r"):
        raise DebeziumFormatError(f"op {op!r} is not a row change (c, u, d, r)", origin=origin or None)
    source = dict(payload.get("source") or {})
    if source.get("lsn") is None:
        raise DebeziumFormatError("the event has no source.lsn (is it Debezium's PostgreSQL connector?)",
                                  origin=origin or None)
    source["lsn"] = int(source["lsn"])
    return {"op": op, "before": _row(payload.get("before"), types), "after": _row(payload.get("after"), types),
            "source": source, "ts_ms": payload.get("ts_ms") or source.get("ts_ms")}  # fmt: skip


def _table(payload: Mapping[str, Any]) -> str:
    src = payload.get("source") or {}
    return f"{src.get('schema', '?')}.{src.get('table', '?')}"


def _json_types(schema: Mapping[str, Any]) -> dict[str, tuple[str | None, Mapping[str, Any]]]:
    """Column → (semantic type, parameters) from a Kafka Connect JSON schema of the envelope (its before/after)."""
    out: dict[str, tuple[str | None, Mapping[str, Any]]] = {}
    for part in schema.get("fields") or ():
        if part.get("field") in ("before", "after"):
            for f in part.get("fields") or ():
                out[f["field"]] = (f.get("name"), f.get("parameters") or {})
    return out


class DebeziumJsonDecoder:
    """Debezium's JsonConverter output, with ``schemas.enable`` true (``{"schema", "payload"}``) or false."""

    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise DebeziumFormatError("not JSON", origin=origin) from None
        if not isinstance(message, dict):
            raise DebeziumFormatError("not a JSON object", origin=origin)
        if "payload" in message and "schema" in message:
            return normalise_envelope(message["payload"] or {}, _json_types(message["schema"] or {}),
                                      origin=origin or "")  # fmt: skip
        return normalise_envelope(message, {}, origin=origin or "")


_NAMED: Final = ("record", "enum", "fixed")


def _full_name(schema: Mapping[str, Any], namespace: str | None) -> str:
    """The full name of a named type defined inside ``namespace`` (the enclosing one)."""
    name = str(schema["name"])
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _collect_named(schema: Any, namespace: str | None, named: dict[str, Mapping[str, Any]]) -> None:
    """Every named type (record, enum, fixed) of an Avro schema by its full name, namespaces resolved as the Avro
    spec does: Debezium's converter spells a named type out once (``Value``, ``VariableScaleDecimal``...) and then
    refers to it by name, so a column's type may be just that name."""
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, namespace, named)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in _NAMED:
            full = _full_name(schema, namespace)
            named[full] = schema
            for f in schema.get("fields") or ():
                _collect_named(f["type"], full.rpartition(".")[0] or None, named)
        elif kind == "array":
            _collect_named(schema.get("items"), namespace, named)
        elif kind == "map":
            _collect_named(schema.get("values"), namespace, named)
        elif isinstance(kind, dict | list):
            _collect_named(kind, namespace, named)


def _resolve(avro_type: Any, namespace: str | None, named: Mapping[str, Mapping[str, Any]]) -> Any:
    """A reference to a named type (``"Value"``, ``"io.debezium.data.VariableScaleDecimal"``) → its definition."""
    if isinstance(avro_type, str):
        full = avro_type if "." in avro_type or not namespace else f"{namespace}.{avro_type}"
        return named.get(full, named.get(avro_type, avro_type))
    return avro_type


def _avro_types(schema: Mapping[str, Any]) -> dict[str, tuple[str | None, Mapping[str, Any]]]:
    """Column → (connect.name, connect.parameters) from the Avro schema of a Debezium envelope."""
    named: dict[str, Mapping[str, Any]] = {}
    _collect_named(schema, None, named)
    envelope_ns = _full_name(schema, None).rpartition(".")[0] if "name" in schema else ""
    out: dict[str, tuple[str | None, Mapping[str, Any]]] = {}
    for part in schema.get("fields") or ():
        if part.get("name") not in ("before", "after"):
            continue
        for branch in part["type"] if isinstance(part["type"], list) else [part["type"]]:
            row = _resolve(branch, envelope_ns, named)
            if not (isinstance(row, dict) and row.get("type") == "record"):
                continue
            row_ns = _full_name(row, envelope_ns).rpartition(".")[0]
            for f in row.get("fields") or ():
                for t in f["type"] if isinstance(f["type"], list) else [f["type"]]:
                    t = _resolve(t, row_ns, named)
                    if isinstance(t, dict):
                        out[f["name"]] = (t.get("connect.name"), t.get("connect.parameters") or {})
                        break
    return out


class DebeziumAvroDecoder:
    """Debezium's AvroConverter output (Confluent wire format: magic byte 0, the 4-byte schema id, Avro), the
    writer schema fetched from the registry once per id (``registry.get_schema(id)``)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._schemas: dict[int, tuple[Any, dict[str, tuple[str | None, Mapping[str, Any]]]]] = {}

    def _schema(self, schema_id: int) -> tuple[Any, dict[str, tuple[str | None, Mapping[str, Any]]]]:
        known = self._schemas.get(schema_id)
        if known is None:
            raw = orjson.loads(self._registry.get_schema(schema_id).schema_str)
            known = self._schemas[schema_id] = (parse_schema(raw), _avro_types(raw))
        return known

    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        import io

        if len(data) < 5 or data[0] != _MAGIC:
            raise DebeziumFormatError("not in the Confluent wire format (magic byte 0, schema id)", origin=origin)
        parsed, types = self._schema(int.from_bytes(data[1:5], "big"))
        payload = schemaless_reader(io.BytesIO(data[5:]), parsed, None)
        if not isinstance(payload, dict):
            raise DebeziumFormatError("not a Debezium envelope", origin=origin)
        return normalise_envelope(payload, types, origin=origin or "")


def debezium_decoder(fmt: DebeziumFormat, registry: Any) -> DebeziumJsonDecoder | DebeziumAvroDecoder:
    return DebeziumJsonDecoder() if fmt == "json" else DebeziumAvroDecoder(registry)
