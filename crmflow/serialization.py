"""Avro in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.

A codec registers (or looks up) its schema once, at construction; encoding then costs one fastavro
``schemaless_writer`` call and no registry round trip. Decoding fetches a writer schema by id on first
sight and resolves it against the codec's own (reader) schema, so consumers keep working while producers
evolve their schema within BACKWARD compatibility. The bytes are interchangeable with confluent-kafka's
``AvroSerializer``/``AvroDeserializer``, and ``serialize``/``deserialize`` have their ``(obj, ctx)`` shape.
Schema loading and subject naming live in :mod:`crmflow.registry` and are re-exported here.

Errors never carry field values: a record that does not fit its schema is reported by field name only.

:class:`JsonCodec` carries records of an Avro schema as JSON, for the topics only crmflow's own stages
read; it decodes exactly what an Avro round trip would give.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import validate

from crmflow.avro_compiled import TRUNCATED, CompiledSchema, compile_schema
from crmflow.exceptions import TerminalError
from crmflow.registry import (
    TRANSPORT_ERRORS,
    ParsedSchema,
    RegistryRefusedError,
    SubjectNameFn,
    load_schema,
    record_subject,
    registry_failure,
    topic_subject,
)

__all__ = [
    "AvroCodec",
    "AvroDecoder",
    "BadMagicByteError",
    "JsonCodec",
    "ParsedSchema",
    "RecordEncodeError",
    "SchemaMismatchError",
    "SerializationError",
    "TruncatedMessageError",
    "UnknownSchemaIdError",
    "load_schema",
    "record_subject",
    "split_header",
    "topic_subject",
]

logger = logging.getLogger(__name__)

MAGIC_BYTE = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">BI")
# What fastavro raises on a record that does not fit, or on bytes that are not what the schema says.
_WRITE_ERRORS = (ValueError, TypeError, AttributeError, LookupError, ArithmeticError)
_READ_ERRORS = (SchemaResolutionError, ValueError, TypeError, AttributeError, LookupError, ArithmeticError)

# ---------------------------------------------------------------------------------------------- errors


class SerializationError(TerminalError):
    """A value could not be encoded or decoded; retrying the same bytes or record will not help.

    ``origin`` says which message it was (``topic[partition]@offset``) when the caller passed it.
    """

    def __init__(self, message: str, *, origin: str | None = None, schema_id: int | None = None) -> None:
        super().__init__(f"{origin}: {message}" if origin else message)
        self.origin = origin
        self.schema_id = schema_id


class TruncatedMessageError(SerializationError):
    """The bytes end before the 5-byte header or the Avro body does."""


class BadMagicByteError(SerializationError):
    """Byte 0 is not the Confluent magic byte 0: the message was not written by a registry serializer."""


class UnknownSchemaIdError(SerializationError):
    """The schema id in bytes 1-4 is not known to the registry."""


class SchemaMismatchError(SerializationError):
    """The writer schema cannot be resolved to the reader schema, or the body does not fit it."""


class RecordEncodeError(SerializationError):
    """A record does not fit the codec's schema; ``fields`` names the offending top-level fields."""

    def __init__(self, message: str, *, fields: list[str], schema_id: int | None = None) -> None:
        super().__init__(message, schema_id=schema_id)
        self.fields = fields


# -------------------------------------------------------------------------------------------- framing


def split_header(data: bytes, *, origin: str | None = None) -> int:
    """Check the 5-byte Confluent header of ``data`` and return its schema id."""
    if len(data) < HEADER_SIZE:
        raise TruncatedMessageError(
            f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte Confluent header "
            "(magic byte at offset 0, schema id at offsets 1-4)",
            origin=origin,
        )
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise BadMagicByteError(
            f"byte at offset 0 is 0x{data[0]:02x}, expected magic byte 0x00: the value was not written "
            "by a schema-registry serializer",
            origin=origin,
        )
    return int(schema_id)


def _bad_fields(parsed: Any, obj: Mapping[str, Any]) -> list[str]:
    """Names of the top-level fields of ``obj`` that do not fit ``parsed`` (slow; error path only)."""
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return []
    bad = []
    for fld in parsed["fields"]:
        name = fld["name"]
        if name not in obj:
            if "default" not in fld:
                bad.append(name)
            continue
        try:
            fits = validate(obj[name], fld["type"], raise_errors=False)
        except _WRITE_ERRORS:  # e.g. a reference to a named type defined in another field
            fits = False
        if not fits:
            bad.append(name)
    return bad


# -------------------------------------------------------------------------------------------- decoder


@lru_cache(maxsize=256)
def _canonical_str(schema_str: str) -> str:
    return str(to_parsing_canonical_form(json.loads(schema_str)))


def _canonical(schema: ParsedSchema) -> str:
    return _canonical_str(schema.schema_str)


_COMPILED: dict[str, CompiledSchema] = {}


def _compiled(schema: ParsedSchema) -> CompiledSchema:
    """The schema's compiled code, once per schema text (a codec and its decoder share it; defaults and all, so
    the full text is the key, not the canonical form)."""
    found = _COMPILED.get(schema.schema_str)
    if found is None:
        found = _COMPILED[schema.schema_str] = compile_schema(schema.parsed)
    return found


class AvroDecoder:
    """Decodes Confluent-framed Avro into dicts shaped by a reader schema; never writes to the registry.

    Writer schemas are fetched by id on first sight and kept for the decoder's lifetime. With
    ``reader=None`` records come back in their writer's shape.
    """

    def __init__(self, registry_client: SchemaRegistryClient, reader: ParsedSchema | None = None) -> None:
        self._client = registry_client
        self._reader = reader
        # schema id -> (writer, reader or None when they are the same schema, the compiled decoder or None)
        self._plans: dict[int, tuple[Any, Any, Any]] = {}

    @property
    def reader(self) -> ParsedSchema | None:
        return self._reader

    def know(self, schema_id: int, schema: ParsedSchema) -> None:
        """Seed the cache: ``schema_id`` is ``schema`` (a codec knows its own id without a fetch)."""
        reader = self._reader
        # Compare canonical forms: the registry may hand back the same schema formatted differently, and
        # decoding without resolution is about twice as fast.
        same = reader is None or _canonical(schema) == _canonical(reader)
        # Without resolution, the schema's compiled decoder reads it (crmflow.avro_compiled); with
        # resolution, or a schema it does not compile, fastavro does.
        fast = _compiled(schema).decode if same else None
        self._plans[schema_id] = (schema.parsed, None if same or reader is None else reader.parsed, fast)

    def _plan(self, schema_id: int, origin: str | None) -> tuple[Any, Any, Any]:
        plan = self._plans.get(schema_id)
        if plan is not None:
            return plan
        try:
            registered = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaIdError(
                    f"schema id {schema_id} (header offsets 1-4) is not known to the registry",
                    origin=origin,
                    schema_id=schema_id,
                ) from None
            raise registry_failure(exc, f"fetching schema id {schema_id}") from exc
        except TRANSPORT_ERRORS as exc:
            raise registry_failure(exc, f"fetching schema id {schema_id}") from exc
        if registered.schema_type not in (None, "AVRO"):
            raise SchemaMismatchError(
                f"schema id {schema_id} is a {registered.schema_type} schema, not AVRO",
                origin=origin,
                schema_id=schema_id,
            )
        if registered.schema_str is None:
            raise SchemaMismatchError(
                f"registry returned no text for schema id {schema_id}", origin=origin, schema_id=schema_id
            )
        writer = ParsedSchema.from_str(registered.schema_str)
        logger.debug("fetched writer schema %s id=%d", writer.full_name, schema_id)
        self.know(schema_id, writer)
        return self._plans[schema_id]

    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        """Decode one message value. ``origin`` (``topic[partition]@offset``) only labels errors."""
        schema_id = split_header(data, origin=origin)
        writer, reader, fast = self._plan(schema_id, origin)
        if fast is not None:
            record, end = self._read_compiled(fast, data, schema_id, origin)
        else:
            record, end = self._read_fastavro(writer, reader, data, schema_id, origin)
        if end != len(data):
            raise SchemaMismatchError(
                f"{len(data) - end} bytes left after the record at offset {end}: the body "
                f"was not written with schema id {schema_id}",
                origin=origin,
                schema_id=schema_id,
            )
        if not isinstance(record, dict):
            raise SchemaMismatchError(
                f"schema id {schema_id} does not describe a record", origin=origin, schema_id=schema_id
            )
        return record

    @staticmethod
    def _read_compiled(fast: Any, data: bytes, schema_id: int, origin: str | None) -> tuple[Any, int]:
        try:
            record, end = fast(data, HEADER_SIZE)
        except TRUNCATED:
            end = len(data) + 1
        except _READ_ERRORS as exc:
            # Decoding garbage may raise anything, and its text could echo bytes of the payload.
            raise SchemaMismatchError(
                f"cannot decode body with schema id {schema_id}: {type(exc).__name__}",
                origin=origin,
                schema_id=schema_id,
            ) from None
        if end > len(data):
            raise TruncatedMessageError(
                f"Avro body ends early: {len(data)} bytes do not hold a record of schema id {schema_id}",
                origin=origin,
                schema_id=schema_id,
            )
        return record, end

    @staticmethod
    def _read_fastavro(writer: Any, reader: Any, data: bytes, schema_id: int, origin: str | None) -> tuple[Any, int]:
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            return schemaless_reader(buf, writer, reader), buf.tell()
        except EOFError:
            raise TruncatedMessageError(
                f"Avro body ends early at offset {buf.tell()} of {len(data)} (schema id {schema_id})",
                origin=origin,
                schema_id=schema_id,
            ) from None
        except _READ_ERRORS as exc:
            # Resolution errors name schemas, never values; decoding garbage may raise anything, and its
            # text could echo bytes of the payload, so only the type name is kept.
            detail = str(exc) if isinstance(exc, SchemaResolutionError) else type(exc).__name__
            raise SchemaMismatchError(
                f"cannot decode body with schema id {schema_id}: {detail}", origin=origin, schema_id=schema_id
            ) from None

    def deserialize(self, data: bytes | None, ctx: SerializationContext | None = None) -> dict[str, Any] | None:
        """confluent-kafka's deserializer shape ``(data, ctx) -> obj``; ``None`` passes through."""
        if data is None:
            return None
        origin = f"{ctx.topic} {ctx.field}" if ctx is not None else None
        return self.decode(data, origin=origin)

    __call__ = deserialize


# ---------------------------------------------------------------------------------------------- codec


class AvroCodec:
    """Encoder and decoder for one subject and one schema.

    The schema is registered under ``subject`` at construction (``auto_register=True``; re-registering
    the same schema returns the existing id) or only looked up (``auto_register=False``, fails if the
    registry does not have it). The id is kept; ``encode`` never talks to the registry.
    """

    def __init__(
        self,
        registry_client: SchemaRegistryClient,
        subject: str,
        schema: ParsedSchema | str,
        *,
        auto_register: bool = True,
    ) -> None:
        self.schema = load_schema(schema) if isinstance(schema, str) else schema
        self.subject = subject
        self.schema_id = self._register(registry_client, auto_register)
        self._header = _HEADER.pack(MAGIC_BYTE, self.schema_id)
        self._parsed = self.schema.parsed
        self._fast = _compiled(self.schema).encode
        self._decoder = AvroDecoder(registry_client, self.schema)
        self._decoder.know(self.schema_id, self.schema)

    @classmethod
    def for_topic(
        cls,
        registry_client: SchemaRegistryClient,
        topic: str,
        schema: ParsedSchema | str,
        *,
        field: MessageField | str = MessageField.VALUE,
        subject_name: SubjectNameFn = topic_subject,
        auto_register: bool = True,
    ) -> AvroCodec:
        """A codec whose subject comes from ``subject_name(topic, field)`` (TopicNameStrategy default)."""
        return cls(registry_client, subject_name(topic, field), schema, auto_register=auto_register)

    def _register(self, client: SchemaRegistryClient, auto_register: bool) -> int:
        what = f"schema {self.schema.full_name} under subject {self.subject}"
        registry_schema = self.schema.registry_schema()
        # normalize: Apicurio compares schema text unless asked to compare canonical forms.
        try:
            if auto_register:
                return int(client.register_schema(self.subject, registry_schema, normalize_schemas=True))
            found = client.lookup_schema(self.subject, registry_schema, normalize_schemas=True)
            if found.schema_id is None:
                raise RegistryRefusedError(f"registry returned no id for {what}")
            return int(found.schema_id)
        except SchemaRegistryError as exc:
            if not auto_register and exc.http_status_code == 404:
                raise RegistryRefusedError(
                    f"{what} is not registered; run `crmflow schemas register` or allow auto_register"
                ) from exc
            raise registry_failure(exc, f"registering {what}") from exc
        except TRANSPORT_ERRORS as exc:
            raise registry_failure(exc, f"registering {what}") from exc

    @property
    def header(self) -> bytes:
        """The 5 framing bytes every encoded value starts with."""
        return self._header

    def encode(self, obj: Mapping[str, Any]) -> bytes:
        """One record to Confluent-framed Avro bytes."""
        if self._fast is not None:
            out = bytearray(self._header)
            try:
                self._fast(obj, out)
            except _WRITE_ERRORS:
                raise self._encode_error(obj) from None
            return bytes(out)
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            schemaless_writer(buf, self._parsed, obj)
        except _WRITE_ERRORS:
            raise self._encode_error(obj) from None
        return buf.getvalue()

    def encode_many(self, objs: Iterable[Mapping[str, Any]]) -> list[bytes]:
        """Many records, reusing one buffer; fails on the first record that does not fit."""
        if self._fast is not None:
            return self._encode_fast(objs)
        out: list[bytes] = []
        buf = io.BytesIO()
        buf.write(self._header)
        parsed = self._parsed
        for obj in objs:
            buf.seek(HEADER_SIZE)
            buf.truncate()
            try:
                schemaless_writer(buf, parsed, obj)
            except _WRITE_ERRORS:
                raise self._encode_error(obj, index=len(out)) from None
            out.append(buf.getvalue())
        return out

    def _encode_fast(self, objs: Iterable[Mapping[str, Any]]) -> list[bytes]:
        out: list[bytes] = []
        buf = bytearray(self._header)
        encode = self._fast
        assert encode is not None
        for obj in objs:
            try:
                encode(obj, buf)
            except _WRITE_ERRORS:
                raise self._encode_error(obj, index=len(out)) from None
            out.append(bytes(buf))
            del buf[HEADER_SIZE:]
        return out

    def _encode_error(self, obj: Mapping[str, Any], index: int | None = None) -> RecordEncodeError:
        # The writer's own message may quote the value, so it is dropped (``from None``) and only
        # field names are reported.
        at = f" (record {index} of the batch)" if index is not None else ""
        bad = _bad_fields(self._parsed, obj) if isinstance(obj, Mapping) else []
        where = f"fields {', '.join(bad)}" if bad else "a nested value"
        return RecordEncodeError(
            f"record{at} does not fit {self.schema.full_name} (subject {self.subject}): check {where}",
            fields=bad,
            schema_id=self.schema_id,
        )

    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        """Decode bytes written with any schema id the registry knows, resolved to this codec's schema."""
        return self._decoder.decode(data, origin=origin)

    def serialize(self, obj: Mapping[str, Any] | None, ctx: SerializationContext | None = None) -> bytes | None:
        """confluent-kafka's serializer shape ``(obj, ctx) -> bytes``; ``None`` (a tombstone) passes."""
        return None if obj is None else self.encode(obj)

    def deserialize(self, data: bytes | None, ctx: SerializationContext | None = None) -> dict[str, Any] | None:
        """confluent-kafka's deserializer shape ``(data, ctx) -> obj``; ``None`` passes through."""
        return self._decoder.deserialize(data, ctx)


# ----------------------------------------------------------------------------------------- json codec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1)
_MISSING = object()


def _logical(avro_type: Any) -> str | None:
    """The logical type of a field's type, looking through a union with null."""
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        return _logical(branches[0]) if len(branches) == 1 else None
    return avro_type.get("logicalType") if isinstance(avro_type, dict) else None


def _to_date(value: Any) -> date:
    if isinstance(value, str):
        return date.fromisoformat(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH_DAY + timedelta(days=value)
    raise TypeError(type(value).__name__)


def _to_instant(value: Any) -> datetime:
    """A timestamp-millis value as Avro gives it back: UTC, whole milliseconds (a naive time is UTC)."""
    if isinstance(value, str):
        at = datetime.fromisoformat(value)
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        return at.replace(microsecond=at.microsecond - at.microsecond % 1000)
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH + timedelta(milliseconds=value)
    raise TypeError(type(value).__name__)


class JsonCodec:
    """Records of one Avro record schema, as JSON: for the topics only crmflow's own stages read (the hop of
    clean records to the matcher), where an Avro round trip costs about ten times as much CPU.

    A decoded record is what an Avro round trip of the same record gives: the schema's fields and no others,
    a missing field's default, ``date`` fields as dates and ``timestamp-millis`` fields as UTC datetimes cut to
    the millisecond. Values start with ``{``; values framed as Avro (magic byte 0, as an earlier crmflow wrote
    these topics) decode with ``avro`` when it is given. Errors name offsets and fields, never values.
    """

    def __init__(self, schema: ParsedSchema, *, avro: AvroDecoder | None = None) -> None:
        parsed = schema.parsed
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise ValueError(f"{schema.full_name}: a JsonCodec needs a record schema")
        self.schema = schema
        self._avro = avro
        self._fields: list[tuple[str, Any]] = [(f["name"], f.get("default", _MISSING)) for f in parsed["fields"]]
        self._required = frozenset(name for name, default in self._fields if default is _MISSING)
        converters = {"date": _to_date, "timestamp-millis": _to_instant}
        self._convert: list[tuple[str, Any]] = []
        for f in parsed["fields"]:
            logical = _logical(f["type"])
            if logical in converters:
                self._convert.append((f["name"], converters[logical]))
            elif logical is not None or _nested_logical(f["type"]):
                raise ValueError(f"{schema.full_name}.{f['name']}: a JsonCodec converts top-level date and "
                                 "timestamp-millis fields only")

    def encode_many(self, objs: Iterable[Mapping[str, Any]]) -> list[bytes]:
        """Many records, each projected on the schema's fields; fails on the first one that does not fit."""
        out: list[bytes] = []
        fields, required = self._fields, self._required
        for obj in objs:
            if not required <= obj.keys():
                raise self._encode_error(obj, len(out))
            try:
                out.append(orjson.dumps({name: obj.get(name, default) for name, default in fields}))
            except TypeError:
                raise self._encode_error(obj, len(out)) from None
        return out

    def _encode_error(self, obj: Mapping[str, Any], index: int) -> RecordEncodeError:
        bad = _bad_fields(self.schema.parsed, obj)
        where = f"fields {', '.join(bad)}" if bad else "a nested value"
        return RecordEncodeError(f"record {index} of the batch does not fit {self.schema.full_name}: check {where}",
                                 fields=bad)

    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        """One value: JSON as :meth:`encode_many` writes it, or Avro with the registry's wire header."""
        head = data[:1]
        if head != b"{":
            if head == b"\x00" and self._avro is not None:
                return self._avro.decode(data, origin=origin)
            if not head:
                raise TruncatedMessageError("empty message: expected a JSON object", origin=origin)
            raise BadMagicByteError(f"byte at offset 0 is 0x{data[0]:02x}, expected '{{' (a JSON object"
                                    f"{' or Avro magic byte 0x00' if self._avro is not None else ''})", origin=origin)
        try:
            loaded = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SchemaMismatchError(f"not JSON at offset {exc.pos} of {len(data)}", origin=origin) from None
        if not isinstance(loaded, dict):
            raise SchemaMismatchError("the JSON value is not an object", origin=origin)
        record: dict[str, Any] = loaded
        if len(record) != len(self._fields) or not all(name in record for name, _ in self._fields):
            record = self._project(record, origin)
        for name, convert in self._convert:
            value = record[name]
            if value is not None:
                try:
                    record[name] = convert(value)
                except (TypeError, ValueError, OverflowError):
                    raise SchemaMismatchError(f"field {name} is not a {self.schema.full_name} "
                                              f"{convert.__name__.removeprefix('_to_')}", origin=origin) from None
        return record

    def _project(self, record: dict[str, Any], origin: str | None) -> dict[str, Any]:
        missing = [name for name in self._required if name not in record]
        if missing:
            raise SchemaMismatchError(f"fields {', '.join(sorted(missing))} missing", origin=origin)
        # A fresh copy of a list or map default, as a decoder gives: the schema's own must never be shared.
        return {name: record[name] if name in record else _fresh(default) for name, default in self._fields}


def _fresh(default: Any) -> Any:
    return type(default)(default) if isinstance(default, list | dict) else default


def _nested_logical(avro_type: Any) -> bool:
    """Whether a logical type sits inside an array, map or record of ``avro_type``."""
    if isinstance(avro_type, list):
        return any(_nested_logical(t) for t in avro_type)
    if not isinstance(avro_type, dict):
        return False
    inner = [avro_type.get("items"), avro_type.get("values"), *(f["type"] for f in avro_type.get("fields", []))]
    return any(_logical(t) is not None or _nested_logical(t) for t in inner if t is not None)
