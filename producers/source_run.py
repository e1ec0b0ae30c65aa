"""One source's state during a snapshot run, fed by the producer's delivery callbacks.

Delivery callbacks run inside ``Producer.poll``/``flush`` on the thread that reads the source, so this
state is only ever touched by that one thread and needs no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message

from crmflow.metrics import RECORDS
from producers.checkpoint import Checkpoint, ContiguousTracker
from producers.keys import KeyLog
from producers.report import SourceStats
from producers.sources import SourceSpec

log = logging.getLogger(__name__)

STAGE = "snapshot"
OUTCOMES = ("in", "out", "rejected", "filtered")


@dataclass
class SourceRun:
    """Counts, the contiguous-ack tracker and the checkpoint of one source in one run.

    The counts start from the checkpoint's (the done prefix of earlier calls of the run), so they cover the
    whole run; the metrics count only what this process does.
    """

    spec: SourceSpec
    run_id: str
    topic: str
    checkpoint: Checkpoint
    on_delivered: Callable[[str, int], None] | None = None
    stats: SourceStats = field(default_factory=SourceStats)
    first_error: str | None = None
    key_source: int = 0
    """The source's index in the run's :class:`~producers.keys.KeyIndex`."""
    key_log: KeyLog = field(default_factory=KeyLog.disabled)
    """Where the keys this source claims are persisted for a resume."""
    tracker: ContiguousTracker = field(init=False)
    _counters: dict[str, Any] = field(init=False, repr=False)
    _reported: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cp = self.checkpoint
        self.tracker = ContiguousTracker(cp.mark, cp.counts, cp.rejected_by_rule)
        self.stats = stats_of(cp, self.stats)
        self._counters = {o: RECORDS.labels(stage=STAGE, entity=self.spec.entity, outcome=o) for o in OUTCOMES}
        s = self.stats
        self._reported = {"in": s.read, "out": s.produced, "rejected": s.rejected, "filtered": s.filtered}

    # Delivery callbacks: ``partial(run.record_delivered, seq)`` is the message's ``on_delivery``.

    def record_delivered(self, seq: int, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed(err)
            return
        self.tracker.ack(seq)
        self.stats.produced += 1
        if self.on_delivered is not None:
            self.on_delivered(self.spec.name, self.stats.produced)

    def reject_delivered(self, seq: int, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed(err)
            return
        self.tracker.ack(seq)

    def _failed(self, err: KafkaError) -> None:
        self.stats.failed += 1
        if self.first_error is None:
            self.first_error = err.str()  # librdkafka's text: error name and broker reason, never the payload
            log.error("delivery failed for source %s: %s", self.spec.name, self.first_error,
                      extra={"stage": STAGE, "run_id": self.run_id})  # fmt: skip

    # Called by the producer between batches.

    def report_metrics(self) -> None:
        """Bring ``crmflow_records_total`` up to the counts; per batch, since a counter per record is slow."""
        s = self.stats
        for outcome, now in (("in", s.read), ("out", s.produced), ("rejected", s.rejected), ("filtered", s.filtered)):
            delta = now - self._reported[outcome]
            if delta:
                self._counters[outcome].inc(delta)
                self._reported[outcome] = now

    def settle(self, *, exhausted: bool) -> Checkpoint:
        """The checkpoint as of now; complete when the source was read to its end and all of it is done."""
        self.stats.complete = exhausted and self.stats.failed == 0 and self.tracker.in_flight == 0
        cp = self.checkpoint
        cp.mark, cp.counts, cp.complete = self.tracker.mark, dict(self.tracker.counts), self.stats.complete
        cp.rejected_by_rule = dict(self.tracker.rules)
        return cp


def stats_of(cp: Checkpoint, into: SourceStats | None = None) -> SourceStats:
    """``into`` (or new stats) holding the checkpoint's counts as the part read before this call."""
    s = into or SourceStats()
    s.produced = int(cp.counts.get("produced", 0))
    s.rejected = int(cp.counts.get("rejected", 0))
    s.filtered = int(cp.counts.get("filtered", 0))
    s.read = s.read_before = cp.read
    s.rejected_by_rule = dict(cp.rejected_by_rule)
    s.complete = cp.complete
    s.run_counts = dict(cp.counts)
    return s
