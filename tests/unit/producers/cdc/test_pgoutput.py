"""The pgoutput decoder on real bytes from the stack's PostgreSQL (pgoutput_capture.json) and hand-built edges."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from producers.cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputError,
    Relation,
    Truncate,
    Type,
    Unchanged,
    Update,
    decode,
    format_lsn,
    parse_lsn,
    pg_time,
)

pytestmark = pytest.mark.unit

CAPTURE = json.loads(Path(__file__).with_name("pgoutput_capture.json").read_text())


def stream(name: str = "text") -> list[Any]:
    return [decode(bytes.fromhex(m["hex"])) for m in CAPTURE["streams"][name]]


def test_every_captured_message_decodes_and_transactions_are_framed() -> None:
    msgs = stream()
    begins = [m for m in msgs if isinstance(m, Begin)]
    commits = [m for m in msgs if isinstance(m, Commit)]
    assert len(begins) == len(commits) == len(CAPTURE["steps"])
    for b, c in zip(begins, commits, strict=True):
        assert b.final_lsn == c.commit_lsn < c.end_lsn
        assert b.commit_ts == c.commit_ts
    # each step's commit ends at or before the WAL position read right after it
    for c, (_, mark) in zip(commits, CAPTURE["marks"], strict=True):
        assert c.end_lsn <= parse_lsn(mark)
    assert pg_time(commits[0].commit_ts).year >= 2024


def test_relation_type_and_insert_in_text() -> None:
    msgs = stream()
    typ = next(m for m in msgs if isinstance(m, Type))
    assert (typ.namespace, typ.name) == ("public", "tier")
    rel = next(m for m in msgs if isinstance(m, Relation) and m.name == "people")
    assert rel.namespace == "public" and rel.replica_identity == "d"
    names = ["id", "big", "amount", "active", "born", "seen", "name", "doc", "level", "body"]
    assert [c.name for c in rel.columns] == names
    assert [c.key for c in rel.columns] == [True] + [False] * 9
    assert rel.columns[2].type_oid == 1700 and rel.columns[2].type_modifier == ((12 << 16) | 2) + 4  # numeric(12,2)
    assert rel.columns[8].type_oid == typ.type_id
    first, second = [m for m in msgs if isinstance(m, Insert) and m.relation_id == rel.relation_id]
    assert first.new[:9] == ("1", "9000000000", "1234.50", "t", "2020-02-29", "2024-01-02 03:04:05.123456+00", "Zoë",
                             '{"a": [1, 2]}', "gold")  # fmt: skip
    assert first.new[9] == "0123456789abcdef" * 600
    assert second.new == ("2", *([None] * 9))


def test_update_leaving_a_toasted_column_unchanged_carries_the_marker_not_a_value() -> None:
    upd = next(m for m in stream() if isinstance(m, Update) and m.old_kind is None)
    assert upd.new[6] == "Zoe"
    assert upd.new[9] is UNCHANGED
    assert isinstance(upd.new[9], Unchanged) and not isinstance(upd.new[9], str | bytes) and upd.new[9] is not None
    assert not UNCHANGED and repr(UNCHANGED) == "UNCHANGED" and Unchanged() is UNCHANGED


def test_default_identity_sends_only_the_old_key_full_identity_the_old_row() -> None:
    msgs = stream()
    key_upd = next(m for m in msgs if isinstance(m, Update) and m.old_kind == "K")
    assert key_upd.old == ("2", *([None] * 9)) and key_upd.new[0] == "20"
    key_del = next(m for m in msgs if isinstance(m, Delete) and m.old_kind == "K")
    assert key_del.old == ("20", *([None] * 9))
    audit = next(m for m in msgs if isinstance(m, Relation) and m.name == "audit")
    assert audit.replica_identity == "f"
    full_upd = next(m for m in msgs if isinstance(m, Update) and m.old_kind == "O")
    assert (full_upd.relation_id, full_upd.old, full_upd.new) == (audit.relation_id, ("1", "first"), ("1", "second"))
    full_del = next(m for m in msgs if isinstance(m, Delete) and m.old_kind == "O")
    assert full_del.old == ("1", "second")


def test_truncate_and_logical_messages() -> None:
    msgs = stream()
    audit = next(m for m in msgs if isinstance(m, Relation) and m.name == "audit")
    trunc = next(m for m in msgs if isinstance(m, Truncate))
    assert trunc == Truncate((audit.relation_id,), cascade=False, restart_identity=False)
    lm = [m for m in msgs if isinstance(m, LogicalMessage)]
    assert {(m.transactional, m.prefix, m.content) for m in lm} == {
        (True, "crmflow.test", b"in a transaction"), (False, "crmflow.test", b"outside")}


def test_binary_tuple_kind() -> None:
    ins = next(m for m in stream("binary") if isinstance(m, Insert))
    assert ins.new[0] == struct.pack(">i", 1) and ins.new[1] == struct.pack(">q", 9000000000)
    assert ins.new[3] == b"\x01" and ins.new[6] == "Zoë".encode()
    upd = next(m for m in stream("binary") if isinstance(m, Update) and m.old_kind is None)
    assert upd.new[9] is UNCHANGED


# ------------------------------------------------------------------------------------- hand-built edges


def tuple_data(*cols: tuple[str, bytes | None]) -> bytes:
    out = struct.pack(">h", len(cols))
    for kind, data in cols:
        out += kind.encode()
        if data is not None:
            out += struct.pack(">i", len(data)) + data
    return out


def test_hand_built_update_with_full_old_row_nulls_and_unchanged() -> None:
    old = tuple_data(("t", b"7"), ("n", None), ("t", b"x" * 3000))
    new = tuple_data(("t", b"7"), ("t", b""), ("u", None))
    msg = decode(b"U" + struct.pack(">I", 42) + b"O" + old + b"N" + new)
    assert msg == Update(42, ("7", "", UNCHANGED), "O", ("7", None, "x" * 3000))
    assert msg.new[1] == "" and msg.new[1] is not None  # an empty string is a value, not a null


def test_hand_built_delete_with_old_key_and_origin() -> None:
    msg = decode(b"D" + struct.pack(">I", 9) + b"K" + tuple_data(("t", b"5"), ("n", None)))
    assert msg == Delete(9, "K", ("5", None))
    assert decode(b"O" + struct.pack(">Q", 0x1_0000_0010) + b"upstream\0") == Origin(0x1_0000_0010, "upstream")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "empty"),
        (b"Z", "unknown message type"),
        (b"B\0\0", "needed 8 more"),
        (b"I" + struct.pack(">I", 1) + b"X", "expected 'N'"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"q", "unknown tuple data kind"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 10) + b"ab", "runs past"),
        (b"D" + struct.pack(">I", 1) + b"N", "expected 'K' or 'O'"),
        (b"Y" + struct.pack(">I", 1) + b"public", "unterminated"),
        (b"C" + bytes(25) + b"!", "trailing"),
    ],
)
def test_malformed_messages_name_the_problem(data: bytes, error: str) -> None:
    with pytest.raises(PgOutputError, match=error):
        decode(data)


def test_lsn_text_round_trip() -> None:
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("0/216CD58") == 0x216CD58
