"""The batching driver with an in-memory list sink: when it flushes, what it reports for commit, retries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from crmflow.exceptions import TerminalError
from sinks.base import BatchingSink, BatchResult, Reject, RetryPolicy, Sink, SinkRecord
from sinks.exceptions import FlushAbortedError, RetriesExhaustedError, SinkTerminalError, SinkTransientError
from sinks.params import SinkParams

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ListSink(Sink):
    """Keeps every written batch; fails the next ``fail`` writes with ``error``; rejects by predicate."""

    def __init__(self, reject: Callable[[SinkRecord], bool] = lambda r: False) -> None:
        self.batches: list[list[SinkRecord]] = []
        self.fail: list[Exception] = []
        self.reject = reject
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def write_batch(self, batch: Sequence[SinkRecord]) -> BatchResult:
        if self.fail:
            raise self.fail.pop(0)
        self.batches.append(list(batch))
        rejects = [Reject(i, "constraint", "refused", "email") for i, r in enumerate(batch) if self.reject(r)]
        return BatchResult(rejects=rejects, written=len(batch) - len(rejects))

    @property
    def written(self) -> list[SinkRecord]:
        return [r for b in self.batches for r in b]


def rec(offset: int, partition: int = 0, topic: str = "t.mapped.account", entity: str = "account") -> SinkRecord:
    return SinkRecord(entity, {"customer_id": f"C{offset:07d}"}, topic, partition, offset)


class Waits:
    """Records the backoff delays instead of sleeping; ``stop_after`` simulates a stop request."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.delays: list[float] = []
        self.stop_after = stop_after

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return self.stop_after is not None and len(self.delays) >= self.stop_after


def driver(sink: Sink, clock: Clock, waits: Waits | None = None, **kw: object) -> BatchingSink:
    kw.setdefault("batch_size", 3)
    kw.setdefault("max_batch_age_s", 2.0)
    return BatchingSink(sink, clock=clock, wait=waits or Waits(), **kw)  # type: ignore[arg-type]


def test_flushes_when_a_partition_buffer_reaches_batch_size() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock)
    b.add(rec(10))
    b.add(rec(11))
    assert not b.due()
    b.add(rec(12))
    assert b.due()
    out = b.flush()
    assert [r.offset for r in sink.written] == [10, 11, 12]
    assert out.offsets == {("t.mapped.account", 0): 13}
    assert b.buffered() == 0 and not b.due()


def test_flushes_when_the_oldest_buffered_record_is_old_enough() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock)
    b.add(rec(0))
    clock.now += 1.9
    b.add(rec(1))
    assert not b.due()
    clock.now += 0.1
    assert b.due()  # age counts from the first record of the buffer
    assert b.flush().offsets == {("t.mapped.account", 0): 2}
    clock.now += 10
    assert not b.due()  # empty buffers never age


def test_no_offsets_are_reported_before_a_flush_and_each_partition_gets_its_own() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock, batch_size=100)
    b.add(rec(5, partition=0))
    b.add(rec(7, partition=1))
    b.add(rec(8, partition=1))
    b.add(rec(0, partition=0, topic="t.mapped.contact", entity="contact"))
    assert sink.batches == []
    assert sorted(b.pending()) == [("t.mapped.account", 0), ("t.mapped.account", 1), ("t.mapped.contact", 0)]
    out = b.flush()
    assert len(sink.batches) == 1  # every pending partition in one transaction
    assert out.offsets == {("t.mapped.account", 0): 6, ("t.mapped.account", 1): 9, ("t.mapped.contact", 0): 1}


def test_flush_of_some_partitions_leaves_the_others_buffered() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock, batch_size=100)
    b.add(rec(1, partition=0))
    b.add(rec(2, partition=1))
    out = b.flush([("t.mapped.account", 1)])
    assert out.offsets == {("t.mapped.account", 1): 3}
    assert b.pending() == [("t.mapped.account", 0)] and b.buffered() == 1


def test_a_failed_flush_reports_nothing_and_keeps_its_records_for_the_next_one() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock)
    b.add(rec(0))
    b.add(rec(1))
    sink.fail = [SinkTerminalError("target schema is wrong")]
    with pytest.raises(SinkTerminalError):
        b.flush()
    assert sink.batches == [] and b.buffered() == 2
    b.add(rec(2))
    out = b.flush()
    assert [r.offset for r in sink.written] == [0, 1, 2]
    assert out.offsets == {("t.mapped.account", 0): 3}


def test_transient_errors_are_retried_with_backoff_then_succeed() -> None:
    sink, clock, waits = ListSink(), Clock(), Waits()
    b = driver(sink, clock, waits, retry=RetryPolicy(attempts=5, initial_backoff_s=0.5, multiplier=2.0))
    b.add(rec(0))
    sink.fail = [SinkTransientError("connection lost"), SinkTransientError("connection lost", retry_after=3.0)]
    out = b.flush()
    assert out.attempts == 3
    assert waits.delays == [0.5, 3.0]  # the target's retry_after wins over a shorter backoff
    assert out.offsets == {("t.mapped.account", 0): 1}


def test_transient_errors_beyond_the_policy_fail_without_reporting_offsets() -> None:
    sink, clock, waits = ListSink(), Clock(), Waits()
    b = driver(sink, clock, waits, retry=RetryPolicy(attempts=3))
    b.add(rec(0))
    sink.fail = [SinkTransientError("down")] * 3
    with pytest.raises(RetriesExhaustedError) as info:
        b.flush()
    assert info.value.attempts == 3 and isinstance(info.value, TerminalError)
    assert len(waits.delays) == 2 and b.buffered() == 1


def test_a_stop_during_backoff_aborts_the_flush_and_keeps_the_records() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock, Waits(stop_after=1))
    b.add(rec(0))
    sink.fail = [SinkTransientError("down")] * 5
    with pytest.raises(FlushAbortedError):
        b.flush()
    assert b.buffered() == 1


def test_no_retry_means_one_attempt() -> None:
    sink, clock, waits = ListSink(), Clock(), Waits()
    b = driver(sink, clock, waits)
    b.add(rec(0))
    sink.fail = [SinkTransientError("down")]
    with pytest.raises(RetriesExhaustedError):
        b.flush(retry=False)
    assert waits.delays == []


def test_rejects_are_reported_with_their_records_and_do_not_hold_back_offsets() -> None:
    sink, clock = ListSink(reject=lambda r: r.offset == 1), Clock()
    b = driver(sink, clock)
    for i in range(3):
        b.add(rec(i))
    out = b.flush()
    assert [(r.offset, j.rule, j.field) for r, j in out.rejected()] == [(1, "constraint", "email")]
    assert out.result.written == 2
    assert out.offsets == {("t.mapped.account", 0): 3}


def test_skipped_offsets_are_committed_with_the_next_flush_even_without_records() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock)
    b.skip("t.mapped.account", 0, 41)  # a poison message the runner dead-lettered itself
    assert b.buffered() == 0 and b.pending() == [("t.mapped.account", 0)]
    clock.now += 2.0
    assert b.due()
    out = b.flush()
    assert sink.batches == [] and out.batch == []
    assert out.offsets == {("t.mapped.account", 0): 42}


def test_a_skip_between_records_moves_the_offset_past_it() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock, batch_size=10)
    b.add(rec(0))
    b.skip("t.mapped.account", 0, 1)
    b.add(rec(2))
    b.skip("t.mapped.account", 0, 3)
    assert b.flush().offsets == {("t.mapped.account", 0): 4}


def test_dropped_partitions_are_neither_written_nor_reported() -> None:
    sink, clock = ListSink(), Clock()
    b = driver(sink, clock)
    b.add(rec(0, partition=0))
    b.add(rec(0, partition=1))
    assert b.drop([("t.mapped.account", 1)]) == 1
    out = b.flush()
    assert out.offsets == {("t.mapped.account", 0): 1}


def test_a_sink_reporting_indexes_outside_its_batch_is_a_bug() -> None:
    class Broken(ListSink):
        def write_batch(self, batch: Sequence[SinkRecord]) -> BatchResult:
            return BatchResult(rejects=[Reject(len(batch), "x", "y")])

    b = driver(Broken(), Clock())
    b.add(rec(0))
    with pytest.raises(SinkTerminalError, match="bug"):
        b.flush()
    assert b.buffered() == 1


def test_open_sets_the_sink_up_retrying_transient_errors() -> None:
    class Slow(ListSink):
        def setup(self) -> None:
            super().setup()
            if self.setups < 3:
                raise SinkTransientError("database starting")

    sink, waits = Slow(), Waits()
    driver(sink, Clock(), waits).open()
    assert sink.setups == 3 and len(waits.delays) == 2


def test_retry_policy_backoff_is_capped() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=3.0, max_backoff_s=5.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 3.0, 5.0, 5.0]
    assert policy.delay(1, hint=7.5) == 7.5


def test_params_for_a_prefix_read_every_mapped_topic() -> None:
    params = SinkParams.for_prefix("crm.x", kafka="b", registry="r", target_dsn="d")
    assert params.topics == {
        "crm.x.mapped.account": "account",
        "crm.x.mapped.contact": "contact",
        "crm.x.mapped.sale": "sale",
        "crm.x.mapped.case": "case",
    }
    assert params.dlq_topic == "crm.x.dlq"
    assert "target_dsn" not in repr(params)  # a DSN may carry a password


def test_params_from_the_demo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from crmflow.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml")
    params = SinkParams.from_config(cfg, kafka="b", registry="r", target_dsn="dbname=crm_target",
                                    batch_size=7)
    assert params.topics["crmflow.demo.mapped.case"] == "case" and len(params.topics) == 4
    assert (params.dlq_topic, params.group_id, params.target_dsn) == ("crmflow.demo.dlq", "crmflow-sink.demo",
                                                                     "dbname=crm_target")
    assert params.batch_size == 7  # an explicit value beats the config's


def test_cli_topic_pairs() -> None:
    from crmflow.cli.sink import _parse_topics
    from crmflow.exceptions import ConfigError

    assert _parse_topics(["a.b=account", "x=y=case"]) == {"a.b": "account", "x=y": "case"}
    with pytest.raises(ConfigError, match="TOPIC=ENTITY"):
        _parse_topics(["topic=lead"])
