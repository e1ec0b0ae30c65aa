"""Avro binary encoding compiled per schema: the hot path of every topic crmflow writes and reads.

fastavro's Cython reader interprets the schema for every value and reads its input through a Python
``read`` call per varint byte and per string, and its writer validates every union branch by value.
For a LegacyRecord with fifteen columns that is about 15 µs a decode and 12 µs an encode, which made
Avro about 40% of a processor's CPU. :func:`compile_schema` turns one parsed schema into two straight
Python functions (generated source, compiled once, as :mod:`dataclasses` does), that index a ``bytes``
object and append to a ``bytearray``, with no interpretation left at run time.

The contract is fastavro's: the same bytes for every value fastavro writes, the same Python values for
every body it reads, and an exception (never wrong bytes) for a value it refuses. Logical types go through
fastavro's own ``LOGICAL_READERS``/``LOGICAL_WRITERS``, so dates, instants and decimals are its objects.
Only what the generator knows is compiled: a schema holding anything else (a recursive record, a union of
two non-null branches on the write side) gets ``None`` and stays on fastavro. Schema resolution (a writer
schema that differs from the reader's) stays on fastavro too. ``tests/unit/core/test_avro_compiled.py``
holds the two to the same bytes and values on every schema in ``schemas/`` and on generated ones.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastavro.read import LOGICAL_READERS
from fastavro.validation import validate
from fastavro.write import LOGICAL_WRITERS

__all__ = ["LENGTHS", "TRUNCATED", "CompiledSchema", "compile_schema", "varint"]

# What a compiled decoder raises when its input ends early. It may also return a position past the end
# instead (a string cut short), which the caller reports as the same truncation.
TRUNCATED = (IndexError, struct.error)

Decode = Callable[[bytes, int], tuple[Any, int]]
Encode = Callable[[Any, bytearray], None]

_MAX_LONG = 1 << 63
_SMALL = 2048  # longs in [-_SMALL, _SMALL) come from a table


def varint(n: int) -> bytes:
    """Avro's long: zig-zag, then 7 bits a byte, least significant first."""
    if not -_MAX_LONG <= n < _MAX_LONG:
        raise OverflowError("long out of range")
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_LONGS = [varint(n) for n in range(-_SMALL, _SMALL)]
LENGTHS = _LONGS[_SMALL:]  # LENGTHS[n] == varint(n): the length prefix of a string or bytes under 2,048 bytes


_last_long: tuple[int | None, bytes] = (None, b"")


def _long(n: Any) -> bytes:
    global _last_long  # a one-entry memo, swapped as one tuple (atomic)
    if n.__class__ is int:
        if -_SMALL <= n < _SMALL:
            return _LONGS[n + _SMALL]
        z = (n << 1) ^ (n >> 63)
        if z < 0x200000:  # two or three bytes: a date's days, a count, an amount in cents
            if z < 0x4000:
                return bytes((z & 0x7F | 0x80, z >> 7))
            return bytes((z & 0x7F | 0x80, z >> 7 & 0x7F | 0x80, z >> 14))
        last = _last_long
        if last[0] == n:  # an instant repeats record after record (a batch is mapped within milliseconds)
            return last[1]
        out = varint(n)
        _last_long = (n, out)
        return out
    if isinstance(n, str | bytes | bytearray):
        raise TypeError("a long must be a number")
    return varint(int(n))  # as fastavro does: a float or a Decimal is truncated


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A varint of two bytes or more at ``pos`` (the generated code reads one-byte ones itself). The second and
    third bytes are unrolled: a date's days take three."""
    n = data[pos] & 0x7F
    b = data[pos + 1]
    n |= (b & 0x7F) << 7
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 2
    b = data[pos + 2]
    n |= (b & 0x7F) << 14
    if b < 0x80:
        return (n >> 1) ^ -(n & 1), pos + 3
    pos += 3
    shift = 21
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _span(data: bytes, pos: int) -> tuple[bytes, int]:
    """Length-prefixed bytes at ``pos``, for a length of 64 or more (the generated code reads shorter ones)."""
    if data[pos] < 0x80:  # one byte, and not a length the generated code reads: a negative one
        raise ValueError("negative length")
    n, pos = _read_long(data, pos)
    if n < 0:
        raise ValueError("negative length")
    return data[pos : pos + n], pos + n


class _UnsupportedError(Exception):
    """The schema holds something the generator does not compile."""


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


@dataclass(frozen=True)
class CompiledSchema:
    """The two functions compiled for one schema, and their source (for a reader of a traceback).

    ``decode(data, pos)`` returns the value read from ``pos`` and the position after it; a position past
    ``len(data)`` means the input was cut short. ``encode(value, out)`` appends the value's body to ``out``.
    """

    decode: Decode | None
    encode: Encode | None
    source: str


class _Gen:
    """Emits the source of one function; ``consts`` are the values the generated code refers to."""

    def __init__(self, consts: dict[str, Any], named: Mapping[str, Any]) -> None:
        self.lines: list[str] = []
        self.consts = consts
        self.named = named
        self._ids = itertools.count()
        self._open: set[str] = set()  # records being generated: a reference back to one is recursion

    def var(self, stem: str) -> str:
        return f"{stem}{next(self._ids)}"

    def const(self, value: Any, stem: str = "K") -> str:
        name = f"_{stem}{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            if schema in self._open:
                raise _UnsupportedError(f"recursive type {schema}")
            try:
                return self.named[schema]
            except KeyError:
                raise _UnsupportedError(f"unknown named type {schema}") from None
        return schema

    def record(self, schema: dict[str, Any], body: Callable[[], None]) -> None:
        name = schema.get("name", "")
        self._open.add(name)
        try:
            body()
        finally:
            self._open.discard(name)


def _type_of(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        t = schema["type"]
        return "union" if isinstance(t, list) else _type_of(t) if isinstance(t, dict) else str(t)
    return str(schema)


def _logical(schema: Any) -> str | None:
    if isinstance(schema, dict) and "logicalType" in schema:
        key = f"{schema['type']}-{schema['logicalType']}"
        return key if key in LOGICAL_READERS else None
    return None


# ------------------------------------------------------------------------------------------------ read


def _read_int(g: _Gen, d: int, into: str) -> None:
    g.emit(d, "b = data[pos]")
    g.emit(d, "if b < 128:")
    g.emit(d + 1, f"{into} = (b >> 1) ^ -(b & 1)")
    g.emit(d + 1, "pos += 1")
    g.emit(d, "else:")
    g.emit(d + 1, f"{into}, pos = _read_long(data, pos)")


def _read_span(g: _Gen, d: int, into: str) -> None:
    """``into`` = the next length-prefixed bytes. A span that runs past the end leaves ``pos`` past it: the
    caller's final check reports the truncation, and every read after it raises ``IndexError``."""
    g.emit(d, "b = data[pos]")
    g.emit(d, "if b & 0x81 == 0:  # a length under 64, in one byte")
    g.emit(d + 1, "end = pos + 1 + (b >> 1)")
    g.emit(d + 1, f"{into} = data[pos + 1:end]")
    g.emit(d + 1, "pos = end")
    g.emit(d, "else:")
    g.emit(d + 1, f"{into}, pos = _span(data, pos)")


def _read(g: _Gen, d: int, schema: Any, into: str) -> None:
    schema = g.resolve(schema)
    kind = _type_of(schema)
    logical = _logical(schema)
    if kind == "null":
        g.emit(d, f"{into} = None")
    elif kind == "boolean":
        g.emit(d, f"{into} = data[pos] != 0")
        g.emit(d, "pos += 1")
    elif kind in ("int", "long"):
        _read_int(g, d, into)
    elif kind in ("float", "double"):
        width, fmt = (4, "<f") if kind == "float" else (8, "<d")
        g.emit(d, f"{into} = {g.const(struct.Struct(fmt).unpack_from, 'U')}(data, pos)[0]")
        g.emit(d, f"pos += {width}")
    elif kind == "bytes":
        _read_span(g, d, into)
    elif kind == "string":
        _read_span(g, d, into)
        g.emit(d, f"{into} = {into}.decode()")
    elif kind == "fixed":
        g.emit(d, f"end = pos + {int(schema['size'])}")
        g.emit(d, f"{into} = data[pos:end]")
        g.emit(d, "pos = end")
    elif kind == "enum":
        symbols = g.const(tuple(schema["symbols"]), "S")
        _read_int(g, d, "i")
        g.emit(d, f"if not 0 <= i < {len(schema['symbols'])}:")
        g.emit(d + 1, "raise ValueError('enum index')")
        g.emit(d, f"{into} = {symbols}[i]")
    elif kind == "array":
        _read_blocks(g, d, into, "[]", lambda dd, item: _read(g, dd, schema["items"], item), "append")
    elif kind == "map":
        _read_blocks(g, d, into, "{}", lambda dd, item: _read(g, dd, schema["values"], item), "map")
    elif kind == "union":
        branches = schema if isinstance(schema, list) else schema["type"]
        if len(branches) <= 64:  # the branch index is one byte: 2 * index
            g.emit(d, "b = data[pos]")
            g.emit(d, "pos += 1")
            # the non-null branches first: a value is likelier than a null
            order = sorted(range(len(branches)), key=lambda index: _type_of(g.resolve(branches[index])) == "null")
            for nth, index in enumerate(order):
                g.emit(d, f"{'if' if nth == 0 else 'elif'} b == {2 * index}:")
                _read(g, d + 1, branches[index], into)
        else:
            _read_int(g, d, "i")
            for index, branch in enumerate(branches):
                g.emit(d, f"{'if' if index == 0 else 'elif'} i == {index}:")
                _read(g, d + 1, branch, into)
        g.emit(d, "else:")
        g.emit(d + 1, "raise ValueError('union branch')")
        return  # each branch applied its own logical type
    elif kind in ("record", "error"):
        names = []

        def fields() -> None:
            for field in schema["fields"]:
                value = g.var("v")
                _read(g, d, field["type"], value)
                names.append((field["name"], value))

        g.record(schema, fields)
        g.emit(d, f"{into} = {{{', '.join(f'{name!r}: {value}' for name, value in names)}}}")
    else:
        raise _UnsupportedError(f"type {kind}")
    if logical is not None:
        fn, arg = g.const(LOGICAL_READERS[logical], "L"), g.const(schema, "T")
        g.emit(d, f"{into} = {fn}({into}, {arg}, None)")


def _read_blocks(g: _Gen, d: int, into: str, empty: str, item: Callable[[int, str], None], how: str) -> None:
    count, key, value = g.var("c"), g.var("k"), g.var("x")
    g.emit(d, f"{into} = {empty}")
    g.emit(d, "while True:")
    _read_int(g, d + 1, count)
    g.emit(d + 1, f"if {count} == 0:")
    g.emit(d + 2, "break")
    g.emit(d + 1, f"if {count} < 0:")
    g.emit(d + 2, f"{count} = -{count}")
    _read_int(g, d + 2, "_")
    g.emit(d + 1, f"for _ in range({count}):")
    if how == "map":
        _read_span(g, d + 2, key)
        g.emit(d + 2, f"{key} = {key}.decode()")
    item(d + 2, value)
    g.emit(d + 2, f"{into}[{key}] = {value}" if how == "map" else f"{into}.append({value})")


# ----------------------------------------------------------------------------------------------- write


def _write_length(g: _Gen, d: int, n: str) -> None:
    g.emit(d, f"out += LENGTHS[{n}] if {n} < {len(LENGTHS)} else varint({n})")


# The class a union branch's value has on the fast path; any other value is checked by fastavro's own
# validation, which is how fastavro picks (or refuses) a branch.
_BRANCH_CLASS = {
    "string": "str", "long": "int", "boolean": "bool", "float": "float", "double": "float", "bytes": "bytes",
    "fixed": "bytes", "enum": "str", "array": "list", "map": "dict", "record": "dict", "error": "dict",
}  # fmt: skip


def _with_names(schema: Any, named: Mapping[str, Any]) -> Any:
    """``schema`` as fastavro's validation takes a parsed one: carrying the named types it may refer to."""
    if isinstance(schema, dict):
        return {**schema, "__fastavro_parsed": True, "__named_schemas": dict(named)}
    return schema


def _valid(value: Any, schema: Any) -> bool:
    try:
        return bool(validate(value, schema, raise_errors=False))
    except Exception:  # noqa: BLE001 - a value fastavro's validation chokes on is not this branch's
        return False


def _write(g: _Gen, d: int, schema: Any, value: str, *, branch: bool = False) -> None:
    """Append ``value`` of ``schema``; ``branch``: it is a union's non-null branch, which fastavro
    chooses by validating the value, so a value of another type must be refused here too."""
    schema = g.resolve(schema)
    kind = _type_of(schema)
    logical = _logical(schema)
    if logical is not None and logical in LOGICAL_WRITERS and kind != "union":
        prepare, arg = g.const(LOGICAL_WRITERS[logical], "P"), g.const(schema, "T")
        prepared = g.var("p")
        g.emit(d, f"{prepared} = {prepare}({value}, {arg})")
        value = prepared
    if branch:
        fast = (
            f"{value}.__class__ is int and -2147483648 <= {value} <= 2147483647"
            if kind == "int"
            else f"{value}.__class__ is {_BRANCH_CLASS[kind]}"
        )
        checked = g.const(_with_names(schema, g.named), "T")
        g.emit(d, f"if not ({fast}) and not _valid({value}, {checked}):")
        g.emit(d + 1, "raise ValueError('no branch of the union takes the value')")
    if kind == "null":
        pass  # written as nothing, whatever the value (as fastavro does)
    elif kind == "boolean":
        g.emit(d, f"out += b'\\x01' if {value} else b'\\x00'")
    elif kind in ("int", "long"):
        g.emit(d, f"out += _long({value})")
    elif kind in ("float", "double"):
        fmt = "<f" if kind == "float" else "<d"
        g.emit(d, f"out += {g.const(struct.Struct(fmt).pack, 'W')}(float({value}))")
    elif kind == "bytes":
        g.emit(d, f"if {value}.__class__ is not bytes:")
        g.emit(d + 1, f"{value} = memoryview({value}).tobytes()  # any buffer, as fastavro takes; never a str")
        g.emit(d, f"n = len({value})")
        _write_length(g, d, "n")
        g.emit(d, f"out += {value}")
    elif kind == "string":
        g.emit(d, f"e = {value}.encode()")
        g.emit(d, "n = len(e)")
        _write_length(g, d, "n")
        g.emit(d, "out += e")
    elif kind == "fixed":
        g.emit(d, f"if len({value}) != {int(schema['size'])}:")
        g.emit(d + 1, "raise ValueError('fixed size')")
        g.emit(d, f"out += {value}")
    elif kind == "enum":
        table = g.const({s: varint(i) for i, s in enumerate(schema["symbols"])}, "E")
        g.emit(d, f"out += {table}[{value}]")
    elif kind == "array":
        item = g.var("x")
        g.emit(d, f"if {value}.__class__ is not list:")
        g.emit(d + 1, f"{value} = list({value})  # any iterable, as fastavro takes")
        g.emit(d, f"if {value}:")
        g.emit(d + 1, f"out += _long(len({value}))")
        g.emit(d + 1, f"for {item} in {value}:")
        _write(g, d + 2, schema["items"], item)
        g.emit(d, "out += b'\\x00'")
    elif kind == "map":
        key, item = g.var("k"), g.var("x")
        g.emit(d, f"if {value}:")
        g.emit(d + 1, f"out += _long(len({value}))")
        g.emit(d + 1, f"for {key}, {item} in {value}.items():")
        g.emit(d + 2, f"e = {key}.encode()")
        g.emit(d + 2, "n = len(e)")
        _write_length(g, d + 2, "n")
        g.emit(d + 2, "out += e")
        _write(g, d + 2, schema["values"], item)
        g.emit(d, "out += b'\\x00'")
    elif kind == "union":
        branches = schema if isinstance(schema, list) else schema["type"]
        kinds = [_type_of(g.resolve(b)) for b in branches]
        if len(branches) != 2 or kinds.count("null") != 1:
            raise _UnsupportedError("a union other than null and one type")
        null = kinds.index("null")
        g.emit(d, f"if {value} is None:")
        g.emit(d + 1, f"out += {varint(null)!r}")
        g.emit(d, "else:")
        g.emit(d + 1, f"out += {varint(1 - null)!r}")
        _write(g, d + 1, branches[1 - null], value, branch=True)
    elif kind in ("record", "error"):

        def fields() -> None:
            obj = value
            for field in schema["fields"]:
                item, ftype = g.var("f"), field["type"]
                name = field["name"]
                if "default" in field:
                    g.emit(d, f"{item} = {obj}.get({name!r}, {g.const(field['default'], 'D')})")
                elif "null" in ftype:  # fastavro lets a nullable field without a default be absent
                    g.emit(d, f"{item} = {obj}.get({name!r})")
                else:
                    g.emit(d, f"{item} = {obj}[{name!r}]")
                _write(g, d, ftype, item)

        g.record(schema, fields)
    else:
        raise _UnsupportedError(f"type {kind}")


# --------------------------------------------------------------------------------------------- compile


def _build(kind: str, schema: Any, named: Mapping[str, Any]) -> tuple[Any, str]:
    consts: dict[str, Any] = {}
    g = _Gen(consts, named)
    if kind == "decode":
        _read(g, 1, schema, "value")
        g.emit(1, "return value, pos")
        head = "def decode(data, pos):"
    else:
        _write(g, 1, schema, "obj")
        head = "def encode(obj, out):"
    source = "\n".join([head, *g.lines]) + "\n"
    scope: dict[str, Any] = {
        "_read_long": _read_long,
        "_span": _span,
        "_long": _long,
        "varint": varint,
        "_valid": _valid,
        "LENGTHS": LENGTHS,
        **consts,
    }
    label = schema.get("name", "?") if isinstance(schema, dict) else schema
    # The source is generated above from the schema's structure; names and defaults enter it as constants.
    exec(compile(source, f"<avro {kind} {label}>", "exec"), scope)  # noqa: S102
    return scope[kind], source


def compile_schema(parsed: Any) -> CompiledSchema:
    """Compile a fastavro-parsed schema; either function is ``None`` when the schema holds what it cannot do."""
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    sources = []
    decode: Decode | None
    encode: Encode | None
    try:
        decode, source = _build("decode", parsed, named)
        sources.append(source)
    except _UnsupportedError:
        decode = None
    try:
        encode, source = _build("encode", parsed, named)
        sources.append(source)
    except _UnsupportedError:
        encode = None
    return CompiledSchema(decode, encode, "\n".join(sources))
