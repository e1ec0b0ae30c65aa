"""The snapshot producer: every configured source, read once, to its raw topic as LegacyRecord envelopes.

One :class:`SnapshotProducer` owns one idempotent confluent-kafka ``Producer`` for the run. Per source it
reads items in batches, encodes each batch (:class:`~producers.envelope.EnvelopeEncoder`) and hands the messages to
librdkafka without waiting (``poll(0)`` serves delivery callbacks; a full local queue is waited out by
polling). Lines the reader rejected go to the dead-letter topic through the same producer, and so does
every record whose primary key an earlier record of the run already had (rule ``duplicate_key``, see
:mod:`producers.keys`: the first record of a key wins, over all sources feeding one entity). A delivery
callback per message feeds the :class:`~producers.checkpoint.ContiguousTracker`, and the checkpoint is
written every ``checkpoint_interval_s`` and at the end of a source - always at the highest *contiguous
acknowledged* position, so a crash at any moment loses nothing and only re-sends what the sink upserts.

Lifecycle: construct (creates the producer, registers the value schemas lazily per topic) ->
:meth:`SnapshotProducer.run` once -> :meth:`SnapshotProducer.close` (flushes). :func:`run_snapshot`
does all three from a migration config, after checking every source's header against the mapping
(:mod:`producers.headers`), so a missing column stops the run before any record of any source moves.

The counts it returns cover the whole run: a resumed run (same run id) starts from the checkpoint's
counts of the part earlier calls did, so its summary reconciles like an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.connections import KafkaConnection, as_kafka, kafka_config
from crmflow.dlq import DeadLetterWriter
from crmflow.exceptions import ConfigError
from crmflow.metrics import BATCH_DURATION, BATCH_SIZE, LAST_SUCCESS
from crmflow.serialization import AvroCodec, load_schema
from crmflow.topics import dlq_topic, raw_topic
from producers.checkpoint import Checkpoint, CheckpointStore, check_fingerprint, file_fingerprint
from producers.envelope import EnvelopeEncoder
from producers.exceptions import CheckpointError, DeliveryFailedError
from producers.headers import check_headers
from producers.kafka import DEFAULT_PRODUCER_CONFIG, ensure_topics
from producers.keys import Duplicate, KeyIndex, KeyLog, load_logs
from producers.readers.base import FileMark, Mark, Reader, Record, Rejected
from producers.readers.csvfile import CsvReader
from producers.readers.dialect import CsvDialect
from producers.report import NullProgress, Progress, SnapshotStats, SourceStats
from producers.runs import cfg_get, check_run_id, default_state_dir, resolve_run_id
from producers.source_run import STAGE, SourceRun, stats_of
from producers.sources import SourceSpec, source_specs

log = logging.getLogger(__name__)

LEGACY_SCHEMA = "legacy/legacy_record"
MAX_DEAD_LETTER_PAYLOAD = 256 * 1024  # raw bytes kept of a rejected line; stays under Kafka's 1 MB limit
DUPLICATE_KEY = "duplicate_key"


class SnapshotProducer:
    """Snapshots sources of one run to ``<prefix>.raw.<source>``; see the module docs for the lifecycle."""

    def __init__(
        self,
        *,
        kafka: KafkaConnection | str,
        registry_client: SchemaRegistryClient,
        topic_prefix: str,
        run_id: str,
        state_dir: Path | None = None,
        producer_config: Mapping[str, Any] | None = None,
        dead_letters: DeadLetterWriter | None = None,
        batch_size: int = 500,
        checkpoint_interval_s: float = 1.0,
        flush_timeout_s: float = 150.0,
        progress: Progress | None = None,
        on_delivered: Callable[[str, int], None] | None = None,
    ) -> None:
        self.run_id = check_run_id(run_id)
        self.topic_prefix = topic_prefix
        self.registry_client = registry_client
        self.store = CheckpointStore(state_dir or default_state_dir())
        self.batch_size = batch_size
        self.checkpoint_interval_s = checkpoint_interval_s
        self.flush_timeout_s = flush_timeout_s
        self.progress: Progress = progress or NullProgress()
        self.on_delivered = on_delivered
        self._kafka = as_kafka(kafka)
        conf = kafka_config(self._kafka, DEFAULT_PRODUCER_CONFIG, {"client.id": f"crmflow-snapshot-{run_id}"},
                            producer_config, {"error_cb": self._on_client_error})
        self.producer = Producer(conf)
        self.dlq_topic = dlq_topic(topic_prefix)
        self.dead_letters = dead_letters or DeadLetterWriter(self.producer, registry_client, self.dlq_topic)
        self._encoders: dict[str, EnvelopeEncoder] = {}
        self.keys = KeyIndex()
        """First record of every key per entity, over the sources of the run (:mod:`producers.keys`)."""
        self._keys_loaded = False

    # ------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Wait for outstanding deliveries (at most ``flush_timeout_s``)."""
        self.producer.flush(self.flush_timeout_s)

    def run(
        self,
        specs: Sequence[SourceSpec],
        *,
        limit: int | None = None,
        restart: bool = False,
        stop_event: threading.Event | None = None,
    ) -> SnapshotStats:
        """Snapshot ``specs`` one after the other; stops early (checkpointed) when ``stop_event`` is set."""
        stop = stop_event or threading.Event()
        stats = SnapshotStats(run_id=self.run_id)
        started = time.monotonic()
        self._load_keys(specs, restart=restart)
        try:
            for spec in specs:
                if stop.is_set():
                    break
                stats.sources[spec.name] = self.run_source(spec, limit=limit, restart=restart, stop=stop)
        finally:
            stats.elapsed_s = time.monotonic() - started
            stats.stopped = stop.is_set()
        return stats

    def _load_keys(self, specs: Sequence[SourceSpec], *, restart: bool) -> None:
        """Know the keys earlier calls of this run claimed (none of the sources that start over)."""
        if self._keys_loaded:
            return
        self._keys_loaded = True
        if restart:
            for spec in specs:
                self.store.keys_path(self.run_id, spec.name).unlink(missing_ok=True)
        loaded = load_logs(self.store.run_dir(self.run_id), self.keys, [s.name for s in specs])
        if loaded:
            log.info("run %s: %d key(s) claimed by earlier calls of the run", self.run_id, loaded,
                     extra={"stage": STAGE, "run_id": self.run_id})  # fmt: skip

    # ------------------------------------------------------------------------------------ one source

    def run_source(self, spec: SourceSpec, *, limit: int | None, restart: bool, stop: threading.Event) -> SourceStats:
        extra = {"stage": STAGE, "run_id": self.run_id, "entity": spec.entity}
        checkpoint = None if restart else self.store.load(self.run_id, spec.name)
        if checkpoint is not None and checkpoint.complete:
            log.info("source %s already complete in run %s; skipped", spec.name, self.run_id, extra=extra)
            done = stats_of(checkpoint)
            done.complete = done.skipped = True
            return done
        if checkpoint is not None and spec.path is not None:
            check_fingerprint(checkpoint, spec.path)
        if checkpoint is None:
            fingerprint = file_fingerprint(spec.path) if spec.path is not None else None
            checkpoint = Checkpoint(self.run_id, spec.name, fingerprint=fingerprint)
        reader = spec.open_reader(checkpoint.mark, checkpoint_dialect(checkpoint))
        run = SourceRun(spec, self.run_id, raw_topic(self.topic_prefix, spec.name), checkpoint, self.on_delivered)
        if checkpoint.mark is not None:
            mark = checkpoint.mark
            at = mark.line if isinstance(mark, FileMark) else mark.rows + 1
            run.stats.resumed_from = f"{reader.name}:{at}"
            log.info("source %s resumes run %s at %s (%d record(s) read before)", spec.name, self.run_id,
                     run.stats.resumed_from, run.stats.read_before, extra=extra)  # fmt: skip
        started = time.monotonic()
        exhausted = False
        with reader:
            if isinstance(reader, CsvReader):
                if checkpoint.dialect is None:
                    log.info("source %s: %s read with %s", spec.name, reader.name, reader.dialect.describe(),
                             extra=extra)  # fmt: skip
                checkpoint.dialect = reader.dialect.to_json()
            run.key_source = self.keys.source_index(spec.name, reader.name)
            run.key_log = KeyLog(self.store.keys_path(self.run_id, spec.name), spec.name, spec.entity, reader.name)
            unit = "rows" if spec.kind == "table" else "bytes"
            self.progress.start(spec.name, total=reader.total, completed=reader.start, unit=unit)
            try:
                exhausted = self._pump(run, reader, limit, stop)
            finally:
                # Also on an error: keep what was acknowledged, so the next run resumes after it.
                self._drain(run)
                run.report_metrics()
                self.progress.finish(spec.name)
                self._save(run, exhausted=exhausted)
                run.key_log.close()
                run.stats.run_counts = dict(run.tracker.counts)
        run.stats.elapsed_s = time.monotonic() - started
        if run.stats.rejected:
            rules = ", ".join(f"{rule} {n}" for rule, n in sorted(run.stats.rejected_by_rule.items()))
            log.warning("source %s: %d line(s) dead-lettered to %s (%s)", spec.name, run.stats.rejected,
                        self.dlq_topic, rules, extra=extra)  # fmt: skip
        if run.stats.failed:
            raise DeliveryFailedError(spec.name, run.stats.failed, run.first_error or "unknown")
        log.info(
            "source %s: read %d, produced %d, rejected %d, filtered %d%s",
            spec.name,
            run.stats.read,
            run.stats.produced,
            run.stats.rejected,
            run.stats.filtered,
            "" if run.stats.complete else " (not complete: run again with the same --run-id)",
            extra=extra,
        )
        return run.stats

    def _pump(self, run: SourceRun, reader: Reader, limit: int | None, stop: threading.Event) -> bool:
        """Read, filter and send until the reader ends (True) or the limit, a stop or a failure (False)."""
        stats, tracker, segment = run.stats, run.tracker, run.spec.segment
        claim, entity, source_index, key_log = self.keys.claim, run.spec.entity, run.key_source, run.key_log
        batch: list[tuple[int, Record]] = []
        queued = 0
        last_save = time.monotonic()
        for item in reader:
            stats.read += 1
            if isinstance(item, Rejected):
                self._reject(run, item)
            else:
                position = item.position
                n = int(position[position.rindex(":") + 1 :])
                key, duplicate, new = claim(entity, item.key, source_index, n)
                if new:
                    key_log.add(key, n)
                if segment is not None and not segment(item.fields):
                    tracker.add_done(item.mark, "filtered")
                    stats.filtered += 1
                elif duplicate is not None:
                    self._duplicate(run, item, duplicate)
                else:
                    batch.append((tracker.add(item.mark, "produced"), item))
                    queued += 1
            at_limit = limit is not None and queued >= limit
            if len(batch) >= self.batch_size or at_limit or stop.is_set():
                self._send(run, batch)
                batch = []
                run.report_metrics()
                self.progress.update(run.spec.name, item.mark.progress)
                if time.monotonic() - last_save >= self.checkpoint_interval_s:
                    self._save(run)
                    last_save = time.monotonic()
                if at_limit or stop.is_set() or stats.failed:
                    return False
        self._send(run, batch)
        return True

    def _send(self, run: SourceRun, batch: list[tuple[int, Record]]) -> None:
        if not batch:
            self.producer.poll(0)
            return
        started = time.perf_counter()
        records = [rec for _, rec in batch]
        values = self._encoder(run.topic).encode(
            records, source=run.spec.name, entity=run.spec.legacy_entity, run_id=self.run_id,
            captured_at_ms=int(time.time() * 1000),
        )  # fmt: skip
        produce, poll, topic, delivered = self.producer.produce, self.producer.poll, run.topic, run.record_delivered
        for (seq, rec), value in zip(batch, values, strict=True):
            key = rec.key.encode("utf-8") if rec.key else None
            callback = partial(delivered, seq)
            while True:
                try:
                    produce(topic, value, key, on_delivery=callback)
                    break
                except BufferError:
                    poll(0.05)  # local queue full: serve acknowledgements, then retry
        poll(0)
        BATCH_SIZE.labels(stage=STAGE).observe(len(batch))
        BATCH_DURATION.labels(stage=STAGE).observe(time.perf_counter() - started)

    def _reject(self, run: SourceRun, item: Rejected) -> None:
        self._dead_letter(run, item.mark, item.position, item.rule, item.error, item.raw[:MAX_DEAD_LETTER_PAYLOAD])

    def _duplicate(self, run: SourceRun, rec: Record, first: Duplicate) -> None:
        """Dead-letter a record whose key an earlier record of the run holds; the payload is its fields as
        JSON (encrypted like every payload), the reason names both positions, never a value."""
        raw = json.dumps(rec.fields, ensure_ascii=False).encode("utf-8", "surrogateescape")
        key = rec.key.encode("utf-8", "surrogateescape") if rec.key else None
        reason = first.reason(run.spec.name, rec.position)
        self._dead_letter(run, rec.mark, rec.position, DUPLICATE_KEY, reason, raw[:MAX_DEAD_LETTER_PAYLOAD],
                          key=key, field=run.spec.key)  # fmt: skip

    def _dead_letter(
        self, run: SourceRun, mark: Mark, position: str, rule: str, error: str, raw: bytes, *,
        key: bytes | None = None, field: str | None = None,
    ) -> None:  # fmt: skip
        seq = run.tracker.add(mark, "rejected", rule)
        value, headers = self.dead_letters.letter(
            value=raw,
            key=key,
            topic="",
            partition=-1,
            offset=-1,
            stage=STAGE,
            rule=rule,
            error=error,
            field=field,
            entity=run.spec.entity,
            run_id=self.run_id,
            source_position=position,
        )
        callback = partial(run.reject_delivered, seq)
        while True:
            try:
                self.producer.produce(self.dlq_topic, value, None, headers=list(headers), on_delivery=callback)
                break
            except BufferError:
                self.producer.poll(0.05)
        run.stats.rejected += 1
        run.stats.rejected_by_rule[rule] = run.stats.rejected_by_rule.get(rule, 0) + 1
        log.debug("%s: %s (rule %s) sent to %s", position, error, rule, self.dlq_topic,
                  extra={"stage": STAGE, "run_id": self.run_id, "entity": run.spec.entity})  # fmt: skip

    def _drain(self, run: SourceRun) -> None:
        """Wait until every message of the source is acknowledged or failed (bounded by delivery.timeout)."""
        deadline = time.monotonic() + self.flush_timeout_s
        while run.tracker.in_flight and time.monotonic() < deadline:
            self.producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
            if not len(self.producer):
                break

    def _save(self, run: SourceRun, *, exhausted: bool = False) -> None:
        run.key_log.sync()  # before the checkpoint: the log holds every key of the checkpointed prefix
        self.store.save(run.settle(exhausted=exhausted))
        LAST_SUCCESS.labels(stage=STAGE).set_to_current_time()

    def _on_client_error(self, err: KafkaError) -> None:
        refusal = self._kafka.explain(err)
        if refusal is not None:
            log.error("%s", refusal, extra={"stage": STAGE, "run_id": self.run_id})
        else:
            log.warning("kafka client: %s", err.str(), extra={"stage": STAGE, "run_id": self.run_id})

    def _encoder(self, topic: str) -> EnvelopeEncoder:
        encoder = self._encoders.get(topic)
        if encoder is None:
            codec = AvroCodec.for_topic(self.registry_client, topic, load_schema(LEGACY_SCHEMA))
            encoder = self._encoders[topic] = EnvelopeEncoder(codec)
        return encoder


def checkpoint_dialect(checkpoint: Checkpoint | None) -> CsvDialect | None:
    """The CSV dialect a checkpointed run read its file with (None: none recorded)."""
    if checkpoint is None or not checkpoint.dialect:
        return None
    try:
        return CsvDialect.from_json(checkpoint.dialect)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"source {checkpoint.source}: the checkpoint's CSV dialect is invalid ({exc}); "
                              "run with --restart") from None  # fmt: skip


def preflight(cfg: Any, specs: Sequence[SourceSpec], store: CheckpointStore, run_id: str, *, restart: bool) -> None:
    """Check the header of every source still to read against the mapping; raises
    :class:`~producers.exceptions.HeaderMismatchError` (a ConfigError) before anything is produced."""
    todo: list[SourceSpec] = []
    dialects: dict[str, CsvDialect | None] = {}
    for spec in specs:
        checkpoint = None if restart else store.load(run_id, spec.name)
        if checkpoint is not None and checkpoint.complete:
            continue
        todo.append(spec)
        dialects[spec.name] = checkpoint_dialect(checkpoint)
    check_headers(cfg, todo, dialects)


def run_snapshot(
    cfg: Any,
    *,
    kafka: KafkaConnection | str,
    registry_client: SchemaRegistryClient,
    run_id: str | None = None,
    limit: int | None = None,
    sources: Sequence[str] | None = None,
    restart: bool = False,
    stop_event: threading.Event | None = None,
    state_dir: Path | None = None,
    partitions: int | None = None,
    progress: Progress | None = None,
    producer_config: Mapping[str, Any] | None = None,
    on_delivered: Callable[[str, int], None] | None = None,
) -> SnapshotStats:
    """Snapshot the config's sources (or ``sources``) to ``<kafka.topic_prefix>.raw.<source>``.

    ``run_id`` defaults to a new id named after ``run.name``; pass the same id again to resume. ``limit`` caps the
    records *produced* per source in this call (rejected and filtered ones are reported as they come).
    ``restart`` ignores (and overwrites) the checkpoints. Topics are created when missing, with
    ``partitions`` (default: the config's ``kafka.partitions``, else 3) and the config's
    ``kafka.replication_factor``.

    Before anything else, every source still to read is checked against the mapping: a mapped column
    missing from a header raises :class:`~producers.exceptions.HeaderMismatchError` (a ConfigError). The
    returned counts cover the whole run, including what earlier calls with the same run id checkpointed.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    prefix = cfg_get(cfg, "kafka", "topic_prefix")
    if not prefix:
        raise ConfigError("kafka.topic_prefix: required")
    specs = source_specs(cfg, sources)
    rid = resolve_run_id(cfg, run_id)
    preflight(cfg, specs, CheckpointStore(state_dir or default_state_dir()), rid, restart=restart)
    parts = partitions or cfg_get(cfg, "kafka", "partitions") or 3
    replication = int(cfg_get(cfg, "kafka", "replication_factor") or -1)
    topics = [raw_topic(prefix, s.name) for s in specs] + [dlq_topic(prefix)]
    ensure_topics(kafka, topics, int(parts), replication)
    producer = SnapshotProducer(
        kafka=kafka,
        registry_client=registry_client,
        topic_prefix=prefix,
        run_id=rid,
        state_dir=state_dir,
        producer_config=producer_config,
        progress=progress,
        on_delivered=on_delivered,
    )
    try:
        return producer.run(specs, limit=limit, restart=restart, stop_event=stop_event)
    finally:
        producer.close()
