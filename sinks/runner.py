"""The sink's Kafka loop: mapped topics → :class:`~sinks.base.BatchingSink` → target, offsets committed
only after the target committed.

Per poll: ``consume(num_messages, timeout)``, decode every value (Avro, against the contract's reader
schema of the topic's entity), buffer it; when a flush is due, write the batch, dead-letter what the target
refused, wait for the dead-letter topic to acknowledge, and only then ``commit(offsets, asynchronous=
False)``. A crash anywhere before that commit re-delivers the batch, which the target absorbs (idempotent
upserts), so the effect is exactly once.

- Poison messages (not decodable) are dead-lettered (rule ``avro_decode``) and their offsets count as done;
  they never stop or stall a partition. Tombstones are skipped (deletes are not part of the contract).
- Rebalance: on revoke, the revoked partitions' buffers are flushed (one attempt) and committed, so the
  next owner starts after them; if that flush fails they are dropped uncommitted and the next owner
  re-reads them — at-least-once either way. Lost partitions are dropped without a commit.
- ``drain=True``: stop once every assigned partition reached its end (partition-EOF events), the buffers
  are flushed, parked children that can still find their parent are written and the rest are
  dead-lettered as orphans; then commit the end offsets and return. ``crmflow migrate`` uses it.
- A stop (``stop_event``, SIGTERM/SIGINT in the CLI) flushes, commits and returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.dlq import DeadLetterWriter
from crmflow.exceptions import TransientError
from crmflow.kafkalog import client_logging
from crmflow.runtime.consumer import consumer_config
from crmflow.serialization import AvroDecoder, SerializationError, load_schema
from sinks import telemetry
from sinks.base import BatchingSink, Sink, SinkRecord, TopicPartitionKey
from sinks.exceptions import FlushAbortedError, SinkError, SinkTerminalError
from sinks.params import ENTITIES, SinkParams, SinkStats

__all__ = ["ENTITIES", "SinkParams", "SinkRunner", "SinkStats", "run_sink"]

logger = logging.getLogger(__name__)

STAGE = telemetry.STAGE
_LOG = {"stage": STAGE}


def run_sink(
    params: SinkParams,
    *,
    stop_event: threading.Event | None = None,
    drain: bool = False,
    sink: Sink | None = None,
) -> SinkStats:
    """Run the sink until ``stop_event`` is set or, with ``drain``, until everything is written.

    ``sink`` defaults to a :class:`~sinks.postgres.sink.PostgresSink` on ``params.target_dsn`` (which
    applies the schema migrations when it starts). Raises when the target stays unavailable beyond the
    retry policy or the consumer hits a fatal error; nothing uncommitted is then lost, only re-read.
    """
    if sink is None:
        from sinks.postgres.sink import PostgresSink

        sink = PostgresSink(params.target_dsn, schema=params.target_schema, system=params.system,
                            orphan_timeout_s=params.orphan_timeout_s)
    return SinkRunner(params, sink, stop_event=stop_event).run(drain=drain)


class SinkRunner:
    """One consumer, one batching sink, one dead-letter writer; used by one thread."""

    def __init__(self, params: SinkParams, sink: Sink, *, stop_event: threading.Event | None = None) -> None:
        self.params = params
        self.stop = stop_event or threading.Event()
        self.stats = SinkStats()
        self.batching = BatchingSink(
            sink, batch_size=params.batch_size, max_batch_age_s=params.max_batch_age_s, retry=params.retry,
            wait=self.stop.wait,
        )
        self._registry = SchemaRegistryClient({"url": params.registry_url})
        self._decoders = {
            topic: AvroDecoder(self._registry, load_schema(f"target/{entity}"))
            for topic, entity in params.topics.items()
        }
        self._assigned: set[TopicPartitionKey] = set()
        self._assigned_once = False
        self._eof: dict[TopicPartitionKey, int] = {}  # partitions read to their end: end offset
        self._dlq_unflushed = 0
        self._failed = False
        self._next_maintenance = 0.0
        self._consumer: Consumer | None = None
        self._dlq: DeadLetterWriter | None = None

    # ------------------------------------------------------------------------------------------ loop

    def run(self, *, drain: bool = False) -> SinkStats:
        p = self.params
        consumer = self._consumer = Consumer(consumer_config(
            p.bootstrap_servers, p.group_id, "crmflow-sink", session_timeout_ms=10_000, extra=p.consumer_config))
        producer = Producer({"bootstrap.servers": p.bootstrap_servers, "client.id": "crmflow-sink-dlq",
                             "enable.idempotence": True, "linger.ms": 20, **client_logging()})
        try:
            self.batching.open()  # connects and migrates the target, retrying while it starts
            self._dlq = DeadLetterWriter(producer, self._registry, p.dlq_topic)
            topics = self._existing(consumer, list(p.topics)) if drain else list(p.topics)
            if topics:
                consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                   on_lost=self._on_lost)
            else:
                self._assigned_once = True  # nothing to read: drained at once
            logger.info("sink reading %s as group %s%s", ", ".join(topics) or "nothing", p.group_id,
                        " until drained" if drain else "", extra=_LOG)
            drained = False
            while not self.stop.is_set():
                messages = consumer.consume(p.consume_batch, p.poll_timeout_s)
                if not self._handle(messages):
                    break
                if self.batching.due():
                    self._flush_commit()
                self._maintain()
                if drain and not messages and self._drained():
                    self._finish_drain()
                    drained = True
                    break
            if not drained:
                self._flush_commit()  # graceful stop: what is buffered is written and committed
        except FlushAbortedError:
            logger.info("stopped while the target was unavailable; buffered records stay uncommitted", extra=_LOG)
        except BaseException:
            self._failed = True
            raise
        finally:
            try:
                consumer.close()  # runs on_revoke, which has nothing left to flush after a clean stop
            except (KafkaException, RuntimeError, SinkError) as exc:
                logger.warning("closing the consumer failed: %s", exc, extra=_LOG)
            finally:
                producer.flush(p.dlq_flush_timeout_s)
                self.batching.close()
        return self.stats

    @staticmethod
    def _existing(consumer: Consumer, topics: list[str]) -> list[str]:
        """The topics that exist: a drain has nothing to wait for in one nobody created."""
        metadata = consumer.list_topics(timeout=30).topics
        found = [t for t in topics if t in metadata and metadata[t].error is None]
        for t in sorted(set(topics) - set(found)):
            logger.warning("topic %s does not exist; nothing to drain from it", t, extra={**_LOG, "topic": t})
        return found

    def _handle(self, messages: list[Message]) -> bool:
        """Decode and buffer a polled batch; False when a stop came while waiting for the registry."""
        counts: Counter[str] = Counter()
        try:
            return self._handle_each(messages, counts)
        finally:
            telemetry.records_in(counts)

    def _handle_each(self, messages: list[Message], counts: Counter[str]) -> bool:
        for msg in messages:
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof[(topic, partition)] = offset
                elif err.fatal():
                    raise SinkTerminalError(f"fatal consumer error: {err.str()}")
                else:
                    logger.warning("consumer error: %s", err.str(), extra={**_LOG, "topic": topic})
                continue
            self._eof.pop((topic, partition), None)
            entity = self.params.topics[topic]
            self.stats.consumed += 1
            counts[entity] += 1
            value = msg.value()
            if value is None:
                logger.warning("skipping a tombstone at %s[%d]@%d: deletes are not part of the contract",
                               topic, partition, offset, extra={**_LOG, "entity": entity})
                self.batching.skip(topic, partition, offset)
                continue
            try:
                decoded = self._decode(topic, value, f"{topic}[{partition}]@{offset}")
            except SerializationError as exc:
                self._dead_letter(topic, partition, offset, msg.key(), value, entity=entity, rule="avro_decode",
                                  field=None, error=str(exc))
                self.stats.poison += 1
                telemetry.record_rejected(entity)
                self.batching.skip(topic, partition, offset)
                continue
            except FlushAbortedError:
                return False
            self.batching.add(SinkRecord(entity, decoded, topic, partition, offset, msg.key(), value))
        return True

    def _decode(self, topic: str, value: bytes, origin: str) -> dict[str, Any]:
        """Decode one value; a registry outage is retried (with the flush policy), not dead-lettered."""
        attempt = 1
        while True:
            try:
                return self._decoders[topic].decode(value, origin=origin)
            except TransientError as exc:
                if attempt >= self.params.retry.attempts:
                    raise SinkTerminalError(f"cannot decode {origin}: {exc}") from exc
                delay = self.params.retry.delay(attempt)
                logger.warning("registry unavailable decoding %s; retrying in %.1fs", origin, delay, extra=_LOG)
                if self.stop.wait(delay):
                    raise FlushAbortedError("stop requested while waiting for the registry") from exc
                attempt += 1

    # -------------------------------------------------------------------------------- flush/commit

    def _flush_commit(self, partitions: list[TopicPartitionKey] | None = None, *, retry: bool = True) -> None:
        """Write the buffers, dead-letter the rejects, wait for the DLQ, then commit. In that order."""
        outcome = self.batching.flush(partitions, retry=retry)
        rejected = outcome.rejected()
        for record, reject in rejected:
            self._dead_letter(record.topic, record.partition, record.offset, record.key, record.raw_value or b"",
                              entity=record.entity, rule=reject.rule, field=reject.field, error=reject.error,
                              run_id=_str(record.value.get("run_id")),
                              source_position=_str(record.value.get("source_position")))
        self._flush_dlq()
        self._commit({tp: off for tp, off in outcome.offsets.items() if tp in self._assigned})
        if outcome.batch:
            self.stats.batches += 1
            self.stats.written += outcome.result.written
            self.stats.unchanged += outcome.result.unchanged
            self.stats.rejected += len(rejected)
            self.stats.parked += len(outcome.result.parked)
        telemetry.flushed(outcome)

    def _dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes, *,
                     entity: str, rule: str, field: str | None, error: str, run_id: str | None = None,
                     source_position: str | None = None) -> None:
        assert self._dlq is not None
        msg = Message(topic=topic, partition=partition, offset=offset, key=key, value=value)
        self._dlq.send(msg, stage=STAGE, rule=rule, field=field, error=error, entity=entity, run_id=run_id,
                       source_position=source_position)
        self._dlq_unflushed += 1

    def _flush_dlq(self) -> None:
        if self._dlq_unflushed and self._dlq is not None:
            self._dlq.flush(self.params.dlq_flush_timeout_s)
            self._dlq_unflushed = 0

    def _commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        if not offsets or self._consumer is None:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                  asynchronous=False)
        except KafkaException as exc:
            # The records are in the target already; whoever reads the partition next re-applies them,
            # which changes nothing.
            logger.warning("offset commit failed (%s); the records will be re-delivered", exc, extra=_LOG)
            return
        for (t, p), o in offsets.items():
            self.stats.committed[f"{t}[{p}]"] = o

    def _release_held(self, *, final: bool) -> None:
        """Dead-letter what the target gave up on (orphans...), wait for the DLQ, then let it forget them."""
        while held := self.batching.dead_letters(final=final):
            for h in held:
                self._dead_letter(h.topic, h.partition, h.offset, h.key, h.raw_value, entity=h.entity, rule=h.rule,
                                  field=h.field, error=h.error, run_id=h.run_id, source_position=h.source_position)
                telemetry.record_rejected(h.entity)
                self.stats.orphaned += int(h.rule == "orphan")
            self._flush_dlq()
            self.batching.ack_dead_letters(held)
            self.stats.held_dead_lettered += len(held)
            final = False  # the first pass marked everything; later passes page through the rest

    # ----------------------------------------------------------------------------- maintenance/drain

    def _maintain(self, *, force: bool = False) -> None:
        """Every ``maintenance_interval_s``: lag, expired parked records to the DLQ, the parked gauge."""
        now = time.monotonic()
        if not force and now < self._next_maintenance:
            return
        self._next_maintenance = now + self.params.maintenance_interval_s
        if self._consumer is not None:
            telemetry.update_lag(self._consumer, self._assigned)
        self._release_held(final=False)
        try:
            telemetry.parked(self.batching.sink.held())
        except SinkError as exc:
            logger.warning("could not count parked records: %s", exc, extra=_LOG)

    def _drained(self) -> bool:
        return self._assigned_once and all(tp in self._eof for tp in self._assigned)

    def _finish_drain(self) -> None:
        self._flush_commit()
        self._release_held(final=True)
        # Commit the end offsets as well (past transaction markers and trailing poison messages), so the
        # group's committed offsets equal the high watermarks.
        done = self.stats.committed
        self._commit({tp: off for tp, off in self._eof.items()
                      if tp in self._assigned and off > done.get(f"{tp[0]}[{tp[1]}]", -1)})
        self._maintain(force=True)
        s = self.stats
        s.resolved = self.batching.sink.resolved()
        # What THIS pass did (a sink started to drain what a live sink left over reports only its own
        # work); the run's totals are in the target's audit (`crmflow migrate` prints them).
        logger.info("final drain pass (this sink process only): %d consumed, %d written, %d unchanged, "
                    "%d rejected, %d poison; parked children: %d resolved, %d orphans dead-lettered, "
                    "%d held records dead-lettered", s.consumed, s.written, s.unchanged, s.rejected, s.poison,
                    s.resolved, s.orphaned, s.held_dead_lettered, extra=_LOG)

    # ---------------------------------------------------------------------------------- rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
            self._eof.pop((tp.topic, tp.partition), None)
        self._assigned_once = True
        logger.info("assigned %d partitions", len(partitions), extra=_LOG)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Flush and commit what is buffered for the revoked partitions (one attempt), else drop it."""
        tps = [(tp.topic, tp.partition) for tp in partitions]
        if self._failed:
            self.batching.drop(tps)
        else:
            try:
                self._flush_commit(tps, retry=False)
            except (SinkError, TransientError, KafkaException) as exc:
                dropped = self.batching.drop(tps)
                logger.warning("could not flush revoked partitions (%s); their next owner re-reads %d records",
                               exc, dropped, extra=_LOG)
        self._forget(tps)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        dropped = self.batching.drop(tps)
        logger.warning("lost %d partitions; dropped %d uncommitted records", len(tps), dropped, extra=_LOG)
        self._forget(tps)

    def _forget(self, tps: list[TopicPartitionKey]) -> None:
        for tp in tps:
            self._assigned.discard(tp)
            self._eof.pop(tp, None)
            telemetry.forget_partition(tp)


def _str(value: object) -> str | None:
    return None if value is None else str(value)
