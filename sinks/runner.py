"""The sink service: mapped topics → target CRM, on the core batch runtime (:mod:`crmflow.runtime`).

Per batch (``consume(num_messages, timeout)``): decode every value against the contract's reader schema of
the topic's entity, write the batch into the target in one database transaction (:class:`~sinks.stage.SinkStage`
over the target's :class:`~sinks.base.Sink`), then, in one Kafka transaction, the target's refusals as dead
letters and the batch's input offsets. The offsets therefore never pass a record the target does not hold;
a crash anywhere before the Kafka commit re-delivers the batch, which the target absorbs (idempotent upserts),
so the effect is exactly once.

- Poison messages (not decodable) are dead-lettered (rule ``avro_decode``) in the same transaction; they
  never stop or stall a partition. Tombstones are passed over (deletes are not part of the contract).
- The target or the registry away: the driver retries the write with backoff; past its attempts the batch
  is rewound and tried again later (``crmflow_retries_total``), so a service outlives any outage. Only a
  drain (a bounded pass) gives up, with :class:`~sinks.exceptions.RetriesExhaustedError`.
- Rebalance (cooperative-sticky): nothing is in flight between batches, so a revoke has nothing to finish.
- ``drain=True``: stop once every assigned partition reached its end, parked children that can still find
  their parent are written and the rest are dead-lettered as orphans; the end offsets are committed.
  ``crmflow migrate`` uses it for its final pass.
- A stop (``stop_event``, SIGTERM/SIGINT in the CLI) finishes the batch in hand, commits it and returns.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError

from crmflow.connections import as_kafka, as_registry
from crmflow.dlq import DeadLetterWriter
from crmflow.exceptions import ConfigError
from crmflow.runtime import RuntimeOptions, TransactionalRuntime
from crmflow.runtime.consumer import consumer_config
from crmflow.serialization import AvroDecoder, load_schema
from sinks import telemetry
from sinks.base import Sink
from sinks.exceptions import FlushAbortedError
from sinks.params import ENTITIES, SinkParams, SinkStats
from sinks.stage import SinkStage

__all__ = ["ENTITIES", "SinkParams", "SinkStats", "run_sink"]

logger = logging.getLogger(__name__)

_LOG = {"stage": telemetry.STAGE}


def run_sink(
    params: SinkParams,
    *,
    stop_event: threading.Event | None = None,
    drain: bool = False,
    sink: Sink | None = None,
    start_when: Path | None = None,
) -> SinkStats:
    """Run the sink until ``stop_event`` is set or, with ``drain``, until everything is written.

    ``sink`` defaults to a :class:`~sinks.postgres.sink.PostgresSink` on ``params.target_dsn`` (which
    applies the schema migrations when it starts). A drain raises when the target stays unavailable beyond
    the retry policy; nothing uncommitted is then lost, only re-read.

    ``start_when``: connect to the target and the registry first, then wait until that file exists before
    joining the group (``crmflow migrate`` starts its final drain pass so while the sinks before it finish).
    """
    if sink is None:
        from sinks.postgres.sink import PostgresSink

        sink = PostgresSink(params.target_dsn, schema=params.target_schema, system=params.system,
                            orphan_timeout_s=params.orphan_timeout_s,
                            deletes="soft" if params.deletes == "soft" else "hard")
    stop = stop_event or threading.Event()
    registry = as_registry(params.registry).client()
    stats = SinkStats()
    topics = dict(params.topics)
    if drain:
        topics = {t: e for t, e in topics.items() if t in _existing(params, list(topics))}
    decoders = {topic: AvroDecoder(registry, load_schema(f"target/{entity}")) for topic, entity in topics.items()}
    stage = SinkStage(sink, topics, decoders, retry=params.retry, wait=stop.wait, stats=stats, give_up=drain)
    instance = params.instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    opts = RuntimeOptions(
        kafka=as_kafka(params.kafka).for_stage("sink"), group_id=params.group_id,
        transactional_id=f"{params.group_id}-{instance}", dlq_topic=params.dlq_topic,
        batch_size=params.batch_size, batch_timeout_s=min(params.max_batch_age_s, params.poll_timeout_s),
        linger_s=params.linger_s,
        session_timeout_ms=10_000, maintenance_interval_s=params.maintenance_interval_s,
        # Range, not the runtime's cooperative-sticky: a sink that joins another for a backlog gets half of every
        # topic's partitions. Cooperative-sticky moves the first partitions in topic-name order (here all the
        # accounts, written already, and all the cases), which left the newcomer a fraction of the work and
        # the machine half idle. A sink keeps no state, so the eager rebalance costs it only the batch in hand,
        # which it finishes and commits on revoke as before.
        client_config={"partition.assignment.strategy": "range", **dict(params.consumer_config)},
    )
    runtime = TransactionalRuntime(stage, opts, DeadLetterWriter(None, registry, params.dlq_topic), stop)
    logger.info("sink reading %s as group %s%s", ", ".join(topics) or "nothing", params.group_id,
                " until drained" if drain else "", extra=_LOG)
    ran = False  # the runtime closes the stage when it ran
    try:
        if start_when is not None and not _ready(stage, start_when, stop):
            return stats  # stopped while waiting: nothing was read
        if not topics:  # nothing to read: drained at once (the target is still set up)
            stage.setup()
            stage.finish()
            return stats
        ran = True
        if runtime.run(drain=drain):
            stage.finish()
            _log_drain(stats)
    except FlushAbortedError:
        logger.info("stopped while the target was unavailable; the batch in hand stays uncommitted", extra=_LOG)
    finally:
        if not ran:
            stage.close()
    stats.poison = runtime.undecodable
    stats.committed = {f"{t}[{p}]": o for (t, p), o in runtime.committed().items()}
    return stats


def _ready(stage: SinkStage, start_when: Path, stop: threading.Event) -> bool:
    """Set the stage up, then wait for ``start_when`` to exist; False if stopped first."""
    stage.setup()
    logger.info("sink ready; waiting for %s before reading", start_when, extra=_LOG)
    while not start_when.exists():
        if stop.wait(0.05):
            return False
    return True


def _existing(params: SinkParams, topics: list[str]) -> list[str]:
    """The topics that exist: a drain has nothing to wait for in one nobody created. A topic the sink's
    principal may not read is a :class:`ConfigError` naming the setting (a broker lists only the topics a
    principal may describe, so "missing" is asked again by name), never an empty drain."""
    kafka = as_kafka(params.kafka).for_stage("sink")
    consumer = Consumer(consumer_config(kafka, params.group_id, "crmflow-sink-metadata", extra=params.consumer_config))
    try:
        metadata = consumer.list_topics(timeout=30).topics
        found = [t for t in topics if t in metadata and metadata[t].error is None]
        for t in sorted(set(topics) - set(found)):
            err = consumer.list_topics(t, timeout=30).topics[t].error
            if err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise kafka.explain(err) or ConfigError(f"Kafka denied the sink's principal reading {t}")
            logger.warning("topic %s does not exist; nothing to drain from it", t, extra={**_LOG, "topic": t})
    finally:
        consumer.close()
    return found


def _log_drain(s: SinkStats) -> None:
    # What THIS pass did (a sink started to drain what a live sink left over reports only its own work);
    # the run's totals are in the target's audit (`crmflow migrate` prints them).
    logger.info("final drain pass (this sink process only): %d consumed, %d written, %d unchanged, %d rejected, "
                "%d poison; parked children: %d resolved, %d orphans dead-lettered, %d held records dead-lettered",
                s.consumed, s.written, s.unchanged, s.rejected, s.poison, s.resolved, s.orphaned,
                s.held_dead_lettered, extra=_LOG)


