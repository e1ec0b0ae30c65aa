"""The consumer guard of the processor's agents: which acks count, which events reach an agent, when a
partition is rewound. The consumer is faust's real one; only its calls to the broker (committed and
earliest offsets, seek) are replaced, since these tests check the guard's decisions, not Kafka. The e2e
kill test (tests/e2e/test_dedupe.py) proves the whole on the real stack."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import Message

from crmflow.metrics import REREADS
from processors.acks import ConfirmedAckApp, ConfirmedAckConsumer

pytestmark = pytest.mark.unit

GUARDED = "crm.raw.customers"
CHANGELOG = "crmflow-process-dedupe-account-changelog"
TP0 = TP(GUARDED, 0)


class OfflineConsumer(ConfirmedAckConsumer):
    """The guard with the broker's answers fixed: the group resumes at offset 10 (None: no answer); seeks
    recorded."""

    committed_at: int | None = 10
    seeks: list[tuple[TP, int]]

    async def _start_offsets(self, tps: set[TP]) -> dict[TP, int]:
        return {} if self.committed_at is None else dict.fromkeys(tps, self.committed_at)

    async def _seek(self, partition: TP, offset: int) -> None:
        self.seeks.append((partition, offset))


@pytest.fixture
def app() -> Iterator[faust.App]:
    app = ConfirmedAckApp("acks-test", broker="kafka://127.0.0.1:1", guarded_topics={GUARDED: "process"},
                          store="memory://", web_enabled=False)
    app.topics.acking_topics.add(GUARDED)  # what an agent reading the topic registers
    yield app


@pytest.fixture
def consumer(app: faust.App) -> OfflineConsumer:
    c = OfflineConsumer(app.transport, callback=app.topics.on_message, on_partitions_revoked=app._on_partitions_revoked,
                        on_partitions_assigned=app._on_partitions_assigned, beacon=app.beacon,
                        loop=app.transport.loop)
    c.guarded_topics = {GUARDED: "process"}
    c.seeks = []
    c._committed_offset[TP0] = 10
    return c


def event(app: faust.App, offset: int, topic: str = GUARDED, partition: int = 0) -> faust.EventT[Any]:
    message = Message(topic, partition, offset, 0.0, 0, None, b"k", b"v", None)
    return faust.Event(app, b"k", b"v", {}, message)


def offsets(events: list[faust.EventT[Any]]) -> list[int]:
    return [e.message.offset for e in events]


def rereads(reason: str) -> float:
    return REREADS.labels(stage="process", reason=reason)._value.get()


def admit(consumer: ConfirmedAckConsumer, events: list[faust.EventT[Any]]) -> list[faust.EventT[Any]]:
    return asyncio.run(consumer.admit(events))


def test_events_in_order_from_the_committed_offset_are_admitted(app: faust.App, consumer: OfflineConsumer) -> None:
    assert offsets(admit(consumer, [event(app, o) for o in (10, 11, 12)])) == [10, 11, 12]
    assert offsets(admit(consumer, [event(app, 13)])) == [13]
    assert consumer.seeks == [] and consumer.rewinds == 0


def test_an_event_read_again_is_dropped_and_forgotten(app: faust.App, consumer: OfflineConsumer) -> None:
    admit(consumer, [event(app, o) for o in (10, 11, 12)])
    again = event(app, 11)
    assert admit(consumer, [again, event(app, 13)]) != [] and consumer.redelivered == 1
    assert again.message.acked, "a dropped event must not hold up a rebalance's wait for acks"
    assert again.message not in consumer.unacked


def test_a_hole_rewinds_the_partition_and_drops_what_follows_until_it_is_filled(
    app: faust.App, consumer: OfflineConsumer,
) -> None:
    admit(consumer, [event(app, 10)])
    holes = rereads("hole")
    # faust never delivered 11 and 12: the partition is rewound to 11, and 13, 14 are dropped.
    assert offsets(admit(consumer, [event(app, 13), event(app, 14)])) == []
    assert consumer.seeks == [(TP0, 11)] and consumer.rewinds == 1 and rereads("hole") == holes + 1
    # Fetched before the seek took effect: never handed to faust's stream (its read position would then
    # discard the rewound events); the first missing event lifts the filter.
    assert not consumer._fetched_in_order(TP0, 15)
    assert consumer._fetched_in_order(TP0, 11)
    assert consumer._fetched_in_order(TP0, 12)
    assert offsets(admit(consumer, [event(app, o) for o in (11, 12, 13, 14)])) == [11, 12, 13, 14]


def test_the_first_event_after_an_assignment_must_be_at_the_committed_offset(
    app: faust.App, consumer: OfflineConsumer,
) -> None:
    assert admit(consumer, [event(app, 25)]) == []
    assert consumer.seeks == [(TP0, 10)]


def test_without_an_answer_on_the_committed_offset_the_first_event_starts_the_partition(
    app: faust.App, consumer: OfflineConsumer,
) -> None:
    consumer.committed_at = None
    assert offsets(admit(consumer, [event(app, 25), event(app, 26)])) == [25, 26]
    assert offsets(admit(consumer, [event(app, 28)])) == [] and consumer.seeks == [(TP0, 27)]


def test_only_confirmed_events_move_the_committed_offset(app: faust.App, consumer: OfflineConsumer) -> None:
    skipped, processed = event(app, 10), event(app, 11)
    refused = rereads("skipped")
    # faust acks an event it skipped (rebalance, recovery): refused, so nothing can be committed past it.
    assert consumer.ack(skipped.message) is False
    assert consumer._acked[TP0] == [] and consumer.refused_acks == 1 and rereads("skipped") == refused + 1
    consumer.confirm([processed])
    assert consumer.ack(processed.message) is True
    assert consumer._acked[TP0] == [11]
    assert consumer._new_offset(TP0) is None, "offset 10 was never processed: no commit may pass it"


def test_read_gaps_are_ignored_on_guarded_topics_only(app: faust.App, consumer: OfflineConsumer) -> None:
    asyncio.run(consumer._add_gap(TP0, 11, 40))
    assert not consumer._gap[TP0] and consumer.ignored_gaps == 1
    changelog = TP(CHANGELOG, 0)
    asyncio.run(consumer._add_gap(changelog, 11, 40))
    assert consumer._gap[changelog], "compacted changelogs keep faust's gap handling"


def test_other_topics_pass_untouched(app: faust.App, consumer: OfflineConsumer) -> None:
    other = [event(app, 500, topic=CHANGELOG)]
    assert admit(consumer, other) == other
