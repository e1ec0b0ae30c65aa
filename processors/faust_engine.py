"""The faust-streaming engine: the same pure stage as the default runtime, run as a faust app.

For teams that already operate faust. It runs :class:`~processors.stage.ProcessStage` (the functions the
transactional runtime runs) in one agent over the raw topics and, with deduplication, the dedupe topics:
per batch (``noack_take``: events are NOT acknowledged when taken) it decodes, calls
``stage.process``, sends the outputs, the state writes (each to its state topic's compacted changelog, the
same ones the default runtime uses) and the dead letters through faust's producer, waits until Kafka
acknowledged every send, and only then acks the events. That is at-least-once, not exactly-once: a crash
between the sends and the commit re-processes the batch (the sink's upsert by external id absorbs it; the
mapped topics may then hold a record twice). faust's own consumer does not hold to that ordering around rebalances;
:mod:`processors.acks` makes it (only confirmed acks count, events come in offset order).

faust is not allowed to take over logging (``override_logging`` off, no ``Worker`` log setup): the CLI's
handlers, ``--log-json``, the level and the PII redaction filter stay in place for the whole run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, cast

import faust
from mode.types.signals import BaseSignalT

from crmflow.dlq import DeadLetterWriter
from crmflow.exceptions import ConfigError
from crmflow.metrics import BATCH_DURATION, BATCH_SIZE, DEDUPE_DECISIONS, LAST_SUCCESS, RECORDS
from crmflow.runtime.changelog import ensure_changelog, read_partitions
from crmflow.runtime.stage import InRecord
from crmflow.serialization import SerializationError
from crmflow.stack import Endpoints
from processors.acks import ConfirmedAckApp, ConfirmedAckConsumer
from processors.config import ProcessorConfig
from processors.service import build_stage, group_id

log = logging.getLogger(__name__)


def build_app(
    cfg: ProcessorConfig,
    endpoints: Endpoints,
    *,
    batch_size: int = 2000,
    batch_within_s: float = 0.25,
    datadir: Path | None = None,
) -> faust.App:
    if endpoints.kafka.security_protocol != "PLAINTEXT":
        raise ConfigError(f"the faust engine speaks PLAINTEXT only, but CRMFLOW_KAFKA_SECURITY_PROTOCOL="
                          f"{endpoints.kafka.security_protocol}; use the default engine (--engine batch)")
    registry = endpoints.registry.client()
    stage = build_stage(cfg, registry)
    topics = list(stage.topics)
    app = ConfirmedAckApp(
        group_id(cfg),
        guarded_topics=dict.fromkeys(topics, stage.name),
        broker=[f"kafka://{server}" for server in endpoints.bootstrap_servers.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        # faust creates "<app id>-data" in the working directory unless told where its data goes.
        **({"datadir": str(datadir)} if datadir is not None else {}),
        web_enabled=False,
        topic_replication_factor=cfg.kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.02,
        producer_max_batch_size=256 * 1024,
        broker_commit_every=batch_size,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4 * batch_size,
        broker_session_timeout=15.0,
        broker_heartbeat_interval=3.0,
    )
    dlq = DeadLetterWriter(None, registry, cfg.kafka.dlq_topic)
    decoders = {t: stage.decoder(t) for t in topics}
    changelogs = dict(stage.changelogs)  # state topic -> its changelog (accounts, contacts)
    restore: set[tuple[str, int]] = set()
    for state_topic, changelog in changelogs.items():
        ensure_changelog(endpoints.kafka.for_stage("process"), changelog, state_topic, cfg.kafka.replication_factor)

    @app.on_partitions_revoked.connect
    def forget(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
        revoked: set[Any] = args[0] if args else kwargs.get("revoked", set())
        parts = {(tp.topic, tp.partition) for tp in revoked if tp.topic in changelogs}
        for topic in sorted({t for t, _ in parts}):
            stage.release(topic, sorted(p for t, p in parts if t == topic))
        restore.difference_update(parts)

    @app.on_partitions_assigned.connect
    def remember(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
        assigned: set[Any] = args[0] if args else kwargs.get("assigned", set())
        restore.update((tp.topic, tp.partition) for tp in assigned if tp.topic in changelogs)

    source = app.topic(*topics, key_type=bytes, value_type=bytes)

    @app.agent(source)
    async def process(stream: faust.StreamT[bytes]) -> None:
        async for manual, events in _batches(stream, batch_size, batch_within_s):
            started = time.perf_counter()
            for topic in sorted({t for t, _ in restore}):
                parts = sorted(p for t, p in restore if t == topic)
                state = await asyncio.to_thread(read_partitions, endpoints.kafka.for_stage("process"),
                                                changelogs[topic], parts)
                for p in parts:
                    stage.restore(topic, p, state[p])
                    restore.discard((topic, p))
            pending: list[Awaitable[Any]] = []
            records: list[InRecord] = []
            for event in events:
                msg = event.message
                raw = event.value or b""
                try:
                    value = decoders[msg.topic].decode(raw, origin=f"{msg.topic}[{msg.partition}]@{msg.offset}")
                except SerializationError as exc:
                    letter, headers = dlq.letter(
                        value=raw, key=msg.key, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                        stage=stage.name, rule="avro_decode", error=str(exc))
                    pending.append(await app.producer.send(dlq.topic, None, letter, None, None, headers))
                    RECORDS.labels(stage=stage.name, entity="unknown", outcome="rejected").inc()
                    continue
                records.append(InRecord(msg.topic, msg.partition, msg.offset, msg.key, value, raw))
            out = stage.process(records)
            by_topic: dict[str, list[int]] = {}
            for i, produced in enumerate(out.records):
                by_topic.setdefault(produced.topic, []).append(i)
            for topic, indexes in by_topic.items():
                encoded = stage.encoder(topic).encode_many(out.records[i].value for i in indexes)
                for i, data in zip(indexes, encoded, strict=True):
                    part = out.records[i].partition
                    pending.append(await app.producer.send(topic, out.records[i].key, data,
                                                           part if part >= 0 else None, None, None))
            for w in out.state:
                pending.append(await app.producer.send(changelogs[w.topic], w.key, w.value, w.partition, None, None))
            for rej in out.rejections:
                rec = records[rej.index]
                letter, headers = dlq.letter(
                    value=rec.raw, key=rec.key, topic=rec.topic, partition=rec.partition, offset=rec.offset,
                    stage=rej.stage, rule=rej.rule, field=rej.field, error=rej.error, entity=rej.entity,
                    run_id=rej.run_id, source_position=rej.source_position)
                pending.append(await app.producer.send(dlq.topic, None, letter, None, None, headers))
            # Durable first, then ack: the offsets faust commits cover only delivered output.
            await asyncio.gather(*pending)
            consumer = cast("ConfirmedAckConsumer", app.consumer)
            consumer.confirm(events)
            for event in events:
                await manual.ack(event)
            for (stage_name, entity, outcome), n in out.counts.items():
                RECORDS.labels(stage=stage_name, entity=entity, outcome=outcome).inc(n)
            for (entity, decision), n in out.decisions.items():
                DEDUPE_DECISIONS.labels(entity=entity, decision=decision).inc(n)
            BATCH_SIZE.labels(stage=stage.name).observe(len(events))
            BATCH_DURATION.labels(stage=stage.name).observe(time.perf_counter() - started)
            LAST_SUCCESS.labels(stage=stage.name).set_to_current_time()

    return app


async def _batches(
    stream: faust.StreamT[bytes], size: int, within: float
) -> AsyncIterator[tuple[faust.Stream[bytes], list[faust.EventT[bytes]]]]:
    """Batches of at most ``size`` events (or what ``within`` seconds gave), NOT acknowledged when taken:
    the caller acks them on the returned stream once their output is durable."""
    manual = cast("faust.Stream[bytes]", cast("faust.Stream[bytes]", stream).noack())
    consumer = cast("ConfirmedAckConsumer", cast("faust.App", stream.app).consumer)
    async for taken in manual.noack_take(size, within=within):
        # noack_take yields the events themselves (typed as values upstream), so they can be acked.
        events = await consumer.admit(cast("list[faust.EventT[bytes]]", taken))
        if events:
            yield manual, events


def run_worker(app: faust.App) -> None:
    """Run the app until SIGTERM/SIGINT (faust's Worker installs the signal handlers); logging stays the
    CLI's (``override_logging=False``)."""
    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
