"""What every consuming stage's Kafka consumer shares: its settings and its lag gauge.

Both loops, the processors' transactional runtime and the sink's write-then-commit loop, build their
consumer here, so they join groups, read and report the same way:

- cooperative-sticky assignment: a rebalance moves only the partitions that change owner, and the others
  keep flowing; the revoke callback of the partitions that go runs when no batch of them is in flight;
- ``read_committed``: only what an upstream transaction committed is read, never an aborted batch;
- manual commits only (after the downstream write is durable), end-of-partition events (a drain knows
  when it is done, and a commit can move past trailing transaction markers);
- a dead member gives its partitions up after ``session_timeout_ms`` (15 s), not librdkafka's 45.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from crmflow.connections import KafkaConnection, kafka_config
from crmflow.metrics import CONSUMER_LAG

log = logging.getLogger(__name__)


def consumer_config(kafka: KafkaConnection | str, group_id: str, client_id: str, *, session_timeout_ms: int = 15_000,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The consumer settings of a stage (see the module docs) on ``kafka``; ``extra`` (tuning) wins."""
    return kafka_config(kafka, {
        "group.id": group_id, "client.id": client_id,
        "partition.assignment.strategy": "cooperative-sticky", "isolation.level": "read_committed",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "enable.partition.eof": True, "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(1000, session_timeout_ms // 5),
        "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 4 * 1024 * 1024,
    }, extra)


def unread(consumer: Consumer, partitions: Iterable[tuple[str, int]],
           start: Mapping[tuple[str, int], int] | None = None) -> dict[tuple[str, int], int]:
    """Unread messages per partition: the high watermark as last fetched (no broker round trip) minus the
    consumer's position. Before a partition's first fetch (no position) ``start`` gives it, else its low
    watermark; without ``start`` such a partition is left out, as is one whose watermark is not known yet."""
    tps = [TopicPartition(t, p) for t, p in sorted(partitions)]
    out: dict[tuple[str, int], int] = {}
    if not tps:
        return out
    for tp in consumer.position(tps):
        low, high = consumer.get_watermark_offsets(tp, cached=True)
        position = tp.offset
        if position < 0 and start is not None:
            position = start.get((tp.topic, tp.partition), low)
        if high >= 0 and position >= 0:
            out[(tp.topic, tp.partition)] = max(high - position, 0)
    return out


def update_lag(consumer: Consumer, stage: str, assigned: Iterable[tuple[str, int]]) -> None:
    """``crmflow_consumer_lag_messages`` per assigned partition (:func:`unread`)."""
    try:
        for (topic, partition), lag in unread(consumer, assigned).items():
            CONSUMER_LAG.labels(stage=stage, topic=topic, partition=str(partition)).set(lag)
    except KafkaException as exc:
        log.debug("lag not updated: %s", exc)


def forget_lag(stage: str, topic: str, partition: int) -> None:
    """Stop reporting the lag of a partition this consumer no longer owns."""
    with contextlib.suppress(KeyError):  # no lag was recorded for it yet
        CONSUMER_LAG.remove(stage, topic, str(partition))
