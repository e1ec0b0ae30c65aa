"""A stage's changelog topic: compacted, co-partitioned with its state topic, read back on assignment.

The runtime writes state entries into the changelog inside the same transaction as the stage's outputs and
input offsets, and reads it with ``read_committed``: a restored state is exactly the state that produced
the committed outputs, never the half of an aborted batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from crmflow.connections import KafkaConnection, kafka_config
from crmflow.exceptions import TransientError

log = logging.getLogger(__name__)


class ChangelogError(TransientError):
    """The changelog could not be read or created (Kafka away); retried by the caller."""


def ensure_topics(kafka: KafkaConnection | str, topics: Mapping[str, int], replication_factor: int = -1,
                  extra: dict[str, Any] | None = None, timeout_s: float = 30.0) -> None:
    """Create the missing ones of ``topics`` (name → partitions); an existing topic is left as it is."""
    if not topics:
        return
    admin = AdminClient(kafka_config(kafka, extra))
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [NewTopic(t, num_partitions=n, replication_factor=replication_factor) for t, n in topics.items()
               if t not in existing]
    if not missing:
        return
    for name, fut in admin.create_topics(missing).items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
        else:
            log.info("created topic %s with %d partitions", name, topics[name], extra={"topic": name})


def ensure_changelog(kafka: KafkaConnection | str, topic: str, partitions_of: str, replication_factor: int = -1,
                     extra: dict[str, Any] | None = None, timeout_s: float = 30.0) -> None:
    """Create ``topic`` (compacted) with as many partitions as ``partitions_of`` has, if it is missing."""
    admin = AdminClient(kafka_config(kafka, extra))
    md = admin.list_topics(timeout=timeout_s)
    if topic in md.topics and md.topics[topic].error is None:
        return
    source = md.topics.get(partitions_of)
    if source is None or source.error is not None:
        raise ChangelogError(f"cannot size changelog {topic}: topic {partitions_of} does not exist")
    new = NewTopic(topic, num_partitions=len(source.partitions), replication_factor=replication_factor,
                   config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"})
    try:
        admin.create_topics([new])[topic].result(timeout=timeout_s)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise
    log.info("created changelog topic %s (%d partitions, compacted)", topic, len(source.partitions))


def read_partitions(kafka: KafkaConnection | str, topic: str, partitions: Iterable[int], *,
                    extra: dict[str, Any] | None = None, timeout_s: float = 60.0) -> dict[int, dict[bytes, bytes]]:
    """The committed content of each partition: key → latest value, tombstoned keys left out.

    Reads from the beginning to the partition's end (the last stable offset: an open transaction's
    entries are not part of the state yet, and an aborted one's never will be)."""
    wanted = sorted(set(partitions))
    out: dict[int, dict[bytes, bytes]] = {p: {} for p in wanted}
    if not wanted:
        return out
    consumer = Consumer(kafka_config(kafka, {
        "group.id": f"crmflow-restore-{topic}",
        "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": "read_committed",
        "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024}, extra))
    started = time.monotonic()
    try:
        # An empty partition has nothing to read: skip it rather than wait for its end-of-partition event.
        pending = set()
        for wanted_p in wanted:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, wanted_p), timeout=timeout_s)
            if high > low:
                pending.add(wanted_p)
        if pending:
            consumer.assign([TopicPartition(topic, p, -2) for p in sorted(pending)])  # -2: OFFSET_BEGINNING
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise ChangelogError(f"changelog {topic} partitions {sorted(pending)} not read in {timeout_s:.0f}s")
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                p = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(p or 0)
                    elif err.fatal():
                        raise ChangelogError(f"reading changelog {topic}: {err.str()}")
                    continue
                deadline = time.monotonic() + timeout_s
                key, value = msg.key(), msg.value()
                if key is None or p is None:
                    continue
                if value is None:
                    out[p].pop(key, None)
                else:
                    out[p][key] = value
    except KafkaException as exc:
        raise ChangelogError(f"reading changelog {topic}: {exc}") from exc
    finally:
        consumer.close()
    log.info("restored %d state entries of %s partitions %s in %.2fs", sum(len(v) for v in out.values()), topic,
             wanted, time.monotonic() - started)
    return out
