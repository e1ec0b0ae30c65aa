"""AckTracker: the confirmed LSN moves only over transactions whose every event Kafka acknowledged, in order."""

from __future__ import annotations

import pytest

from producers.cdc.positions import AckTracker

pytestmark = pytest.mark.unit


def test_confirms_a_transaction_only_when_committed_and_every_event_acknowledged() -> None:
    acks = AckTracker(confirmed_lsn=100)
    t = acks.begin()
    first, second = acks.sent(t), acks.sent(t)
    assert acks.confirmable() == 100  # open transaction
    first(None, None)
    acks.commit(t, 200)
    assert acks.confirmable() == 100  # one event still unacknowledged
    second(None, None)
    assert acks.confirmable() == 200 and acks.in_flight == 0


def test_a_later_transaction_acknowledged_first_waits_for_the_earlier_one() -> None:
    acks = AckTracker()
    t1, t2 = acks.begin(), acks.begin()
    cb1, cb2 = acks.sent(t1), acks.sent(t2)
    acks.commit(t1, 10)
    acks.commit(t2, 20)
    cb2(None, None)
    assert acks.confirmable() == 0
    cb1(None, None)
    assert acks.confirmable() == 20


def test_a_failed_delivery_stops_the_position_for_good() -> None:
    acks = AckTracker(5)
    t1, t2 = acks.begin(), acks.begin()
    cb1, cb2 = acks.sent(t1), acks.sent(t2)
    acks.commit(t1, 10)
    acks.commit(t2, 20)
    cb1("broker down", None)
    cb2(None, None)
    assert acks.confirmable() == 5 and acks.failure == "broker down"


def test_empty_transactions_confirm_at_commit_and_the_position_never_goes_back() -> None:
    acks = AckTracker(50)
    t = acks.begin()
    acks.commit(t, 40)  # (cannot happen in PostgreSQL; the position still never decreases)
    assert acks.confirmable() == 50
    t = acks.begin()
    acks.commit(t, 60)
    assert acks.confirmable() == 60


def test_the_idle_heartbeat_moves_the_position_only_when_nothing_is_in_flight() -> None:
    acks = AckTracker(10)
    acks.advance_idle(30)
    assert acks.confirmable() == 30
    t = acks.begin()
    cb = acks.sent(t)
    acks.commit(t, 40)
    acks.advance_idle(90)  # a keepalive while an event is unacknowledged: ignored
    assert acks.confirmable() == 30
    cb(None, None)
    assert acks.confirmable() == 40
    acks.advance_idle(90)
    assert acks.confirmable() == 90


def test_lag_is_the_commit_time_of_the_oldest_transaction_not_yet_confirmable() -> None:
    acks = AckTracker()
    assert acks.oldest_pending_ms() is None  # nothing received: no lag
    t1, t2 = acks.begin(commit_ms=1_000), acks.begin(commit_ms=2_000)
    cb1, cb2 = acks.sent(t1), acks.sent(t2)
    acks.commit(t1, 10)
    acks.commit(t2, 20)
    cb2(None, None)
    assert acks.oldest_pending_ms() == 1_000  # t2 is acknowledged but waits behind t1
    cb1(None, None)
    assert acks.oldest_pending_ms() is None and acks.confirmable() == 20


def test_reconnect_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    from producers.cdc.stream import Backoff

    backoff = Backoff(0.5, 4.0)
    waits = [backoff.next() for _ in range(6)]
    for wait, base in zip(waits, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert 0.8 * base <= wait <= 1.2 * base
    backoff.reset()
    assert backoff.next() <= 0.6
