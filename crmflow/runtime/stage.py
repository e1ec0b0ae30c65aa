"""The contract between the batch runtime and a stage: decoded records in, outputs out, no I/O.

A stage is a pure function of a batch, plus partition-local state it is handed by the runtime:

- :meth:`BatchStage.process` gets the decoded records of one consumed batch (several partitions, each in
  offset order) and returns a :class:`StageOutput`: records per output topic, dead letters (by index into
  the batch) and state writes (changelog entries). It must not produce, commit or sleep. The runtime
  produces everything it returns in one Kafka transaction together with the batch's input offsets, so the
  outputs, the state and the offsets become visible together or not at all.
- A stateful stage maps each of its *state topics* (input topics whose partitions own state) to a compacted
  ``changelog`` topic (:attr:`BatchStage.changelogs`). When partitions of a state topic are assigned, the
  runtime reads the committed changelog of those partitions and calls :meth:`BatchStage.restore` per
  (state topic, partition); when they are revoked or lost, or a transaction was aborted, it calls
  :meth:`BatchStage.release` and restores again before the partition's next batch. A state write names its
  state topic and partition and goes to that partition of the topic's changelog (the two are
  co-partitioned).

A stage whose output is a write into some other system (the sink writes the target CRM) does that write in
``process`` and returns only when it is durable; its dead letters and the input offsets then commit in the
runtime's transaction, so the offsets never pass a record the target does not hold. Such a write may raise a
``TransientError`` (the target is away): the runtime rewinds the batch and retries it with backoff.

Lifecycle: ``setup()`` once before subscribing (retried while it raises a ``TransientError``);
``decoder(topic)`` and ``topics`` are read once at start; ``restore``/``release`` are called from the
consumer's rebalance callbacks (between batches, never during ``process``); ``process`` is called once per
non-empty batch, and ``committed(output)`` after its transaction committed; ``maintain(final=...)`` every
few seconds between batches, and with ``final=True`` when a drain has read everything; ``close`` once at
the end.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from crmflow.dlq import Letter


class Decoder(Protocol):
    """Decodes one message value (Avro with the registry's wire header); raises ``SerializationError``."""

    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]: ...


class Encoder(Protocol):
    """Encodes a batch of records of one topic (what :class:`~crmflow.serialization.AvroCodec` does)."""

    def encode_many(self, objs: Iterable[Mapping[str, Any]]) -> list[bytes]: ...


class InRecord(NamedTuple):
    """One consumed message, decoded. ``raw`` is the value as it arrived (what a dead letter keeps).

    Records and outputs are named tuples, not frozen dataclasses: a frozen dataclass sets each field through
    ``object.__setattr__``, which cost about 2% of a processor's CPU at one per message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any]
    raw: bytes
    headers: Sequence[tuple[str, str | bytes | None]] | None = None  # the message's Kafka headers, as read

    @property
    def origin(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class OutRecord(NamedTuple):
    """A record to produce; ``value`` is encoded with the encoder of ``topic``."""

    topic: str
    key: bytes | None
    value: Mapping[str, Any]
    headers: Sequence[tuple[str, bytes]] | None = None  # produced with the record (a stage's own metadata)
    partition: int = -1  # this partition of ``topic``; -1: the partitioner's choice by key


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One changelog entry of the state of ``topic`` (a state topic of the stage) partition ``partition``:
    ``value`` None deletes ``key`` (a tombstone, for the compacted topic)."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record of the batch (``index``) the stage refused: it goes to the dead-letter topic with this
    reason. ``error`` names ids, fields and rules, never a value."""

    index: int
    stage: str
    rule: str
    error: str
    field: str | None = None
    entity: str | None = None
    run_id: str | None = None
    source_position: str | None = None


@dataclass
class StageOutput:
    """What one batch produced. ``counts`` are ``(stage, entity, outcome) -> n`` for ``crmflow_records_total``;
    ``decisions`` are extra counters a stage reports (``(metric name, labels...) -> n``)."""

    records: list[OutRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    state: list[StateWrite] = field(default_factory=list)
    #: Dead letters that are not records of this batch (records a stage held and has now given up on).
    letters: list[Letter] = field(default_factory=list)
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, stage: str, entity: str, outcome: str, n: int = 1) -> None:
        if n:
            key = (stage, entity, outcome)
            self.counts[key] = self.counts.get(key, 0) + n


class BatchStage(abc.ABC):
    """A stage the runtime drives; see the module docs for the lifecycle."""

    #: The stage label of metrics and dead letters of records the runtime rejects itself (undecodable).
    name: str = "stage"
    #: State topic (an input topic whose partitions own state) → the compacted changelog topic of that state,
    #: co-partitioned with it; empty for a stateless stage.
    changelogs: Mapping[str, str] = MappingProxyType({})
    #: A message without a value (a tombstone of a compacted topic) is passed over (True) or dead-lettered.
    skip_tombstones: bool = False
    #: Input topics read first while they hold a backlog: the runtime pauses the other topics' partitions while
    #: these topics' assigned partitions have at least a batch of unread messages (the sink: parent entities,
    #: so that a backlog's children find their parent written instead of being held back). Empty: all alike.
    first_topics: Sequence[str] = ()

    @property
    @abc.abstractmethod
    def topics(self) -> Sequence[str]:
        """The input topics."""

    @abc.abstractmethod
    def decoder(self, topic: str) -> Decoder:
        """The decoder of one input topic's values."""

    @abc.abstractmethod
    def encoder(self, topic: str) -> Encoder:
        """The encoder of one output topic's values."""

    @abc.abstractmethod
    def process(self, batch: Sequence[InRecord]) -> StageOutput:
        """Turn one batch into its outputs. Pure: no I/O; may update the state of the batch's partitions."""

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Connect to and prepare what ``process`` writes into; may raise a ``TransientError`` (retried)."""

    def committed(self, output: StageOutput) -> None:  # noqa: B027 - optional hook
        """``output`` (of ``process`` or ``maintain``) is committed: its dead letters are in Kafka."""

    def maintain(self, *, final: bool) -> StageOutput | None:
        """Periodic work between batches: dead letters of held records given up on (``final``: a drain read
        everything, so nothing held can be completed any more). Default: nothing."""
        return None

    def internal_topics(self) -> Mapping[str, int]:
        """Topics the stage both writes and reads (an internal repartition topic), by partition count: the
        runtime creates the missing ones before it subscribes, since nothing upstream does."""
        return {}

    def restore(self, topic: str, partition: int, entries: Mapping[bytes, bytes]) -> None:  # noqa: B027
        """The committed state of state topic ``topic``'s ``partition`` (changelog key → latest value), before
        its first batch. Optional hook."""

    def release(self, topic: str, partitions: Iterable[int]) -> None:  # noqa: B027 - optional hook
        """Forget the state of ``partitions`` of state topic ``topic`` (revoked, lost, or to be restored after
        an abort)."""

    def entity_of(self, record: InRecord) -> str:
        """The entity label of a record the runtime itself rejects (undecodable)."""
        return "unknown"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once when the runtime stops."""
