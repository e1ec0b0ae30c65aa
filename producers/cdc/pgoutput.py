"""Decoding PostgreSQL's logical replication messages (the built-in ``pgoutput`` plugin), protocol version 1.

Pure functions over bytes, from the documented format ("Logical Replication Message Formats" in the
PostgreSQL manual): :func:`decode` turns one message (the payload of one XLogData) into a frozen dataclass.

Tuple data: each column is one of

- ``None`` — kind ``n``, SQL NULL;
- :data:`UNCHANGED` — kind ``u``, an unchanged TOASTed value the server did not send. It is a singleton of its
  own type, never a value: code that writes a row must check ``value is UNCHANGED`` and keep the old value;
- ``str`` — kind ``t``, the column's text representation (UTF-8; the replication connection's encoding);
- ``bytes`` — kind ``b``, the type's binary send format (only when the ``binary`` option is on).

LSNs are ints; timestamps are microseconds since 2000-01-01 UTC (PostgreSQL's epoch), see :func:`pg_time`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

__all__ = [
    "UNCHANGED",
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "PgOutputError",
    "Relation",
    "Truncate",
    "TupleValue",
    "Type",
    "Unchanged",
    "Update",
    "decode",
    "format_lsn",
    "parse_lsn",
    "pg_time",
]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


class PgOutputError(ValueError):
    """The bytes are not a pgoutput message of a version this decoder knows (names the offset, never data)."""


class Unchanged:
    """The type of :data:`UNCHANGED`: a TOASTed column an UPDATE did not change, whose value was not sent."""

    _instance: Unchanged | None = None

    def __new__(cls) -> Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __bool__(self) -> bool:  # never mistaken for a present value in a truth test
        return False

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()

TupleValue = None | Unchanged | str | bytes


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # the LSN of the transaction's commit record
    commit_ts: int  # microseconds since 2000-01-01 UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # the end of the commit record: what a client confirms once the transaction is durable
    commit_ts: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    key: bool  # part of the replica identity (the primary key by default)


@dataclass(frozen=True, slots=True)
class Relation:
    relation_id: int
    namespace: str  # "" stands for pg_catalog in the protocol; kept as sent
    name: str
    replica_identity: Literal["d", "n", "f", "i"]  # default, nothing, full, index
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    type_id: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_id: int
    new: tuple[TupleValue, ...]
    # 'K': the old replica-identity key (the key changed; other columns are None); 'O': the whole old row
    # (REPLICA IDENTITY FULL); None: not sent (default identity, key unchanged).
    old_kind: Literal["K", "O"] | None = None
    old: tuple[TupleValue, ...] | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old_kind: Literal["K", "O"]
    old: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage

_I8 = struct.Struct(">b")
_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, st: struct.Struct) -> int:
        if self.pos + st.size > len(self.data):
            raise PgOutputError(f"message ends at byte {len(self.data)}, needed {st.size} more at byte {self.pos}")
        (value,) = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return int(value)

    def u8(self) -> int:
        return self._take(_U8)

    def i8(self) -> int:
        return self._take(_I8)

    def i16(self) -> int:
        return self._take(_I16)

    def i32(self) -> int:
        return self._take(_I32)

    def u32(self) -> int:
        return self._take(_U32)

    def i64(self) -> int:
        return self._take(_I64)

    def u64(self) -> int:
        return self._take(_U64)

    def byte(self) -> str:
        return chr(self.u8())

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise PgOutputError(f"unterminated string at byte {self.pos}")
        text = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return text

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PgOutputError(f"value of {n} bytes at byte {self.pos} runs past the message end ({len(self.data)})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def tuple_data(self) -> tuple[TupleValue, ...]:
        values: list[TupleValue] = []
        for _ in range(self.i16()):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                values.append(self.raw(self.i32()).decode("utf-8"))
            elif kind == "b":
                values.append(self.raw(self.i32()))
            else:
                raise PgOutputError(f"unknown tuple data kind {kind!r} at byte {self.pos - 1}")
        return tuple(values)

    def old_then_new(self) -> tuple[Literal["K", "O"] | None, tuple[TupleValue, ...] | None, tuple[TupleValue, ...]]:
        kind = self.byte()
        old_kind: Literal["K", "O"] | None = None
        old = None
        if kind in ("K", "O"):
            old_kind = "K" if kind == "K" else "O"
            old = self.tuple_data()
            kind = self.byte()
        if kind != "N":
            raise PgOutputError(f"expected 'N' (new tuple) at byte {self.pos - 1}, got {kind!r}")
        return old_kind, old, self.tuple_data()


def decode(data: bytes) -> Message:
    """One pgoutput message (protocol version 1 layout) from its bytes; :class:`PgOutputError` if malformed."""
    if not data:
        raise PgOutputError("empty message")
    r = _Reader(bytes(data))
    tag = r.byte()
    msg: Message
    if tag == "B":
        msg = Begin(final_lsn=r.u64(), commit_ts=r.i64(), xid=r.u32())
    elif tag == "C":
        msg = Commit(flags=r.i8(), commit_lsn=r.u64(), end_lsn=r.u64(), commit_ts=r.i64())
    elif tag == "O":
        msg = Origin(commit_lsn=r.u64(), name=r.string())
    elif tag == "R":
        rel_id, namespace, name, ident = r.u32(), r.string(), r.string(), r.byte()
        if ident not in ("d", "n", "f", "i"):
            raise PgOutputError(f"unknown replica identity {ident!r} of relation {rel_id}")
        columns = []
        for _ in range(r.i16()):
            flags = r.i8()
            columns.append(Column(name=r.string(), type_oid=r.u32(), type_modifier=r.i32(), key=bool(flags & 1)))
        msg = Relation(rel_id, namespace, name, ident, tuple(columns))  # type: ignore[arg-type]
    elif tag == "Y":
        msg = Type(type_id=r.u32(), namespace=r.string(), name=r.string())
    elif tag == "I":
        rel_id = r.u32()
        if (kind := r.byte()) != "N":
            raise PgOutputError(f"insert: expected 'N' at byte {r.pos - 1}, got {kind!r}")
        msg = Insert(rel_id, r.tuple_data())
    elif tag == "U":
        rel_id = r.u32()
        old_kind, old, new = r.old_then_new()
        msg = Update(rel_id, new, old_kind, old)
    elif tag == "D":
        rel_id = r.u32()
        kind = r.byte()
        if kind not in ("K", "O"):
            raise PgOutputError(f"delete: expected 'K' or 'O' at byte {r.pos - 1}, got {kind!r}")
        msg = Delete(rel_id, "K" if kind == "K" else "O", r.tuple_data())
    elif tag == "T":
        count, options = r.i32(), r.i8()
        msg = Truncate(tuple(r.u32() for _ in range(count)), bool(options & 1), bool(options & 2))
    elif tag == "M":
        flags, lsn, prefix = r.i8(), r.u64(), r.string()
        msg = LogicalMessage(bool(flags & 1), lsn, prefix, r.raw(r.i32()))
    else:
        raise PgOutputError(f"unknown message type {tag!r} (protocol version 1 knows B C O R Y I U D T M)")
    if r.pos != len(r.data):
        raise PgOutputError(f"{type(msg).__name__} message has {len(r.data) - r.pos} trailing byte(s)")
    return msg


def pg_time(micros: int) -> datetime:
    """A pgoutput timestamp (microseconds since 2000-01-01 UTC) as an aware datetime."""
    return PG_EPOCH + timedelta(microseconds=micros)


def format_lsn(lsn: int) -> str:
    """``0/16B3748``, as PostgreSQL prints an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The int of an LSN PostgreSQL prints (``0/16B3748``)."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
