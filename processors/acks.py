"""Offsets that advance only past events an agent processed: a guard around faust's consumer.

faust commits, per partition, the end of the run of consecutive offsets it considers acknowledged. Four
of its paths let that commit pass an event whose output never became durable (lost after a crash), and
the kill test of ``tests/e2e/test_dedupe.py`` met them on every restart:

* ``Stream.__aiter__`` acks every event it *skips*: one that reaches the stream while flow control is
  suspended (a rebalance, table recovery) or that was fetched under an older consumer generation
  (faust-streaming#216 and #221, robinhood/faust#604). On a ``noack`` stream too.
* ``Consumer._drain_messages`` treats a jump in the offsets it reads as a *gap* (meant for compacted
  topics and transaction markers) and counts the whole range, up to and including the event just read,
  as acknowledged.
* Around a rebalance its fetcher delivers events fetched before the seek to the committed offset; its
  read position then runs ahead and it discards the re-fetched ones: the stream jumps from 553 to 821.
* Its commit may start one past the committed offset (it reads Kafka's committed offset, the next one
  to process, as the last one processed), skipping the event at it.

:class:`ConfirmedAckConsumer` closes these paths for the topics the agents read:

* an ack counts only for an event the agent passed to :meth:`~ConfirmedAckConsumer.confirm` once its
  output is durable; a skipped event stays unacknowledged, so no commit passes it;
* gaps are ignored (these topics are neither compacted nor transactional: a real gap cannot occur), and
  a commit starts at the committed offset;
* :meth:`~ConfirmedAckConsumer.admit` hands the agent each partition's offsets in order and without holes,
  starting at the group's committed offset: an event read again is dropped (it was processed), and a hole rewinds
  the partition to its first missing offset; what was fetched before the rewind is dropped until that
  offset comes back. Processing in offset order also keeps a restarted run's results equal to an
  uninterrupted one's.

Other topics (table changelogs) keep faust's behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import faust
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka import TopicPartition as KafkaTP
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message

from crmflow.connections import kafka_config
from crmflow.metrics import REREADS

log = logging.getLogger(__name__)


class ConfirmedAckConsumer(aiokafka_driver.Consumer):
    """faust's aiokafka consumer whose ``guarded_topics`` commit only offsets the agents confirmed."""

    #: Guarded topic → the stage label its metrics carry.
    guarded_topics: Mapping[str, str] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._confirmed: defaultdict[TP, set[int]] = defaultdict(set)
        #: Acks refused (events faust skipped) and gaps ignored: each is an event read again later.
        self.refused_acks = 0
        self.ignored_gaps = 0
        #: Events read again and dropped; holes rewound.
        self.redelivered = 0
        self.rewinds = 0
        self._next: dict[TP, int] = {}
        self._rewound: dict[TP, tuple[int, float]] = {}
        self._admin: AdminClient | None = None

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        # After a rewind, drop what was fetched before it until the first missing event comes back: faust
        # would deliver those stale events, and its read position would then discard the rewound ones.
        async for tp, message in super().getmany(timeout):
            if self._fetched_in_order(tp, message.offset):
                yield tp, message

    def _fetched_in_order(self, tp: TP, offset: int) -> bool:
        """False for an event fetched before a pending rewind of its partition (it comes again)."""
        pending = self._rewound.get(tp)
        if pending is None:
            return True
        if offset != pending[0]:
            return False
        del self._rewound[tp]
        return True

    async def admit(self, events: list[faust.EventT[Any]]) -> list[faust.EventT[Any]]:
        """The events to process: for guarded topics, each partition's next offsets in order, no hole.

        The first event of a partition after an assignment must be at the committed offset (or the
        partition's earliest). An event before the expected offset was processed already and is dropped;
        one after it means faust never delivered the events in between: the partition is rewound to the
        first missing one and the events after it are dropped until it arrives.
        """
        admitted: list[faust.EventT[Any]] = []
        unknown = {e.message.tp for e in events if e.message.topic in self.guarded_topics} - self._next.keys()
        if unknown:
            self._next.update(await self._start_offsets(unknown))
        for event in events:
            message = event.message
            tp = message.tp
            want = self._next.get(tp)
            if want is None:  # not guarded, or its start offset is unknown (see _start_offsets)
                if tp.topic in self.guarded_topics:
                    self._next[tp] = message.offset + 1
                admitted.append(event)
                continue
            if message.offset == want:
                admitted.append(event)
                self._next[tp] = want + 1
                continue
            self._drop(message)
            if message.offset < want:
                self.redelivered += 1
                REREADS.labels(stage=self.guarded_topics[tp.topic], reason="duplicate").inc()
            else:
                await self._rewind(tp, want, message.offset)
        return admitted

    async def _start_offsets(self, tps: set[TP]) -> dict[TP, int]:
        """Where each partition resumes: the group's committed offset, or the partition's earliest.

        Asked with an AdminClient of its own, in a thread: faust's consumer thread is busy (and its calls
        wait) while a rebalance runs, and the rebalance itself waits for the agents' acks. A partition
        whose answer does not come is admitted from its first event, as faust delivers it (logged).
        """
        group = self.app.conf.id
        if self._admin is None:
            servers = ",".join(f"{url.host}:{url.port or 9092}" for url in self.app.conf.broker)
            self._admin = AdminClient(kafka_config(servers))  # PLAINTEXT: build_app refuses anything else
        try:
            found = await asyncio.to_thread(_group_start_offsets, self._admin, group, sorted(tps))
        except KafkaException as exc:
            log.warning("cannot read the committed offsets of %s (%s): %d partition(s) start unchecked",
                        group, exc, len(tps))
            return {}
        return {TP(topic, partition): offset for (topic, partition), offset in found.items()}

    def _drop(self, message: Message) -> None:
        """Forget an event the agent will not process (it is read again, or was processed already)."""
        message.acked = True
        self._unacked_messages.discard(message)

    async def _rewind(self, tp: TP, want: int, seen: int) -> None:
        # One seek per hole, repeated if the missing event has not come a second later (the seek itself
        # can race a fetch in flight); the events dropped meanwhile are the ones fetched before it.
        now = time.monotonic()
        last = self._rewound.get(tp)
        if last is not None and last[0] == want and now - last[1] < 1.0:
            return
        self.rewinds += 1
        REREADS.labels(stage=self.guarded_topics[tp.topic], reason="hole").inc()
        log.warning("%s[%d]: faust delivered offset %d but not %d..%d; reading them again from %d",
                    tp.topic, tp.partition, seen, want, seen - 1, want)
        self._rewound[tp] = (want, now)
        await self.seek(tp, want)

    def confirm(self, events: Iterable[faust.EventT[Any]]) -> None:
        """Let the acks of these events count: call it once their output is durable, just before acking."""
        confirmed = self._confirmed
        for event in events:
            message = event.message
            confirmed[message.tp].add(message.offset)

    def ack(self, message: Message) -> bool:
        if message.topic in self.guarded_topics:
            confirmed = self._confirmed.get(message.tp)
            if confirmed is None or message.offset not in confirmed:
                self.refused_acks += 1
                REREADS.labels(stage=self.guarded_topics[message.topic], reason="skipped").inc()
                log.debug("not acking %s[%d]@%d: no agent confirmed it (faust skipped it)",
                          message.topic, message.partition, message.offset)
                return False
            confirmed.discard(message.offset)
        return bool(super().ack(message))

    def _new_offset(self, tp: TP) -> int | None:
        # faust lets the commit start one past the committed offset (it reads the committed offset as the
        # last one processed; it is the next one to process): the event AT it would be skipped.
        if tp.topic in self.guarded_topics:
            acked, committed = self._acked[tp], self._committed_offset[tp]
            if acked and committed is not None and min(acked) > committed:
                return None
        offset: int | None = super()._new_offset(tp)
        return offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic in self.guarded_topics:
            self.ignored_gaps += 1
            log.debug("ignoring a read gap %s[%d] %d..%d: the events in it are read again",
                      tp.topic, tp.partition, offset_from, offset_to)
            return
        await super()._add_gap(tp, offset_from, offset_to)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._confirmed.pop(tp, None)
            self._next.pop(tp, None)
            self._rewound.pop(tp, None)
        await super().on_partitions_revoked(revoked)


_ADMIN_TIMEOUT_S = 10.0


def _group_start_offsets(admin: AdminClient, group: str, tps: list[TP]) -> dict[tuple[str, int], int]:
    """``{(topic, partition): offset}``: the group's committed offset, or the partition's earliest one."""
    wanted = [KafkaTP(tp.topic, tp.partition) for tp in tps]
    committed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, wanted)],
                                                  request_timeout=_ADMIN_TIMEOUT_S)[group].result()
    earliest = admin.list_offsets({ktp: OffsetSpec.earliest() for ktp in wanted},  # type: ignore[no-untyped-call]
                                  request_timeout=_ADMIN_TIMEOUT_S)  # fmt: skip
    out: dict[tuple[str, int], int] = {}
    for ktp in committed.topic_partitions or ():
        low = earliest[KafkaTP(ktp.topic, ktp.partition)].result().offset
        out[(ktp.topic, ktp.partition)] = max(ktp.offset, low, 0)  # a negative offset: nothing committed
    return out


class ConfirmedAckApp(faust.App):
    """A faust App whose consumer is a :class:`ConfirmedAckConsumer` guarding ``guarded_topics`` (topic →
    stage label of its metrics)."""

    def __init__(self, *args: Any, guarded_topics: Mapping[str, str], **kwargs: Any) -> None:
        self._guarded_topics = dict(guarded_topics)
        super().__init__(*args, **kwargs)

    def _new_consumer(self) -> ConfirmedAckConsumer:
        consumer_cls = type("Consumer", (ConfirmedAckConsumer,), {"guarded_topics": self._guarded_topics})
        transport = self.transport
        consumer: ConfirmedAckConsumer = consumer_cls(
            transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=transport.loop,
        )
        return consumer
