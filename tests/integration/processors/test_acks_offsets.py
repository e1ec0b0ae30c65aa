"""Where the consumer guard resumes a partition, read from the real broker: the group's committed offset,
or the partition's earliest when the group committed nothing there (processors/acks.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from faust.types import TP

from crmflow.stack import Endpoints
from processors.acks import _group_start_offsets

pytestmark = pytest.mark.integration


def test_start_offsets_are_the_groups_committed_ones_or_the_earliest(
    endpoints: Endpoints, admin: AdminClient, topic_factory: Callable[..., str], group_factory: Callable[[], str],
) -> None:
    topic, group = topic_factory("acks", partitions=2), group_factory()
    producer = Producer(endpoints.kafka.client_config())
    for i in range(10):
        producer.produce(topic, value=b"x", partition=i % 2)
    assert producer.flush(30) == 0
    consumer = Consumer({**endpoints.kafka.client_config(), "group.id": group,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    finally:
        consumer.close()

    found = _group_start_offsets(admin, group, [TP(topic, 0), TP(topic, 1)])
    assert found == {(topic, 0): 3, (topic, 1): 0}
