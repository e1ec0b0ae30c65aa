"""Watermark chunks (DBLog): the chunk query, and which rows a chunk still emits at its high watermark."""

from __future__ import annotations

import pytest

from producers.cdc.events import ColumnInfo, TableEvents, TableInfo
from producers.cdc.snapshot import Chunk, Resnapshot, Visibility, chunk_query

pytestmark = pytest.mark.unit

COLUMNS = (ColumnInfo("id", 23, "integer", -1, "b"), ColumnInfo("name", 25, "text", -1, "b"))
TABLE = TableInfo("legacy", "customers", COLUMNS, ("id",))
EVENTS = TableEvents(TABLE, database="db")


def test_the_chunk_query_orders_by_the_key_column_not_its_text() -> None:
    query, params = chunk_query(EVENTS, ["300"], 100)
    text = query.as_string(None)
    assert 'as t where (t."id") > (%s::integer) order by t."id" limit 100' in text
    assert params == ["300"]
    first, none = chunk_query(EVENTS, None, 5)
    assert "where" not in first.as_string(None) and none == []


def make() -> Resnapshot:
    saved: list[dict[str, list[str] | None]] = []
    snap = Resnapshot(slot="s", publication="p", catalog=lambda: None,  # type: ignore[arg-type,return-value]
                      events=lambda t: EVENTS if t == "legacy.customers" else None, chunk_size=3)  # fmt: skip
    snap.save = lambda: saved.append(dict(snap.pending))  # type: ignore[method-assign]
    return snap


def test_changes_between_the_watermarks_win_over_the_chunk_rows() -> None:
    snap = make()
    snap.pending = {"legacy.customers": None}
    snap.chunk = Chunk("legacy.customers", "s:1", rows={(1,): ("1", "a"), (2,): ("2", "b"), (3,): ("3", "c")},
                       last_key=["3"], last=False)  # fmt: skip
    snap.on_change("legacy.customers", {"id": 1}, 100)  # before the low watermark: older than the chunk's copy
    assert snap.on_watermark(b"s:1:low") is None
    snap.on_change("legacy.customers", {"id": 2}, 101)  # inside the window: the change is newer
    snap.on_change("legacy.tickets", {"id": 3}, 102)  # another table
    assert snap.on_watermark(b"other:1:high") is None  # another slot's watermark
    chunk = snap.on_watermark(b"s:1:high")
    assert chunk is not None and set(chunk.rows) == {(1,), (3,)} and snap.chunk is None
    snap.done(chunk)
    assert snap.pending == {"legacy.customers": ["3"]}
    chunk.last = True
    snap.done(chunk)
    assert snap.pending == {}


def test_a_signal_names_a_captured_table_or_is_ignored() -> None:
    snap = make()
    snap.on_signal(b'{"snapshot": "legacy.customers"}')
    snap.on_signal(b'{"snapshot": "legacy.nope"}')
    snap.on_signal(b"not json")
    assert snap.pending == {"legacy.customers": None}


def test_a_change_the_chunks_select_did_not_see_wins_even_before_the_low_watermark() -> None:
    """PostgreSQL writes a commit record before the transaction becomes visible: it can be decoded before the low
    watermark while the chunk's select still read the older row."""
    snap = make()
    snap.pending = {"legacy.customers": None}
    snap.chunk = Chunk("legacy.customers", "s:1", rows={(1,): ("1", "a"), (2,): ("2", "b"), (3,): ("3", "c")},
                       last_key=["3"], last=False, snapshot=Visibility.parse("700:705:700,702"))  # fmt: skip
    snap.on_change("legacy.customers", {"id": 1}, 701)  # committed and seen by the select: the chunk has it
    snap.on_change("legacy.customers", {"id": 2}, 702)  # in progress when the select ran: newer
    snap.on_change("legacy.customers", {"id": 3}, 699)  # older than every one in progress: seen
    assert snap.on_watermark(b"s:1:low") is None
    chunk = snap.on_watermark(b"s:1:high")
    assert chunk is not None and set(chunk.rows) == {(1,), (3,)}


@pytest.mark.parametrize(("xid", "seen"), [(699, True), (700, False), (701, True), (702, False), (704, True),
                                           (705, False), (9_000, False)])  # fmt: skip
def test_visibility_follows_the_snapshots_xmin_xmax_and_in_progress_list(xid: int, seen: bool) -> None:
    assert Visibility.parse("700:705:700,702").sees(xid) is seen


def test_visibility_compares_32_bit_xids_across_the_epoch_and_wraparound() -> None:
    epoch = 3 << 32  # xid8 values carry the epoch in their high half; pgoutput sends the low half
    snap = Visibility.parse(f"{epoch + 0xFFFFFFF0}:{epoch + (1 << 32) + 5}:{epoch + (1 << 32) + 2}")
    assert snap.sees(0xFFFFFFE0) and snap.sees(0xFFFFFFF5) and snap.sees(1)
    assert not snap.sees(2) and not snap.sees(5) and not snap.sees(6)
