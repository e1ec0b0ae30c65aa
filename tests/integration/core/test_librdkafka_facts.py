"""What the batch runtime takes for granted of librdkafka, pinned on the real broker.

The other topics' turn (``TransactionalRuntime._prioritise``) ends once every partition found behind raised its
end-of-partition event, and finds a partition behind by comparing its position with the broker's end. Both hold
only if librdkafka (a) moves a read_committed position past a transaction's commit marker, which no message
carries, and (b) raises the end-of-partition event again when a partition read to its end is paused and resumed.
An upgrade that changed either would make turns last their whole time bound, or a drain wait for an event that
never comes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from crmflow.stack import Endpoints
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def _consumer(endpoints: Endpoints, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": endpoints.bootstrap_servers, "group.id": group,
                     "isolation.level": "read_committed", "enable.partition.eof": True,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip


def _next_end(consumer: Consumer, seen: list[int]) -> Callable[[], Any]:
    """A predicate for wait_until: consumes, counts data messages in ``seen``, returns the end offset raised."""

    def poll() -> int | None:
        for msg in consumer.consume(100, 0.2):
            err = msg.error()
            if err is None:
                seen.append(msg.offset() or 0)
            elif err.code() == KafkaError._PARTITION_EOF:
                return (msg.offset() or 0) + 1  # +1: a truthy value for offset 0 too
        return None

    return poll


def test_a_read_committed_position_passes_the_transaction_markers(
    endpoints: Endpoints, topic_factory: Callable[..., str], group_factory: Callable[[], str]
) -> None:
    topic = topic_factory("marker")
    producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers, "transactional.id": group_factory()})
    producer.init_transactions()
    for _ in range(3):
        producer.begin_transaction()
        for i in range(5):
            producer.produce(topic, f"v{i}".encode())
        producer.commit_transaction()
    consumer = _consumer(endpoints, group_factory())
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        seen: list[int] = []
        end = wait_until(_next_end(consumer, seen), 30, what="the end of the partition") - 1
        assert len(seen) == 15 and end == 18, (seen, end)  # three commit markers, at 5, 11 and 17
        (position,) = consumer.position([TopicPartition(topic, 0)])
        assert position.offset == 18, "the position stopped at the last commit marker"
    finally:
        consumer.close()


def test_a_partition_read_to_its_end_raises_its_end_again_once_resumed(
    endpoints: Endpoints, topic_factory: Callable[..., str], group_factory: Callable[[], str]
) -> None:
    topic = topic_factory("resume")
    producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers})
    for _ in range(5):
        producer.produce(topic, b"x")
    producer.flush(30)
    consumer = _consumer(endpoints, group_factory())
    try:
        partition = TopicPartition(topic, 0, 0)
        consumer.assign([partition])
        seen: list[int] = []
        assert wait_until(_next_end(consumer, seen), 30, what="the first end") - 1 == 5
        consumer.pause([TopicPartition(topic, 0)])
        assert _next_end(consumer, seen)() is None, "a paused partition raised an event"
        consumer.resume([TopicPartition(topic, 0)])
        assert wait_until(_next_end(consumer, seen), 30, what="the end raised again") - 1 == 5
        assert len(seen) == 5, "no message was read twice"
    finally:
        consumer.close()
