"""The faust-streaming app that cleanses and maps raw legacy records into target entities.

One agent reads every raw topic of the config. Per batch (``noack_take``: events are NOT acknowledged
when taken) it decodes the Avro envelopes, maps them with the compiled mappers, sends mapped records and
dead letters through faust's producer, waits until Kafka acknowledged every send, and only then acks the
events — so the offsets faust commits never run ahead of durable output (at-least-once; the sink's
upsert by external id makes a replay harmless). A message that cannot be decoded or mapped is
dead-lettered with its reason; the partition keeps moving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, cast

import faust
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import MigrationConfig
from crmflow.dlq import DeadLetterWriter
from crmflow.metrics import BATCH_DURATION, BATCH_SIZE, CONSUMER_LAG, LAST_SUCCESS, RECORDS
from crmflow.serialization import AvroCodec, AvroDecoder, SerializationError, load_schema, topic_subject
from crmflow.stack import Endpoints
from crmflow.topics import dlq_topic, mapped_topic, raw_topic
from processors.batch import MapFn, map_batch
from processors.mapping import build_mappers
from processors.masking import Masker

log = logging.getLogger(__name__)
STAGE = "process"


def build_app(
    cfg: MigrationConfig,
    endpoints: Endpoints,
    *,
    batch_size: int = 2000,
    batch_within_s: float = 0.25,
) -> faust.App:
    prefix = cfg.kafka.topic_prefix
    app = faust.App(
        f"crmflow-process-{prefix}",
        broker=[f"kafka://{server}" for server in endpoints.bootstrap_servers.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_replication_factor=cfg.kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.02,
        producer_max_batch_size=256 * 1024,
        broker_commit_every=batch_size,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4 * batch_size,
    )
    registry = SchemaRegistryClient({"url": endpoints.registry_url})
    decoder = AvroDecoder(registry, load_schema("legacy/legacy_record"))
    mappers: Mapping[str, MapFn] = build_mappers(cfg)
    # Masking runs last, on clean values (dedupe and validation need the real ones). In production it is
    # inactive: the target gets real values and nothing else carries them.
    masker = Masker.from_config(cfg)
    source_entities = {name: src.entity for name, src in cfg.sources.items()}
    codecs = {
        entity: AvroCodec(registry, topic_subject(mapped_topic(prefix, entity)), load_schema(f"target/{entity}"))
        for entity in mappers
    }
    dlq_name = dlq_topic(prefix)
    dlq = DeadLetterWriter(None, registry, dlq_name)
    raw_topics = [raw_topic(prefix, name) for name in cfg.sources]
    source = app.topic(*raw_topics, key_type=bytes, value_type=bytes)

    @app.agent(source)
    async def cleanse_and_map(stream: faust.StreamT[bytes]) -> None:
        manual = cast("faust.Stream[bytes]", cast("faust.Stream[bytes]", stream).noack())
        async for taken in manual.noack_take(batch_size, within=batch_within_s):
            # noack_take yields the events themselves (typed as values upstream), so they can be acked.
            events = cast("list[faust.EventT[bytes]]", taken)
            started = time.perf_counter()
            pending: list[Awaitable[Any]] = []
            decoded: list[tuple[int, dict[str, Any]]] = []
            for i, event in enumerate(events):
                msg = event.message
                where = f"{msg.topic}[{msg.partition}]@{msg.offset}"
                try:
                    decoded.append((i, decoder.decode(event.value, origin=where)))
                except SerializationError as exc:
                    value, headers = dlq.letter(
                        value=event.value or b"", key=msg.key, topic=msg.topic, partition=msg.partition,
                        offset=msg.offset, stage=STAGE, rule="avro_decode", error=str(exc), run_id=None)
                    pending.append(await app.producer.send(dlq_name, None, value, None, None, headers))
                    RECORDS.labels(stage=STAGE, entity="unknown", outcome="in").inc()
                    RECORDS.labels(stage=STAGE, entity="unknown", outcome="rejected").inc()
            outcome = map_batch(decoded, mappers, source_entities)
            for entity, rows in outcome.mapped.items():
                topic = mapped_topic(prefix, entity)
                records = [row for _, _, row in rows]
                if masker.active:
                    records = [masker.mask(entity, r) for r in records]
                values = codecs[entity].encode_many(records)
                for (_, key, _), value in zip(rows, values, strict=True):
                    pending.append(await app.producer.send(topic, key, value, None, None, None))
                RECORDS.labels(stage=STAGE, entity=entity, outcome="out").inc(len(rows))
            for rej in outcome.rejected:
                msg = events[rej.index].message
                value, headers = dlq.letter(
                    value=events[rej.index].value or b"", key=msg.key, topic=msg.topic,
                    partition=msg.partition, offset=msg.offset, stage=rej.stage, rule=rej.rule,
                    field=rej.field, error=rej.error, entity=rej.entity, run_id=rej.run_id,
                    source_position=rej.position)
                pending.append(await app.producer.send(dlq_name, None, value, None, None, headers))
                RECORDS.labels(stage=STAGE, entity=rej.entity or "unknown", outcome="rejected").inc()
            # Durable first, then ack: the offsets faust commits cover only delivered output.
            await asyncio.gather(*pending)
            for event in events:
                await manual.ack(event)
            _count_in(decoded, source_entities)
            _record_lag(app, events)
            BATCH_SIZE.labels(stage=STAGE).observe(len(events))
            BATCH_DURATION.labels(stage=STAGE).observe(time.perf_counter() - started)
            LAST_SUCCESS.labels(stage=STAGE).set_to_current_time()

    return app


def _count_in(decoded: list[tuple[int, dict[str, Any]]], source_entities: Mapping[str, str]) -> None:
    counts: dict[str, int] = {}
    for _, rec in decoded:
        entity = source_entities.get(rec["source"], "unknown")
        counts[entity] = counts.get(entity, 0) + 1
    for entity, n in counts.items():
        RECORDS.labels(stage=STAGE, entity=entity, outcome="in").inc(n)


def _record_lag(app: faust.App, events: list[faust.EventT[bytes]]) -> None:
    """Lag per partition after this batch: the partition's high watermark minus the next offset to read."""
    last: dict[Any, int] = {}
    for event in events:
        last[event.message.tp] = event.message.offset
    for tp, offset in last.items():
        high = app.consumer.highwater(tp)
        if high is not None:
            CONSUMER_LAG.labels(stage=STAGE, topic=tp.topic, partition=str(tp.partition)).set(
                max(high - offset - 1, 0))


def run_worker(app: faust.App, *, loglevel: str = "warning") -> None:
    """Run the app until SIGTERM/SIGINT (faust's Worker installs the signal handlers)."""
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
