"""The run's key index and its resumable key log: first record of a key wins, positions in the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.keys import Duplicate, KeyIndex, KeyLog, load_logs

pytestmark = pytest.mark.unit


def test_first_record_of_a_key_wins_within_a_source_and_across_sources() -> None:
    keys = KeyIndex()
    a = keys.source_index("crm_a", "crm_a.csv")
    b = keys.source_index("crm_b", "crm_b.csv")
    assert keys.claim("account", "COL-1001", a, 2) == ("COL-1001", None, True)
    assert keys.claim("account", "COL-1002", a, 3)[1] is None
    _, dup, new = keys.claim("account", " COL-1001 ", a, 4)  # the whitespace rule: the cleansed id is the same
    assert dup == Duplicate("crm_a", "crm_a.csv:2") and not new
    assert dup.reason("crm_a", "crm_a.csv:4") == "key first read at crm_a.csv:2, again at crm_a.csv:4"
    _, dup, _ = keys.claim("account", "COL-1001", b, 7)
    assert dup is not None
    assert dup.reason("crm_b", "crm_b.csv:7") == (
        "key first read at crm_a.csv:2 (source crm_a), again at crm_b.csv:7 (source crm_b)"
    )
    assert keys.claim("contact", "COL-1001", b, 8)[1] is None  # another entity: no collision
    assert keys.claim("account", "", a, 9) == ("", None, False)  # an empty key is never claimed
    assert keys.claim("account", "", a, 10)[1] is None
    assert len(keys) == 3


def test_the_same_record_read_again_is_not_its_own_duplicate() -> None:
    keys = KeyIndex()
    a = keys.source_index("customers", "customers.csv")
    assert keys.claim("account", "C1", a, 5)[2] is True
    assert keys.claim("account", "C1", a, 5) == ("C1", None, False)


def test_key_log_round_trip_survives_a_torn_last_line_and_keeps_config_order(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-1"
    log_b = KeyLog(run_dir / "b.keys.jsonl", "b", "account", "b.csv")
    log_b.add("K1", 2)
    log_b.sync()
    log_b.close()
    log_a = KeyLog(run_dir / "a.keys.jsonl", "a", "account", "a.csv")
    for n, key in enumerate(["K1", "K2", 'we"ird\tkey'], start=2):
        log_a.add(key, n)
    log_a.sync()
    log_a.add("K9", 9)
    log_a.sync()
    log_a.close()
    with (run_dir / "a.keys.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('["K10", 1')  # a crash mid-write

    keys = KeyIndex()
    assert load_logs(run_dir, keys, ["a", "b"]) == 5  # b's K1 loses against a's: a comes first in the config
    a = keys.source_index("a", "a.csv")
    assert keys.claim("account", "K2", a, 3)[1] is None  # its own claim
    _, dup, _ = keys.claim("account", "K9", a, 12)
    assert dup == Duplicate("a", "a.csv:9")
    _, dup, _ = keys.claim("account", "K1", keys.source_index("b", "b.csv"), 2)
    assert dup == Duplicate("a", "a.csv:2")
    assert keys.claim("account", "K10", a, 1)[2] is True  # the torn line was not loaded
    assert keys.claim("account", 'we"ird\tkey', a, 4)[1] is None


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    log = KeyLog.disabled()
    log.add("K", 1)
    log.sync()
    assert list(tmp_path.iterdir()) == []
