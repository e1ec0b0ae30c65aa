"""The contiguous-acknowledgement tracker and the durable checkpoint files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from producers.checkpoint import Checkpoint, CheckpointStore, ContiguousTracker, check_fingerprint, file_fingerprint
from producers.exceptions import CheckpointError
from producers.readers import FileMark, KeyMark

pytestmark = pytest.mark.unit


def mark(n: int) -> FileMark:
    return FileMark(offset=n * 10, line=n + 1)


def test_mark_advances_only_over_a_contiguous_prefix() -> None:
    t = ContiguousTracker()
    seqs = [t.add(mark(i), "produced") for i in range(5)]
    t.ack(seqs[2])
    t.ack(seqs[1])
    assert t.mark is None and t.in_flight == 5
    t.ack(seqs[0])
    assert t.mark == mark(2) and t.in_flight == 2
    t.ack(seqs[4])
    assert t.mark == mark(2)
    t.ack(seqs[3])
    assert t.mark == mark(4) and t.in_flight == 0
    assert t.counts == {"produced": 5, "rejected": 0, "filtered": 0}


def test_unacknowledged_item_holds_the_mark_back() -> None:
    """A failed delivery never acks: nothing after it becomes resumable-past."""
    t = ContiguousTracker(mark(99), {"produced": 7})
    failed = t.add(mark(100), "produced")
    for i in range(101, 110):
        t.ack(t.add(mark(i), "produced"))
    assert failed == 0
    assert t.mark == mark(99)
    assert t.counts["produced"] == 7


def test_filtered_items_are_done_at_once_but_wait_their_turn() -> None:
    t = ContiguousTracker()
    t.add_done(mark(0), "filtered")
    assert t.mark == mark(0)
    s1 = t.add(mark(1), "rejected")
    t.add_done(mark(2), "filtered")
    assert t.mark == mark(0)
    t.ack(s1)
    assert t.mark == mark(2)
    assert t.counts == {"produced": 0, "rejected": 1, "filtered": 2}


def test_random_ack_order_ends_at_the_last_mark_and_duplicate_acks_are_harmless() -> None:
    rng = random.Random(3)
    t = ContiguousTracker()
    seqs = [t.add(mark(i), "produced") for i in range(1000)]
    order = seqs[:]
    rng.shuffle(order)
    acked: set[int] = set()
    for s in order:
        t.ack(s)
        t.ack(s)
        acked.add(s)
        prefix = 0
        while prefix in acked:
            prefix += 1
        assert t.mark == (mark(prefix - 1) if prefix else None)
    assert t.in_flight == 0 and t.counts["produced"] == 1000


def test_store_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.load("run-1", "customers") is None
    cp = Checkpoint("run-1", "customers", mark=FileMark(123, 9), counts={"produced": 5, "rejected": 1, "filtered": 2})
    store.save(cp)
    cp.mark, cp.complete = KeyMark("C0000042", 42), True
    store.save(cp)
    loaded = store.load("run-1", "customers")
    assert loaded is not None
    assert (loaded.mark, loaded.complete, loaded.counts) == (KeyMark("C0000042", 42), True, cp.counts)
    assert [p.name for p in (tmp_path / "run-1").iterdir()] == ["customers.json"]  # no temp file left
    assert json.loads((tmp_path / "run-1" / "customers.json").read_text())["version"] == 1


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.path("r", "s").parent.mkdir(parents=True)
    store.path("r", "s").write_text("{not json")
    with pytest.raises(CheckpointError, match="--restart"):
        store.load("r", "s")


def test_fingerprint_accepts_a_grown_file_and_refuses_a_different_one(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes(b"Customer_ID\nC1\n")
    cp = Checkpoint("r", "customers", fingerprint=file_fingerprint(path))
    path.write_bytes(b"Customer_ID\nC1\nC2\n")
    check_fingerprint(cp, path)
    path.write_bytes(b"Customer_ID\nC9\nC2\n")
    with pytest.raises(CheckpointError, match="changed"):
        check_fingerprint(cp, path)


def test_rejected_items_are_counted_by_rule_in_the_done_prefix_only() -> None:
    t = ContiguousTracker(mark(9), {"produced": 3, "rejected": 1}, {"csv_malformed": 1})
    a = t.add(mark(10), "rejected", "duplicate_key")
    b = t.add(mark(11), "rejected", "encoding")
    t.ack(b)
    assert t.rules == {"csv_malformed": 1}  # b waits for a
    t.ack(a)
    assert t.rules == {"csv_malformed": 1, "duplicate_key": 1, "encoding": 1}
    assert t.counts == {"produced": 3, "rejected": 3, "filtered": 0}


def test_checkpoint_keeps_the_whole_run_s_counts_and_dialect(tmp_path: Path) -> None:
    from producers.source_run import stats_of

    store = CheckpointStore(tmp_path)
    cp = Checkpoint("run-1", "customers", mark=mark(7), complete=True,
                    counts={"produced": 5, "rejected": 2, "filtered": 1},
                    rejected_by_rule={"duplicate_key": 1, "csv_malformed": 1},
                    dialect={"delimiter": ";", "quotechar": '"', "encoding": "utf-8",
                             "fallback": "cp1252"})  # fmt: skip
    store.save(cp)
    back = store.load("run-1", "customers")
    assert back is not None and back.read == 8
    assert (back.rejected_by_rule, back.dialect) == (cp.rejected_by_rule, cp.dialect)
    s = stats_of(back)
    assert (s.read, s.read_before, s.read_now, s.produced, s.rejected, s.filtered) == (8, 8, 0, 5, 2, 1)
    assert s.rejected_by_rule == {"duplicate_key": 1, "csv_malformed": 1} and s.run_read == 8
    # A checkpoint of an older version (no rules, no dialect) still loads.
    old = json.loads(store.path("run-1", "customers").read_text())
    del old["rejected_by_rule"], old["dialect"]
    store.path("run-1", "customers").write_text(json.dumps(old))
    back = store.load("run-1", "customers")
    assert back is not None and back.rejected_by_rule == {} and back.dialect is None
    store.delete("run-1", "customers")
    assert store.load("run-1", "customers") is None
