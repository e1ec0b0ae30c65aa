"""The compiled Avro codec against fastavro: the same bytes written, the same values read, the same refusals."""

from __future__ import annotations

import io
import random
import uuid
from collections import OrderedDict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema as _parse_schema
from fastavro import schemaless_reader, schemaless_writer

from crmflow.avro_compiled import TRUNCATED, compile_schema

SCHEMAS = sorted((Path(__file__).parents[3] / "schemas").glob("*/*.avsc"))

# Every construct the generator compiles, nested: what the shipped schemas use and what a CDC table may.
EVERYTHING: dict[str, Any] = {
    "type": "record",
    "name": "Everything",
    "namespace": "t",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "amount", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "nothing", "type": "null"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "again", "type": "t.Colour"},
        {"name": "maybe_last", "type": ["string", "null"]},
        {"name": "maybe", "type": ["null", "long"], "default": None},
        {"name": "born", "type": ["null", {"type": "int", "logicalType": "date"}]},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "scores", "type": {"type": "map", "values": {"type": "array", "items": ["null", "double"]}}},
        {
            "name": "children",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Child",
                    "fields": [
                        {"name": "id", "type": "long"},
                        {"name": "label", "type": ["null", "string"], "default": None},
                        {"name": "tint", "type": "t.Colour"},
                    ],
                },
            },
        },
        {"name": "favourite", "type": ["null", "t.Child"], "default": None},
        {"name": "status", "type": "string", "default": "NEW"},
    ],
}


def parse_schema(schema: dict[str, Any]) -> dict[str, Any]:
    parsed = _parse_schema(schema)
    assert isinstance(parsed, dict)
    return parsed


def _text(rng: random.Random) -> str:
    size = rng.choice([0, 1, 5, 30, 63, 64, 200, 2047, 2048, 2049, 4095, 4096, 5000])
    alphabet = "abcXYZ 09-@.éüßø漢字🙂" if rng.random() < 0.5 else "abcXYZ 09-@."  # lengths in bytes exact, or not
    return "".join(rng.choice(alphabet) for _ in range(size))


def _long(rng: random.Random) -> int:
    edge = rng.choice([0, 1, -1, 63, 64, -64, -65, 2047, -2048, 2048, 8191, 1 << 40, (1 << 63) - 1, -(1 << 63)])
    near = edge + (0 if rng.random() < 0.5 else rng.randint(-5000, 5000))
    return max(-(1 << 63), min((1 << 63) - 1, near))


def value_of(schema: Any, named: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A random value of ``schema`` (fastavro-parsed), within its type's range."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return value_of(rng.choice(schema), named, rng, depth)
    kind = schema["type"] if isinstance(schema, dict) else schema
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if logical == "date":
        return date(1900, 1, 1) + timedelta(days=rng.randint(0, 60000))
    if logical in ("timestamp-millis", "timestamp-micros"):
        at = datetime(1960, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 3_000_000_000_000_000))
        return at.replace(microsecond=at.microsecond // 1000 * 1000) if logical == "timestamp-millis" else at
    if logical == "time-millis":
        return time(rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999) * 1000)
    if logical == "decimal":
        return Decimal(rng.randint(-(10**11), 10**11)).scaleb(-int(schema.get("scale", 0)))
    if logical == "uuid":
        return uuid.UUID(int=rng.getrandbits(128))
    if kind == "null":
        return None
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-(1 << 31), (1 << 31) - 1) if rng.random() < 0.3 else rng.randint(-100, 100)
    if kind == "long":
        return _long(rng)
    if kind == "float":
        return float(rng.randint(-1000, 1000)) / 4
    if kind == "double":
        return rng.uniform(-1e12, 1e12)
    if kind == "bytes":
        return rng.randbytes(rng.choice([0, 3, 300, 2047, 2048, 4096]))
    if kind == "string":
        return _text(rng)
    if kind == "fixed":
        return rng.randbytes(schema["size"])
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "array":
        return [
            value_of(schema["items"], named, rng, depth + 1)
            for _ in range(rng.choice([0, 1, 3] if depth else [0, 2, 70]))
        ]
    if kind == "map":
        size = rng.choice([0, 1, 4] if depth else [0, 3, 15, 2100])
        return {f"k{i}{_text(rng)[:8]}": value_of(schema["values"], named, rng, depth + 1) for i in range(size)}
    if kind == "record":
        return {
            f["name"]: value_of(f["type"], named, rng, depth + 1)
            for f in schema["fields"]
            if "default" not in f or rng.random() < 0.8  # sometimes absent: the default is written
        }
    raise AssertionError(f"no generator for {schema}")


def fastavro_bytes(parsed: Any, value: Any) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, value)
    return buf.getvalue()


def compiled_bytes(encode: Any, value: Any) -> bytes:
    out = bytearray()
    encode(value, out)
    return bytes(out)


def cases() -> list[tuple[str, Any]]:
    import json

    return [(p.stem, json.loads(p.read_text())) for p in SCHEMAS] + [("everything", EVERYTHING)]


@pytest.mark.parametrize(("name", "schema"), cases(), ids=[name for name, _ in cases()])
def test_same_bytes_and_values_as_fastavro(name: str, schema: dict[str, Any]) -> None:
    parsed = parse_schema(schema)
    compiled = compile_schema(parsed)
    assert compiled.decode is not None and compiled.encode is not None, f"{name} is not compiled"
    rng = random.Random(name)
    named = parsed["__named_schemas"]
    for _ in range(150 if name == "everything" else 300):
        value = value_of(parsed, named, rng)
        expected = fastavro_bytes(parsed, value)
        assert compiled_bytes(compiled.encode, value) == expected
        record, end = compiled.decode(expected, 0)
        assert end == len(expected)
        assert record == schemaless_reader(io.BytesIO(expected), parsed, None)


def test_reads_after_an_offset_and_stops_at_its_record() -> None:
    parsed = parse_schema(EVERYTHING)
    compiled = compile_schema(parsed)
    assert compiled.decode is not None
    value = value_of(parsed, parsed["__named_schemas"], random.Random(7))
    body = fastavro_bytes(parsed, value)
    record, end = compiled.decode(b"\x00head" + body + b"tail", 5)
    assert end == 5 + len(body) and record == schemaless_reader(io.BytesIO(body), parsed, None)


def test_blocks_with_negative_counts_are_read() -> None:
    """Other writers may frame a block as -count, byte size (the spec allows it; fastavro never writes it)."""
    parsed = parse_schema(
        {
            "type": "record",
            "name": "M",
            "fields": [
                {"name": "m", "type": {"type": "map", "values": "long"}},
                {"name": "a", "type": {"type": "array", "items": "int"}},
            ],
        }
    )
    compiled = compile_schema(parsed)
    assert compiled.decode is not None
    # m: a block of -2 entries in 8 bytes ("a" -> 1, "bb" -> -2), a block of 1 ("c" -> 3), the end.
    # a: a block of -1 item in 1 byte (5), the end.
    body = b"\x03" + b"\x10" + b"\x02a\x02" + b"\x04bb\x03" + b"\x02" + b"\x02c\x06" + b"\x00" + b"\x01\x02\x0a\x00"
    expected = schemaless_reader(io.BytesIO(body), parsed, None)
    assert expected == {"m": {"a": 1, "bb": -2, "c": 3}, "a": [5]}
    assert compiled.decode(body, 0) == (expected, len(body))


@pytest.mark.parametrize(("name", "schema"), cases(), ids=[name for name, _ in cases()])
def test_every_truncation_raises(name: str, schema: dict[str, Any]) -> None:
    parsed = parse_schema(schema)
    compiled = compile_schema(parsed)
    assert compiled.decode is not None
    rng = random.Random(f"cut {name}")
    body = fastavro_bytes(parsed, value_of(parsed, parsed["__named_schemas"], rng))
    for cut in sorted(
        {0, 1, len(body) // 3, len(body) // 2, len(body) - 1, *rng.sample(range(len(body)), min(40, len(body)))}
    ):
        try:
            _, end = compiled.decode(body[:cut], 0)
        except (*TRUNCATED, ValueError):
            continue
        assert end > cut, f"a body cut at {cut} of {len(body)} bytes was read as whole"


def test_bad_indexes_and_lengths_are_refused() -> None:
    parsed = parse_schema(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "c", "type": {"type": "enum", "name": "C", "symbols": ["A", "B"]}},
                {"name": "u", "type": ["null", "string"]},
            ],
        }
    )
    compiled = compile_schema(parsed)
    assert compiled.decode is not None
    for body in (
        b"\x04\x00",
        b"\x01\x00",
        b"\x00\x04",
        b"\x00\x02\x01x",
        b"\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    ):
        with pytest.raises(ValueError):
            compiled.decode(body, 0)


REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("a string field given an int", {"text": 5}),
    ("a long given a string", {"big": "12"}),
    ("a long given NaN", {"big": float("nan")}),
    ("a long out of range", {"big": 1 << 63}),
    ("an unknown enum symbol", {"colour": "PURPLE"}),
    ("a fixed of the wrong size", {"digest": b"abc"}),
    ("bytes given a string", {"blob": "abc"}),
    ("an array given a number", {"tags": 5}),
    ("bytes given a number", {"blob": 5}),
    ("a required field absent", {"text": None}),
    ("a nullable string given an int", {"maybe_last": 3}),
    ("a nullable date given a float", {"born": 3.5}),
    ("a nullable long given a string", {"maybe": "7"}),
    ("a nullable long given a bool", {"maybe": True}),
    ("a nullable record given a list", {"favourite": [1]}),
]


@pytest.mark.parametrize(("what", "change"), REFUSED, ids=[w for w, _ in REFUSED])
def test_values_fastavro_refuses_are_refused(what: str, change: dict[str, Any]) -> None:
    parsed = parse_schema(EVERYTHING)
    compiled = compile_schema(parsed)
    assert compiled.encode is not None
    value = value_of(parsed, parsed["__named_schemas"], random.Random(3))
    value.update(change)
    if change.get("text", 0) is None:
        del value["text"]
    with pytest.raises(Exception):  # noqa: B017 - fastavro raises several types; both must refuse
        fastavro_bytes(parsed, value)
    with pytest.raises((ValueError, TypeError, AttributeError, LookupError, ArithmeticError)):
        compiled_bytes(compiled.encode, value)


@pytest.mark.parametrize("odd", [1.5, -2.9, Decimal("2.5"), True, False])
def test_numbers_fastavro_truncates_into_a_long_are_written_alike(odd: Any) -> None:
    parsed = parse_schema(
        {"type": "record", "name": "N", "fields": [{"name": "x", "type": "long"}, {"name": "i", "type": "int"}]}
    )
    compiled = compile_schema(parsed)
    assert compiled.encode is not None
    assert compiled_bytes(compiled.encode, {"x": odd, "i": odd}) == fastavro_bytes(parsed, {"x": odd, "i": odd})


def test_any_iterable_array_any_buffer_and_any_mapping_in_a_union_are_written_alike() -> None:
    parsed = parse_schema(EVERYTHING)
    compiled = compile_schema(parsed)
    assert compiled.encode is not None
    value = value_of(parsed, parsed["__named_schemas"], random.Random(5))
    value.update(tags=("a", "b"), blob=bytearray(b"xyz"), children=iter([{"id": 1, "tint": "RED"}]))
    value["favourite"] = OrderedDict(id=5, label=None, tint="BLUE")  # a union branch fastavro validates itself
    same = dict(value, children=[{"id": 1, "tint": "RED"}])
    assert compiled_bytes(compiled.encode, value) == fastavro_bytes(parsed, same)


def test_what_is_not_compiled_stays_on_fastavro() -> None:
    recursive = parse_schema({"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]})
    assert compile_schema(recursive).decode is None and compile_schema(recursive).encode is None
    either = parse_schema(
        {"type": "record", "name": "E", "fields": [{"name": "x", "type": ["null", "string", "long"]}]}
    )
    compiled = compile_schema(either)
    assert compiled.encode is None  # the writer picks a branch by value: fastavro's job
    assert compiled.decode is not None
    body = fastavro_bytes(either, {"x": 42})
    assert compiled.decode(body, 0) == ({"x": 42}, len(body))


def test_every_path_of_a_long_writes_and_reads_the_varint() -> None:
    """The table, the two- and three-byte paths, the memo of the last instant (hit, then missed), the loop."""
    from crmflow.avro_compiled import _long, varint

    edges = [0, 1, -1, 2047, -2048, 2048, -2049, 8191, 8192, 0x1FFF, -0x2000, 0xFFFFF, -0x100000, 0x100000, -0x100001]
    instants = [1_764_900_000_000, 1_764_900_000_000, 1_764_900_000_001, 1_764_900_000_000, (1 << 63) - 1, -(1 << 63)]
    rng = random.Random(11)
    spread = [rng.randint(-(1 << 63), (1 << 63) - 1) >> rng.randint(0, 62) for _ in range(3000)]
    long_schema = parse_schema({"type": "long"})
    decode = compile_schema(long_schema).decode
    assert decode is not None
    for n in edges + instants + spread:
        body = fastavro_bytes(long_schema, n)
        assert _long(n) == varint(n) == body, n
        assert decode(body + b"more", 0) == (n, len(body)), n  # the one-byte, unrolled and looped reads
    with pytest.raises(OverflowError):
        _long(1 << 63)
