"""The sink contract and the batching driver every target shares.

A target CRM implements :class:`Sink`: essentially one method, :meth:`Sink.write_batch` ("write these
records durably, in one transaction, and tell me which ones you refused"). :class:`BatchingSink` owns the
rest of the loop: one buffer per topic-partition, a flush on size or age, retries of transient target
errors with backoff, and the offsets that may be committed — reported only after a flush succeeded, so a
record is never marked consumed before the target has it (at-least-once delivery; idempotent writes in
the target make it exactly-once in effect).

Adding a REST CRM (a Salesforce- or HubSpot-style bulk upsert) means subclassing :class:`Sink` and
writing ``write_batch``: send the batch, raise :class:`~sinks.exceptions.SinkTransientError` on a 429/5xx
or a timeout (with ``retry_after`` when the API says), and return a :class:`Reject` for every record the
API refused. Parking children until their parent exists is optional (``BatchResult.parked`` and
:meth:`Sink.dead_letters`); a target that does not need it leaves both alone.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from crmflow.exceptions import TransientError
from sinks.exceptions import FlushAbortedError, RetriesExhaustedError, SinkTerminalError, SinkTransientError

logger = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]
T = TypeVar("T")


class SinkRecord(NamedTuple):
    """One decoded mapped record and where it came from (a named tuple: built once per message, and a frozen
    dataclass's ``object.__setattr__`` per field costs more than the sink's bookkeeping of it).

    ``value`` is the target entity as decoded from Avro (dates as ``date``, decimals as ``Decimal``).
    ``key`` and ``raw_value`` are the original message bytes: a target that holds a record back
    (parking) keeps them so the record can still be dead-lettered as it arrived.
    """

    entity: str
    value: Mapping[str, Any]
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    raw_value: bytes | None = None

    @property
    def origin(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Reject:
    """A record of the batch (``index`` into it) the target refused; goes to the dead-letter topic.

    ``error`` must not contain personal data: name the rule, the field and the constraint, never a value.
    """

    index: int
    rule: str
    error: str
    field: str | None = None


@dataclass(frozen=True, slots=True)
class HeldDeadLetter:
    """A record the target held durably (parked) and has now given up on (orphan, refused on retry).

    It stays held until :meth:`Sink.ack_dead_letters` is called with it, which happens only after the
    dead-letter topic acknowledged it, so a crash in between re-sends it rather than losing it.
    """

    handle: int
    entity: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw_value: bytes
    rule: str
    error: str
    field: str | None = None
    run_id: str | None = None
    source_position: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """What ``write_batch`` did. ``rejects`` and ``parked`` hold indexes into the batch."""

    rejects: Sequence[Reject] = ()
    parked: Sequence[int] = ()
    written: int = 0  # inserted or changed
    unchanged: int = 0  # already there with the same values (a re-delivery)


class Sink(abc.ABC):
    """A target the pipeline writes mapped records into.

    Lifecycle, driven by :class:`BatchingSink`:

    1. ``setup()`` — called once before the first write (and again after ``close()`` only if the sink is
       reused). Connect, create or migrate what the target needs. May raise a transient error: the driver
       retries it like a write.
    2. ``write_batch(batch)`` — called when a flush is due (a buffer reached ``batch_size`` records, the
       oldest buffered record is ``max_batch_age_s`` old, partitions are being revoked, or the runner
       stops). The batch holds records of one or more topic-partitions, each partition in offset order,
       possibly several entities. Write all of them durably in one transaction, or none. Raise a
       ``TransientError`` when the target is unavailable (the driver retries the same batch); report a
       record the target refuses as a :class:`Reject` so it never fails its batch.
    3. ``dead_letters(final=...)`` — called periodically and once more with ``final=True`` when a drain has
       read everything: return held records that can no longer be written. Default: none.
    4. ``ack_dead_letters(records)`` — called once those dead letters are safely in Kafka; forget them.
    5. ``close()`` — called once at the end, also after an error; must not raise.

    A sink is used from one thread at a time.
    """

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Connect and prepare the target (see the class docstring). Default: nothing to do."""

    @abc.abstractmethod
    def write_batch(self, batch: Sequence[SinkRecord]) -> BatchResult:
        """Write ``batch`` durably in one transaction; return per-record rejects (see the class docstring)."""

    def dead_letters(self, *, final: bool) -> list[HeldDeadLetter]:
        """Held records given up on; ``final`` means no parent can arrive any more (end of a drain)."""
        return []

    def ack_dead_letters(self, records: Sequence[HeldDeadLetter]) -> None:  # noqa: B027 - optional hook
        """Forget ``records``: they are in the dead-letter topic now."""

    def held(self) -> Mapping[str, int]:
        """Records currently held back (parked) per entity, for the ``crmflow_parked_records`` gauge."""
        return {}

    def parents(self) -> frozenset[str]:
        """Entities other entities' records wait for (held back until their parent is written): the runner
        reads their backlog first, so children find their parent instead of being held. Default: none."""
        return frozenset()

    def resolved(self) -> int:
        """Held records written since ``setup()`` once their parent arrived (for the runner's report)."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once at the end, also after errors; must not raise."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient target errors: ``attempts`` tries in all (1 = no retry)."""

    attempts: int = 8
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based); a target's hint wins if longer."""
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return max(backoff, hint or 0.0)


@dataclass(frozen=True)
class FlushOutcome:
    """A successful flush: the batch written, what the target said, and the offsets now safe to commit."""

    batch: list[SinkRecord]
    result: BatchResult
    offsets: dict[TopicPartitionKey, int]
    duration_s: float
    attempts: int

    def rejected(self) -> list[tuple[SinkRecord, Reject]]:
        return [(self.batch[r.index], r) for r in self.result.rejects]

    def parked(self) -> list[SinkRecord]:
        return [self.batch[i] for i in self.result.parked]


@dataclass
class _Buffer:
    records: list[SinkRecord] = field(default_factory=list)
    next_offset: int | None = None  # last offset added or skipped + 1
    started: float | None = None  # clock() when the first item arrived


def _never_stop(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class BatchingSink:
    """Buffers records per topic-partition in front of a :class:`Sink` and tells when to commit what.

    The caller (the runner) ``add``s records and ``skip``s offsets it dealt with itself (a poison message
    already dead-lettered), asks ``due()`` after each poll, and calls ``flush()``; the
    :class:`FlushOutcome` carries the offsets to commit (last offset + 1 per partition). A flush that
    fails raises and keeps its buffers, so nothing is reported for commit and a later flush retries them.

    ``wait(seconds) -> bool`` is how the driver sleeps between retries; it returns True when a stop was
    requested (``threading.Event.wait`` fits), which ends the retry with :class:`FlushAbortedError`.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        batch_size: int = 1000,
        max_batch_age_s: float = 1.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_batch_age_s <= 0:
            raise ValueError("max_batch_age_s must be positive")
        self.sink = sink
        self.batch_size = batch_size
        self.max_batch_age_s = max_batch_age_s
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._wait = wait or _never_stop
        self._buffers: dict[TopicPartitionKey, _Buffer] = {}

    # ------------------------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Set the sink up, retrying transient failures (the database may still be starting)."""
        self._call("set up the sink", self.sink.setup, retry=True)

    def close(self) -> None:
        """Close the sink; buffered records are dropped (they were never committed)."""
        self._buffers.clear()
        self.sink.close()

    # ------------------------------------------------------------------------------------ buffering

    def add(self, record: SinkRecord) -> None:
        """Buffer ``record`` behind the others of its topic-partition."""
        buf = self._buffer((record.topic, record.partition))
        buf.records.append(record)
        buf.next_offset = record.offset + 1

    def skip(self, topic: str, partition: int, offset: int) -> None:
        """Count ``offset`` as done without a record; it is committed with the partition's next flush."""
        self._buffer((topic, partition)).next_offset = offset + 1

    def _buffer(self, tp: TopicPartitionKey) -> _Buffer:
        buf = self._buffers.get(tp)
        if buf is None:
            buf = self._buffers[tp] = _Buffer()
        if buf.started is None:
            buf.started = self._clock()
        return buf

    def due(self) -> bool:
        """True when some buffer holds ``batch_size`` records or its oldest item is too old."""
        now = self._clock()
        return any(
            len(b.records) >= self.batch_size or (b.started is not None and now - b.started >= self.max_batch_age_s)
            for b in self._buffers.values()
        )

    def buffered(self, partitions: Iterable[TopicPartitionKey] | None = None) -> int:
        """Records waiting in the buffers (of ``partitions``, default all)."""
        keys = self._buffers.keys() if partitions is None else partitions
        return sum(len(self._buffers[tp].records) for tp in keys if tp in self._buffers)

    def pending(self) -> list[TopicPartitionKey]:
        """Partitions with records or skipped offsets not yet flushed."""
        return [tp for tp, b in self._buffers.items() if b.next_offset is not None]

    def drop(self, partitions: Iterable[TopicPartitionKey]) -> int:
        """Forget the buffers of ``partitions`` without writing (partitions lost); returns records dropped."""
        dropped = 0
        for tp in partitions:
            buf = self._buffers.pop(tp, None)
            dropped += len(buf.records) if buf else 0
        return dropped

    # -------------------------------------------------------------------------------------- flushing

    def flush(self, partitions: Iterable[TopicPartitionKey] | None = None, *, retry: bool = True) -> FlushOutcome:
        """Write the buffers of ``partitions`` (default: every pending one) as one batch.

        Called when ``due()`` says so, on revoke (for the revoked partitions) and on stop. Returns the
        offsets to commit; raises (keeping the buffers) when the sink failed, after retrying transient
        errors unless ``retry`` is False.
        """
        wanted = self.pending() if partitions is None else list(partitions)
        tps = [tp for tp in wanted if tp in self._buffers and self._buffers[tp].next_offset is not None]
        batch = [r for tp in tps for r in self._buffers[tp].records]
        started = time.perf_counter()
        attempts = 0
        result = BatchResult()
        if batch:
            result, attempts = self._call("write a batch", lambda: self.sink.write_batch(batch), retry=retry)
            self._check(result, len(batch))
        offsets: dict[TopicPartitionKey, int] = {}
        for tp in tps:
            next_offset = self._buffers.pop(tp).next_offset
            assert next_offset is not None
            offsets[tp] = next_offset
        return FlushOutcome(batch, result, offsets, time.perf_counter() - started, attempts)

    def dead_letters(self, *, final: bool) -> list[HeldDeadLetter]:
        """The sink's held records given up on (retrying transient errors)."""
        return self._call("list held dead letters", lambda: self.sink.dead_letters(final=final), retry=True)[0]

    def ack_dead_letters(self, records: Sequence[HeldDeadLetter]) -> None:
        if records:
            self._call("forget dead-lettered records", lambda: self.sink.ack_dead_letters(records), retry=True)

    @staticmethod
    def _check(result: BatchResult, size: int) -> None:
        seen: set[int] = set()
        for index in [r.index for r in result.rejects] + list(result.parked):
            if not 0 <= index < size or index in seen:
                raise SinkTerminalError(
                    f"sink reported record index {index} twice or outside its batch of {size}; this is a bug "
                    "in the sink's write_batch"
                )
            seen.add(index)

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool) -> tuple[T, int]:
        attempts = self.retry.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return fn(), attempt
            except TransientError as exc:
                if attempt == attempts:
                    raise RetriesExhaustedError(what, attempt, exc) from exc
                hint = exc.retry_after if isinstance(exc, SinkTransientError) else None
                delay = self.retry.delay(attempt, hint)
                logger.warning(
                    "could not %s (attempt %d of %d, %s: %s); retrying in %.1fs",
                    what,
                    attempt,
                    attempts,
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"stage": "sink"},
                )
                if self._wait(delay):
                    raise FlushAbortedError(f"stop requested while waiting to retry: {what}") from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
