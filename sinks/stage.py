"""The sink as a stage of the core batch runtime: each consumed batch is written into the target, durably,
before the runtime commits the batch's offsets (with the target's refusals as dead letters) in one Kafka
transaction.

:class:`SinkStage` adapts a :class:`~sinks.base.Sink` (the small contract a target CRM implements) to
:class:`~crmflow.runtime.BatchStage`. The :class:`~sinks.base.BatchingSink` driver stays the one place that
retries a target that is away (with backoff, ``retry_after`` hints and a stop that interrupts the wait);
when its retries run out, the stage raises a ``TransientError`` and the runtime rewinds the batch and tries
it again later, so an outage never loses, skips or dead-letters a record.

Held records (children parked until their parent arrives) that the target gives up on come back from
:meth:`SinkStage.maintain` as dead letters; the target forgets them only once the runtime committed them
(:meth:`SinkStage.committed`), so a crash in between sends them again rather than losing them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from crmflow.dlq import Letter
from crmflow.runtime import BatchStage, InRecord, Rejection, StageOutput
from crmflow.runtime.stage import Decoder, Encoder
from sinks import telemetry
from sinks.base import BatchingSink, FlushOutcome, HeldDeadLetter, RetryPolicy, Sink, SinkRecord
from sinks.exceptions import RetriesExhaustedError, SinkError, SinkTransientError
from sinks.params import SinkStats

logger = logging.getLogger(__name__)

STAGE = telemetry.STAGE


class SinkStage(BatchStage):
    """Write each batch of mapped records into ``sink``; see the module docs."""

    name = STAGE
    skip_tombstones = True  # deletes are not part of the mapped contract; a tombstone is passed over

    def __init__(self, sink: Sink, topics: Mapping[str, str], decoders: Mapping[str, Decoder], *,
                 retry: RetryPolicy, wait: Callable[[float], bool], stats: SinkStats | None = None,
                 give_up: bool = False) -> None:
        """``topics``: mapped topic → entity; ``wait(seconds) -> stop requested`` paces the retries;
        ``give_up``: a target still away after the retry policy ends the run (a bounded drain) instead of
        being retried later."""
        self.sink = sink
        self._entities = dict(topics)
        self._decoders = dict(decoders)
        self.batching = BatchingSink(sink, batch_size=1, retry=retry, wait=wait)
        self.stats = stats or SinkStats()
        self._held: dict[int, HeldDeadLetter] = {}  # handle → held record being dead-lettered
        self._opened = False
        self._give_up = give_up
        # The topics of the entities the target parks children for (accounts), when children come too: a
        # backlog's parents are written first, so their children are not parked and written twice.
        parents = [t for t, e in self._entities.items() if e in sink.parents()]
        self.first_topics = parents if len(parents) < len(self._entities) else []

    # ------------------------------------------------------------------------------------- contract

    @property
    def topics(self) -> Sequence[str]:
        return list(self._entities)

    def decoder(self, topic: str) -> Decoder:
        return self._decoders[topic]

    def encoder(self, topic: str) -> Encoder:
        raise SinkError(f"the sink produces no records (asked for an encoder of {topic})")

    def entity_of(self, record: InRecord) -> str:
        return self._entities.get(record.topic, "unknown")

    def setup(self) -> None:
        """Connect to the target and apply its migrations; a target still starting is retried."""
        if not self._opened:
            self.batching.open()
            self._opened = True

    def process(self, batch: Sequence[InRecord]) -> StageOutput:
        counts = Counter(self._entities[r.topic] for r in batch)
        telemetry.records_in(counts)
        self.stats.consumed += len(batch)
        for r in batch:
            self.batching.add(SinkRecord(self._entities[r.topic], r.value, r.topic, r.partition, r.offset, r.key,
                                         r.raw))
        try:
            outcome = self.batching.flush()
        except RetriesExhaustedError as exc:
            self.batching.drop(self.batching.pending())
            if self._give_up:
                raise
            raise SinkTransientError(str(exc)) from exc
        except BaseException:
            self.batching.drop(self.batching.pending())
            raise
        telemetry.changes_landed(batch, outcome)
        return self._output(outcome)

    def _output(self, outcome: FlushOutcome) -> StageOutput:
        out = StageOutput()
        for record, reject in outcome.rejected():
            value = record.value
            out.rejections.append(Rejection(reject.index, STAGE, reject.rule, reject.error, reject.field,
                                            record.entity, _str(value.get("run_id")),
                                            _str(value.get("source_position"))))
        self.stats.batches += 1
        self.stats.written += outcome.result.written
        self.stats.unchanged += outcome.result.unchanged
        self.stats.rejected += len(outcome.result.rejects)
        self.stats.parked += len(outcome.result.parked)
        telemetry.flushed(outcome)
        return out

    # ------------------------------------------------------------------------------- held records

    def maintain(self, *, final: bool) -> StageOutput | None:
        """Held records the target gave up on (orphans...), as dead letters; refreshes the parked gauge."""
        held = self.batching.dead_letters(final=final)
        if not final:
            self._parked_gauge()
        if not held:
            return None
        out = StageOutput()
        for h in held:
            self._held[h.handle] = h
            out.letters.append(Letter(stage=STAGE, rule=h.rule, error=h.error, value=h.raw_value, key=h.key,
                                      field=h.field, entity=h.entity, run_id=h.run_id,
                                      source_position=h.source_position, topic=h.topic, partition=h.partition,
                                      offset=h.offset))
            out.count(STAGE, h.entity, "rejected")
        return out

    def committed(self, output: StageOutput) -> None:
        if not output.letters or not self._held:
            return
        held = list(self._held.values())
        self.batching.ack_dead_letters(held)
        self._held.clear()
        self.stats.held_dead_lettered += len(held)
        self.stats.orphaned += sum(1 for h in held if h.rule == "orphan")

    def _parked_gauge(self) -> None:
        try:
            telemetry.parked(self.sink.held())
        except SinkError as exc:
            logger.warning("could not count parked records: %s", exc, extra={"stage": STAGE})

    def finish(self) -> None:
        """After a drain: the parked gauge, and how many held records found their parent."""
        self._parked_gauge()
        self.stats.resolved = self.sink.resolved()

    def close(self) -> None:
        self.batching.close()


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
