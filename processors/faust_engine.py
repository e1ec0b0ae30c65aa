"""The faust-streaming app that cleanses and maps raw legacy records into target entities.

One agent reads every raw topic of the config. Per batch (``noack_take``: events are NOT acknowledged
when taken) it decodes the Avro envelopes, maps them with the compiled mappers, sends mapped records and
dead letters through faust's producer, waits until Kafka acknowledged every send, and only then acks the
events — so the offsets faust commits never run ahead of durable output (at-least-once; the sink's
upsert by external id makes a replay harmless). faust's own consumer does not hold to that around
rebalances; :mod:`processors.acks` makes it (only confirmed acks count, events come in offset order).
A message that cannot be decoded or mapped is dead-lettered with its reason; the partition keeps moving.

With ``dedupe`` on, clean accounts are not masked and sent on by this agent: they go to the internal
topic ``<prefix>.dedupe.account`` keyed by :func:`~processors.dedupe.blocking.shard_key`, whose
partitions a second agent resolves into golden records (:mod:`processors.dedupe`). Its state is one
faust Table backed by a compacted changelog topic, co-partitioned with that topic (it persists the
records' features and the golden values; blocks and clusters are derived in memory): a restarted or
rebalanced worker recovers the state of its partitions before it resumes, and because the changelog is
flushed before offsets are committed, a replayed record meets a state that already has it (an update,
which changes nothing). The golden-record updates go to the mapped account topic under the same shard
key, so the sink sees the updates of one cluster in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, cast

import faust
import faust.serializers.codecs
import faust.streams
import orjson
from confluent_kafka.schema_registry import SchemaRegistryClient
from mode.types.signals import BaseSignalT

from crmflow.config import MigrationConfig
from crmflow.dlq import DeadLetterWriter
from crmflow.metrics import BATCH_DURATION, BATCH_SIZE, CONSUMER_LAG, DEDUPE_DECISIONS, LAST_SUCCESS, RECORDS
from crmflow.serialization import AvroCodec, AvroDecoder, SerializationError, load_schema, topic_subject
from crmflow.stack import Endpoints
from crmflow.topics import dedupe_topic, dlq_topic, mapped_topic, raw_topic
from processors.acks import ConfirmedAckApp, ConfirmedAckConsumer
from processors.batch import MapFn, map_batch
from processors.dedupe import DedupeError, Deduper, DedupeResult, shard_key
from processors.dedupe.state import WriteBehind
from processors.dedupe.stream import golden_account
from processors.mapping import build_mappers
from processors.masking import Masker

log = logging.getLogger(__name__)
STAGE = "process"
DEDUPE_STAGE = "dedupe"
# faust's task-local "event being processed" (faust.streams.current_event reads it): a table sends each
# write to the changelog partition of that event, so a batch spanning partitions sets it per partition.
_CURRENT_EVENT = faust.streams._current_event


class _OrJson(faust.Codec):
    """JSON through orjson: the dedupe table sends a JSON value per changed key, several per account."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


faust.serializers.codecs.register("orjson", _OrJson())


def build_app(
    cfg: MigrationConfig,
    endpoints: Endpoints,
    *,
    batch_size: int = 2000,
    batch_within_s: float = 0.25,
    datadir: Path | None = None,
) -> faust.App:
    prefix = cfg.kafka.topic_prefix
    raw_topics = [raw_topic(prefix, name) for name in cfg.sources]
    dedupe_name = dedupe_topic(prefix, "account")
    app = ConfirmedAckApp(
        f"crmflow-process-{prefix}",
        guarded_topics={**dict.fromkeys(raw_topics, STAGE), dedupe_name: DEDUPE_STAGE},
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
        # A worker that dies (SIGKILL, a lost node) gives its partitions up after this, not faust's 60 s:
        # during a cutover a minute of stalled partitions is visible on every dashboard.
        broker_session_timeout=15.0,
        broker_heartbeat_interval=3.0,
        # No standby copies of the dedupe state: on two cores, replaying each other's changelog costs more
        # than it saves; a partition that moves recovers from its (compacted) changelog instead.
        table_standby_replicas=0,
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
    source = app.topic(*raw_topics, key_type=bytes, value_type=bytes)
    dedupe_codec = (
        AvroCodec(registry, topic_subject(dedupe_name), load_schema("target/account")) if cfg.dedupe_enabled else None
    )

    @app.agent(source)
    async def cleanse_and_map(stream: faust.StreamT[bytes]) -> None:
        async for manual, events in _batches(stream, batch_size, batch_within_s):
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
                records = [row for _, _, row in rows]
                if entity == "account" and dedupe_codec is not None:
                    # Unmasked: the matcher needs the real values; the resolving agent masks its output.
                    values = dedupe_codec.encode_many(records)
                    for record, value in zip(records, values, strict=True):
                        key = shard_key(record).encode()
                        pending.append(await app.producer.send(dedupe_name, key, value, None, None, None))
                    RECORDS.labels(stage=STAGE, entity=entity, outcome="out").inc(len(rows))
                    continue
                topic = mapped_topic(prefix, entity)
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
            await _ack(app, manual, events)
            _count_in(decoded, source_entities)
            _record_lag(app, events, STAGE)
            BATCH_SIZE.labels(stage=STAGE).observe(len(events))
            BATCH_DURATION.labels(stage=STAGE).observe(time.perf_counter() - started)
            LAST_SUCCESS.labels(stage=STAGE).set_to_current_time()

    if cfg.dedupe is not None and dedupe_codec is not None:
        # One table for the whole state (see processors.dedupe.state: one changelog keeps write order).
        # Each partition is its own shard (keys namespaced "<partition>|"), so a worker's results do not
        # depend on which other partitions it happens to hold. Writes are buffered per batch (WriteBehind)
        # and reach the table, and so its changelog, once per key at the end of the batch.
        table = app.Table(
            "dedupe-account",
            default=None,
            partitions=cfg.kafka.partitions,
            schema=faust.Schema(key_serializer="orjson", value_serializer="orjson"),
            help="deduplication state of accounts: blocks, record features, clusters, golden records",
        )
        matcher = cfg.dedupe.matcher()
        shards: dict[int, tuple[Deduper, WriteBehind]] = {}

        def shard(partition: int) -> tuple[Deduper, WriteBehind]:
            # Built on a partition's first event after it was assigned, from the table faust recovered
            # before any event flows: blocks and clusters are derived from the persisted records and goldens.
            held = shards.get(partition)
            if held is None:
                # Reads from the memory store's dict, what the table's lookups end in; writes go through
                # the table, which sends them to its changelog.
                store = cast("Mapping[str, Any]", cast(Any, table.data).data)
                buffer = WriteBehind(cast("MutableMapping[str, Any]", table), f"{partition}|", reads=store)
                held = shards[partition] = (Deduper.over_store(matcher, buffer), buffer)
            return held

        @app.on_partitions_revoked.connect
        def forget_shards(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
            # A partition that comes back may have been processed elsewhere meanwhile: derive it again.
            revoked: set[Any] = args[0] if args else kwargs.get("revoked", set())
            for tp in revoked:
                if tp.topic == dedupe_name:
                    shards.pop(tp.partition, None)

        account_decoder = AvroDecoder(registry, load_schema("target/account"))
        account_decoder.know(dedupe_codec.schema_id, dedupe_codec.schema)
        dedupe_source = app.topic(dedupe_name, key_type=bytes, value_type=bytes)
        account_topic = mapped_topic(prefix, "account")

        @app.agent(dedupe_source)
        async def resolve_accounts(stream: faust.StreamT[bytes]) -> None:
            async for manual, events in _batches(stream, batch_size, batch_within_s):
                started = time.perf_counter()
                pending: list[Awaitable[Any]] = []
                out: list[tuple[bytes | None, dict[str, Any]]] = []
                decisions: dict[str, int] = {}
                for event in events:
                    msg = event.message
                    where = f"{msg.topic}[{msg.partition}]@{msg.offset}"
                    rule, error, run_id = "avro_decode", "", None
                    try:
                        record = account_decoder.decode(event.value, origin=where)
                        run_id = record.get("run_id")
                        rule = "dedupe"
                        result = shard(msg.partition)[0].process(record)
                    except (SerializationError, DedupeError) as exc:
                        error = str(exc)
                    else:
                        _count_decisions(result, decisions)
                        account = golden_account(record, result)
                        out.append((msg.key, masker.mask("account", account) if masker.active else account))
                        continue
                    value, headers = dlq.letter(
                        value=event.value or b"", key=msg.key, topic=msg.topic, partition=msg.partition,
                        offset=msg.offset, stage=DEDUPE_STAGE, rule=rule, error=error, entity="account",
                        run_id=run_id)  # fmt: skip
                    pending.append(await app.producer.send(dlq_name, None, value, None, None, headers))
                    RECORDS.labels(stage=DEDUPE_STAGE, entity="account", outcome="rejected").inc()
                # Each partition's writes, once per key and in their safe order, through the table: faust
                # sends them to the changelog partition of the current event, and flushes them before it
                # commits any offset.
                firsts = {e.message.partition: e for e in reversed(events)}
                for partition, first in firsts.items():
                    token = _CURRENT_EVENT.set(weakref.ref(first))
                    try:
                        shard(partition)[1].flush()
                    finally:
                        _CURRENT_EVENT.reset(token)
                values = codecs["account"].encode_many([account for _, account in out])
                for (key, _), value in zip(out, values, strict=True):
                    pending.append(await app.producer.send(account_topic, key, value, None, None, None))
                # The changelog and the golden records durable before the input is acked (and committed).
                await asyncio.gather(*pending)
                await _ack(app, manual, events)
                RECORDS.labels(stage=DEDUPE_STAGE, entity="account", outcome="in").inc(len(events))
                RECORDS.labels(stage=DEDUPE_STAGE, entity="account", outcome="out").inc(len(out))
                merged = decisions.get("joined", 0)
                if merged:
                    RECORDS.labels(stage=DEDUPE_STAGE, entity="account", outcome="merged").inc(merged)
                for decision, n in decisions.items():
                    DEDUPE_DECISIONS.labels(entity="account", decision=decision).inc(n)
                _record_lag(app, events, DEDUPE_STAGE)
                BATCH_SIZE.labels(stage=DEDUPE_STAGE).observe(len(events))
                BATCH_DURATION.labels(stage=DEDUPE_STAGE).observe(time.perf_counter() - started)
                LAST_SUCCESS.labels(stage=DEDUPE_STAGE).set_to_current_time()

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


async def _ack(app: faust.App, manual: faust.Stream[bytes], events: list[faust.EventT[bytes]]) -> None:
    """Acknowledge a batch whose output is durable; only such acks move the committed offsets."""
    cast("ConfirmedAckConsumer", app.consumer).confirm(events)
    for event in events:
        await manual.ack(event)


def _count_decisions(result: DedupeResult, counts: dict[str, int]) -> None:
    """Tally one record's decisions (what DEDUPE_DECISIONS counts)."""
    key = "updated" if result.updated else "joined" if result.merged_into is not None else "founded"
    counts[key] = counts.get(key, 0) + 1
    for ev in result.evidence:
        if ev.get("decision") in ("vetoed", "refused"):
            counts[ev["decision"]] = counts.get(ev["decision"], 0) + 1
    if result.cluster_merges:
        counts["cluster_merge"] = counts.get("cluster_merge", 0) + len(result.cluster_merges)
    if result.closed_blocks:
        counts["closed_block"] = counts.get("closed_block", 0) + result.closed_blocks


def _count_in(decoded: list[tuple[int, dict[str, Any]]], source_entities: Mapping[str, str]) -> None:
    counts: dict[str, int] = {}
    for _, rec in decoded:
        entity = source_entities.get(rec["source"], "unknown")
        counts[entity] = counts.get(entity, 0) + 1
    for entity, n in counts.items():
        RECORDS.labels(stage=STAGE, entity=entity, outcome="in").inc(n)


def _record_lag(app: faust.App, events: list[faust.EventT[bytes]], stage: str) -> None:
    """Lag per partition after this batch: the partition's high watermark minus the next offset to read."""
    last: dict[Any, int] = {}
    for event in events:
        last[event.message.tp] = event.message.offset
    for tp, offset in last.items():
        high = app.consumer.highwater(tp)
        if high is not None:
            CONSUMER_LAG.labels(stage=stage, topic=tp.topic, partition=str(tp.partition)).set(
                max(high - offset - 1, 0))


def run_worker(app: faust.App, *, loglevel: str = "warning") -> None:
    """Run the app until SIGTERM/SIGINT (faust's Worker installs the signal handlers)."""
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
