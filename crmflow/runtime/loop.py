"""The transactional consume → process → produce loop (exactly-once between topics).

Per iteration:

1. Natural batching: block up to ``batch_timeout_s`` for a first message, then take what else arrives within
   ``linger_s`` (up to ``batch_size`` in one ``consume`` call). A backlog fills the batch at once, so a migration
   runs full batches; a trickle (changes of a parallel run) goes on after ``linger_s``, not after a batch's
   worth of waiting. ``linger_s=None``: wait ``batch_timeout_s`` for a full batch instead.
2. Decode every value with the stage's decoder of its topic; an undecodable value becomes a dead letter
   (rule ``avro_decode``), it never stops the partition.
3. ``stage.process(batch)``: pure, returns records per topic, dead letters and state writes.
4. One transaction: produce the records (encoded per topic in one ``encode_many``), the changelog entries
   and the dead letters, ``send_offsets_to_transaction`` with the batch's next offsets and the group's
   metadata, ``commit_transaction``. Downstream reads ``read_committed``, so a crash before the commit
   leaves nothing visible and the input uncommitted: the batch is processed again, once.
5. An abortable error (a broker away, a request timed out): abort, rewind the batch's partitions to their
   first offset, drop the stage state of those partitions (restored from the changelog before the next
   batch), start a new transactional producer (one that lived through a broker outage can stall on a stale
   coordinator), retry with backoff. A transactional call that blocks past its own timeout anyway ends the
   process with exit code 75 (:mod:`crmflow.runtime.watchdog`); its supervisor starts it again. A fatal
   error (this producer was fenced by a newer instance with the same transactional id, or its group
   generation is stale): stop with a clear error; the newer owner carries on.

Rebalances (cooperative-sticky): callbacks run inside ``consume``, when no transaction is open (every
batch is committed before the next consume), so a revoke has nothing in flight to finish; the stage
forgets the revoked partitions' state. On assignment, the state of the new partitions is read from the
committed changelog before their first batch is processed.

Partitions that reached their end with an offset past the last commit (transaction markers from the
upstream stage) get that end offset committed in an offsets-only transaction, so a group's lag reaches 0.

A stage that writes elsewhere (the sink) writes inside ``process``; a dependency that is away there, or the
registry while decoding, raises a ``TransientError``: the batch is rewound and retried with backoff
(``crmflow_retries_total``), never dead-lettered and never committed. Between batches the runtime calls the
stage's ``maintain`` every ``maintenance_interval_s`` and commits the dead letters it returns. ``run(drain=True)``
returns once every assigned partition was read to its end, after a final ``maintain(final=True)``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # OffsetSpec: public, not in __all__
    AdminClient,
    OffsetSpec,
)

from crmflow.connections import KafkaConnection, kafka_config
from crmflow.dlq import DeadLetterWriter, Letter
from crmflow.exceptions import ConfigError, TerminalError, TransientError
from crmflow.metrics import (
    BATCH_DURATION,
    BATCH_SIZE,
    DEDUPE_DECISIONS,
    LAST_SUCCESS,
    RECORDS,
    RETRIES,
    STATE_RESTORES,
    TRANSACTIONS,
)
from crmflow.runtime.changelog import ChangelogError, ensure_changelog, ensure_topics, read_partitions
from crmflow.runtime.consumer import consumer_config, forget_lag, unread, update_lag
from crmflow.runtime.stage import BatchStage, InRecord, StageOutput
from crmflow.runtime.watchdog import CallWatchdog
from crmflow.serialization import SerializationError

log = logging.getLogger(__name__)

TP = tuple[str, int]


class FencedError(TerminalError):
    """Another instance took over this worker's transactional id or partitions; this one must stop."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How a runtime connects and batches. ``transactional_id`` must be unique per live worker and stable
    across its restarts (a restart then fences its predecessor and aborts its open transaction at once)."""

    kafka: KafkaConnection | str  # the stage's connection (KafkaConnection.for_stage); a bare host:port in tests
    group_id: str
    transactional_id: str
    dlq_topic: str
    batch_size: int = 2000
    batch_timeout_s: float = 0.25  # the longest an idle consume blocks (between stop checks and maintenance)
    linger_s: float | None = 0.02  # after a first message, the longest to wait for more (None: a full batch)
    transaction_timeout_ms: int = 20_000
    session_timeout_ms: int = 15_000
    replication_factor: int = -1
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 10.0
    lag_interval_s: float = 2.0
    maintenance_interval_s: float = 5.0
    #: With the stage's ``first_topics``: the longest the other topics stay paused in one go; then it is their
    #: turn (until read to their ends, at most ``_TURN_S``), so a first topic that never runs dry cannot starve them.
    first_hold_max_s: float = 30.0
    client_config: dict[str, Any] = field(default_factory=dict)  # librdkafka tuning (TLS/SASL live in ``kafka``)


class TransactionalRuntime:
    """Runs one :class:`BatchStage` until :meth:`stop` (or SIGTERM/SIGINT with ``install_signals``)."""

    def __init__(self, stage: BatchStage, opts: RuntimeOptions, dlq: DeadLetterWriter,
                 stop_event: threading.Event | None = None) -> None:
        self.stage = stage
        self.opts = opts
        self.dlq = dlq
        self.stop_event = stop_event or threading.Event()
        #: Set once transactions are initialised (any older instance with this transactional id is fenced).
        self.ready = threading.Event()
        self._assigned: set[TP] = set()
        self._done: dict[TP, int] = {}  # next offset to read, as last committed by this worker
        self._committed: dict[TP, int] = {}  # the same, kept after the partitions go (for reports)
        self._eof: dict[TP, int] = {}  # end offsets seen past what was committed
        self._restore: set[TP] = set()  # state topic partitions to restore before their next batch
        # An eager assignor (range) revokes every partition at each rebalance and most come back: a state
        # partition's state is kept over it when nobody committed anything on it meanwhile (_on_assign).
        strategy = str(opts.client_config.get("partition.assignment.strategy", "cooperative-sticky"))
        self._eager = "cooperative" not in strategy
        self._kept: dict[TP, int] = {}  # revoked state partitions whose state is kept → our last committed offset
        self._base: dict[TP, int] = {}  # assigned state partitions → the group's committed offset when assigned
        self._at_end: set[TP] = set()  # assigned partitions read to their end (no record since)
        self._assigned_once = False
        self._next_maintenance = 0.0
        self._decoders = {t: stage.decoder(t) for t in stage.topics}
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._watchdog = CallWatchdog(stage.name, grace_s=5.0)  # librdkafka's calls can outlive their timeout
        self._next_lag = 0.0
        self._first = frozenset(stage.first_topics)
        self._admin: AdminClient | None = None  # asks the broker for the paused partitions' ends (_behind)
        self._paused: set[TP] = set()  # partitions paused so that the first topics' backlog is read first
        self._held_since: float | None = None
        self._turn_until: float | None = None  # the other topics' turn (the first ones paused) ends then...
        self._turn_wait: dict[TP, int] = {}  # ...or once these partitions were read to these ends (-1: unknown)
        self._reached: dict[TP, int] = {}  # the offset of each assigned partition's last end-of-partition event
        self.turns = 0  # the other topics' turns given
        self._failures = 0  # transactions aborted in a row (backoff)
        self.batches = 0
        self.records = 0
        self.undecodable = 0  # poison messages dead-lettered (committed)

    # ------------------------------------------------------------------------------------------ setup

    def _clients(self) -> tuple[Consumer, Producer]:
        o = self.opts
        consumer = Consumer(consumer_config(o.kafka, o.group_id, f"{o.transactional_id}-consumer",
                                            session_timeout_ms=o.session_timeout_ms, extra=o.client_config))
        return consumer, self._new_producer()

    def _new_producer(self) -> Producer:
        o = self.opts
        return Producer(kafka_config(o.kafka, o.client_config, {
            "client.id": o.transactional_id, "transactional.id": o.transactional_id,
            "enable.idempotence": True, "acks": "all", "linger.ms": 5, "batch.size": 1024 * 1024,
            "compression.type": "lz4", "partitioner": "murmur2_random",
            "transaction.timeout.ms": o.transaction_timeout_ms, "queue.buffering.max.messages": 500_000,
            # A transaction begun right after the last one's commit meets CONCURRENT_TRANSACTIONS until the
            # coordinator wrote the markers, and librdkafka retries after retry.backoff.ms: 100 ms by default,
            # which made every send_offsets_to_transaction take ~95 ms here (5 ms: ~8 ms). Retries still back
            # off exponentially up to retry.backoff.max.ms (1 s).
            "retry.backoff.ms": 5,
        }))

    def _renew_producer(self) -> None:
        """A new transactional producer (same id) after an aborted transaction: one that lived through a broker
        outage may keep a coordinator whose connection is gone and stall its next transaction for good
        (librdkafka #5511); a new client looks the coordinator up afresh. Its ``init_transactions`` bumps the
        epoch of this worker's own, already aborted, transactional id."""
        producer = self._producer = self._new_producer()
        self._retrying("initialising transactions", lambda: self._guarded(
            "init_transactions", 30, lambda: producer.init_transactions(30)))

    def committed(self) -> dict[TP, int]:
        """The next offset to read of each partition this worker committed, as it last committed it."""
        return dict(self._committed)

    def install_signals(self) -> None:
        """SIGTERM and SIGINT finish the current batch, commit it and return from :meth:`run`."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop())

    def stop(self) -> None:
        self.stop_event.set()

    # ------------------------------------------------------------------------------------------ loop

    def run(self, *, drain: bool = False) -> bool:
        """Consume, process and commit until stopped, or with ``drain`` until every assigned partition was read
        to its end. Returns True when a drain finished. Raises :class:`FencedError` when another instance took
        over, and lets a ``TerminalError`` of the stage's setup through; everything else is retried."""
        o = self.opts
        consumer, producer = self._consumer, self._producer = self._clients()
        drained = False
        try:
            if not self._retrying("initialising transactions", lambda: self._guarded(
                    "init_transactions", 30, lambda: producer.init_transactions(30))):
                return False
            self.ready.set()
            if not self._retrying("setting up the stage", self.stage.setup, operation="setup"):
                return False
            internal = self.stage.internal_topics()
            if internal and not self._retrying("creating the internal topics", lambda: ensure_topics(
                    o.kafka, internal, o.replication_factor, o.client_config)):
                return False
            for state_topic, changelog in self.stage.changelogs.items():
                if not self._retrying("creating the changelog", lambda c=changelog, t=state_topic: ensure_changelog(
                        o.kafka, c, t, o.replication_factor, o.client_config)):
                    return False
            consumer.subscribe(list(self.stage.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
            log.info("%s reading %s as group %s (transactional id %s)", self.stage.name,
                     ", ".join(self.stage.topics), o.group_id, o.transactional_id, extra={"stage": self.stage.name})
            while not self.stop_event.is_set():
                self._prioritise(consumer)
                messages = self._consume(consumer)
                batch = self._admit(messages)
                if batch:
                    self._process(batch)
                elif self._eof:
                    self._commit_ends()
                self._maintain()
                self._lag()
                if drain and not messages and self._drained():
                    drained = self._finish_drain()
                    break
        finally:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the consumer failed: %s", exc)
            self.stage.close()
            log.info("%s stopped after %d batches, %d records", self.stage.name, self.batches, self.records,
                     extra={"stage": self.stage.name})
        return drained

    def _consume(self, consumer: Consumer) -> list[Message]:
        o = self.opts
        if o.linger_s is None:
            return consumer.consume(o.batch_size, o.batch_timeout_s)
        first = consumer.poll(o.batch_timeout_s)
        if first is None:
            return []
        if o.batch_size == 1:
            return [first]
        return [first, *consumer.consume(o.batch_size - 1, o.linger_s)]

    def _prioritise(self, consumer: Consumer) -> None:
        """Pause the partitions of the topics that are not first while the first topics' assigned partitions hold
        a batch or more of unread messages (high watermark as last fetched, no broker round trip, minus the
        position), and resume them once that backlog is below a batch. After ``first_hold_max_s`` of that, it is
        the others' turn if the broker holds records of theirs past their positions (a paused partition's
        watermark is not fetched, so it is asked): the first topics are paused instead until every partition
        found behind was read to its end (its end-of-partition event, which librdkafka raises past transaction
        markers too), or for ``_TURN_S``, so a first topic that never runs dry cannot starve the others, and a
        turn with nothing to read costs no pause of the first topics."""
        if not self._first:
            return
        firsts = {tp for tp in self._assigned if tp[0] in self._first}
        others = self._assigned - firsts
        now = time.monotonic()
        want: set[TP] = set()
        if self._turn_until is not None:  # the others' turn, until they are read to their ends or it is up
            if now < self._turn_until and not self._turn_done():
                return
            self._turn_until, self._held_since = None, now
        if self._backlog(consumer, firsts) < self.opts.batch_size:
            self._held_since = None
        elif self._held_since is None or now - self._held_since <= self.opts.first_hold_max_s:
            self._held_since = self._held_since or now
            want = others
        elif behind := self._behind(consumer, others):
            self._turn_until, self._turn_wait, want = now + _TURN_S, behind, firsts
            # Seen at their end before they were paused: their next end counts. A resumed partition raises its
            # end-of-partition event again even with nothing new (librdkafka 2.16, measured), so one taken for
            # behind (the broker could not be asked) is back at its end at once, and a drain still completes.
            self._at_end -= behind.keys()
            self.turns += 1
        else:  # nothing of theirs to read: hold on
            self._held_since, want = now, others
        pause, resume = want - self._paused, self._paused - want
        try:
            if resume:
                consumer.resume([TopicPartition(t, p) for t, p in sorted(resume)])
            if pause:
                consumer.pause([TopicPartition(t, p) for t, p in sorted(pause)])
        except KafkaException as exc:
            log.warning("pausing or resuming partitions failed: %s", exc, extra={"stage": self.stage.name})
            return
        self._paused = want

    def _turn_done(self) -> bool:
        """Whether every partition of the others' turn raised its end-of-partition event since the turn began, at
        the end the broker gave for it or later (an event raised before the turn, still queued, does not end it)."""
        return all(tp in self._at_end and self._reached.get(tp, -1) >= end for tp, end in self._turn_wait.items())

    def _behind(self, consumer: Consumer, partitions: set[TP]) -> dict[TP, int]:
        """Those of ``partitions`` of which the broker holds committed messages past their positions, with the
        broker's end of each (-1 when unknown): a paused
        partition's watermark is not fetched, so it is asked, once per ``first_hold_max_s``, of an admin client
        (the consumer's own connection is busy with a fetch that waits up to fetch.wait.max.ms). All of them
        when that is not known: the turn then finds out. (A position moves past a transaction's commit marker:
        measured on librdkafka 2.16, a partition read to its end has its position at the broker's end.)"""
        try:
            positions: dict[TP, int] = {}
            for tp in consumer.position([TopicPartition(t, p) for t, p in sorted(partitions)]):
                position = tp.offset if tp.offset >= 0 else self._done.get((tp.topic, tp.partition), -1)
                if position < 0:
                    return dict.fromkeys(partitions, -1)
                positions[(tp.topic, tp.partition)] = position
            if self._admin is None:
                self._admin = AdminClient(kafka_config(self.opts.kafka, {
                    "client.id": f"{self.opts.transactional_id}-admin"}))
            asked = self._admin.list_offsets(
                {TopicPartition(t, p): OffsetSpec.latest() for t, p in positions},  # type: ignore[no-untyped-call]
                isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=_WATERMARK_TIMEOUT_S)
            behind: dict[TP, int] = {}
            for tp, future in asked.items():
                end = future.result(timeout=_WATERMARK_TIMEOUT_S).offset
                if end > positions[(tp.topic, tp.partition)]:
                    behind[(tp.topic, tp.partition)] = end
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            log.debug("the other topics' backlog is unknown: %s", exc)
            return dict.fromkeys(partitions, -1)
        return behind

    def _backlog(self, consumer: Consumer, partitions: set[TP]) -> int:
        """Unread messages of ``partitions`` (before a first fetch: from the last commit); 0 when unknown."""
        try:
            return sum(unread(consumer, partitions, self._done).values())
        except KafkaException as exc:
            log.debug("backlog unknown: %s", exc)
            return 0

    def _admit(self, messages: list[Message]) -> list[Message]:
        """The data messages of assigned partitions; end-of-partition events are noted."""
        batch: list[Message] = []
        for msg in messages:
            err = msg.error()
            tp = (msg.topic() or "", msg.partition() or 0)
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    end = msg.offset() or 0
                    if tp in self._assigned:
                        self._at_end.add(tp)
                        self._reached[tp] = end
                        if end > self._done.get(tp, -1):
                            self._eof[tp] = end
                elif err.fatal():
                    raise TerminalError(f"fatal consumer error: {err.str()}")
                else:
                    log.warning("consumer error: %s", err.str())
                continue
            if tp in self._assigned:
                self._at_end.discard(tp)
                batch.append(msg)
        return batch

    def _process(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        firsts: dict[TP, int] = {}
        nexts: dict[TP, int] = {}
        for msg in messages:
            tp = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            firsts.setdefault(tp, offset)
            nexts[tp] = offset + 1
        for tp, nxt in nexts.items():  # an end seen in this very batch, past its last record, stays noted
            if self._eof.get(tp, nxt + 1) <= nxt:
                del self._eof[tp]
        if not self._restore_pending():
            self._rewind(firsts)  # stopping: nothing of this batch is processed or committed
            return
        try:
            records, undecodable = self._decode(messages)
        except TransientError as exc:
            self._retry_later("decode", exc, firsts)
            return
        try:
            output = self.stage.process(records)
        except TransientError as exc:  # what the stage writes into is away: the same batch, later
            self._retry_later("process", exc, firsts)
            return
        except Exception:
            # A bug in a stage must not commit anything: its partitions are read again by the next owner.
            self._rewind(firsts)
            raise
        try:
            self._transact(records, undecodable, output, nexts)
        except KafkaException as exc:
            # Processed again from the rewound offsets, against restored state: the same outputs.
            self._failures += 1
            self._after_failed_transaction(exc, firsts, self._failures)
            return
        self._failures = 0
        self._done.update(nexts)
        self._committed.update(nexts)
        self.batches += 1
        self.records += len(messages)
        self.undecodable += len(undecodable)
        self.stage.committed(output)
        self._report(output, undecodable)
        BATCH_SIZE.labels(stage=self.stage.name).observe(len(messages))
        BATCH_DURATION.labels(stage=self.stage.name).observe(time.perf_counter() - started)
        LAST_SUCCESS.labels(stage=self.stage.name).set_to_current_time()

    def _decode(self, messages: list[Message]) -> tuple[list[InRecord], list[tuple[Message, str]]]:
        records: list[InRecord] = []
        undecodable: list[tuple[Message, str]] = []
        for msg in messages:
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            raw = msg.value()
            if raw is None and self.stage.skip_tombstones:
                log.debug("passing over a tombstone at %s[%d]@%d", topic, partition, offset,
                          extra={"stage": self.stage.name})
                continue
            if raw is None:  # a tombstone: deletes are not part of the raw or dedupe contracts
                undecodable.append((msg, f"{topic}[{partition}]@{offset}: a tombstone (no value) is not a record"))
                continue
            try:
                value = self._decoders[topic].decode(raw)
            except SerializationError as exc:  # its origin is formatted here, not for every message
                undecodable.append((msg, f"{topic}[{partition}]@{offset}: {exc}"))
                continue
            headers = msg.headers()
            records.append(InRecord(topic, partition, offset, msg.key(), value, raw,
                                    headers if isinstance(headers, list) else None))
        return records, undecodable

    def _transact(self, records: Sequence[InRecord], undecodable: list[tuple[Message, str]], output: StageOutput,
                  nexts: dict[TP, int]) -> None:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        producer.begin_transaction()
        by_topic: dict[str, list[int]] = {}
        for i, out in enumerate(output.records):
            by_topic.setdefault(out.topic, []).append(i)
        for topic, indexes in by_topic.items():
            values = self.stage.encoder(topic).encode_many(output.records[i].value for i in indexes)
            for i, value in zip(indexes, values, strict=True):
                out_rec = output.records[i]
                self._produce(producer, topic, out_rec.key, value, partition=out_rec.partition,
                              headers=list(out_rec.headers) if out_rec.headers else None)
        changelogs = self.stage.changelogs
        for w in output.state:
            assert w.topic in changelogs, f"state of {w.topic}: the stage names no changelog of it"
            self._produce(producer, changelogs[w.topic], w.key, w.value, partition=w.partition)
        for msg, error in undecodable:
            value, headers = self.dlq.letter(
                value=msg.value() or b"", key=msg.key(), topic=msg.topic() or "", partition=msg.partition() or 0,
                offset=msg.offset() or 0, stage=self.stage.name, rule="avro_decode", error=error)
            self._produce(producer, self.dlq.topic, None, value, headers=list(headers))
        for rej in output.rejections:
            rec = records[rej.index]
            value, headers = self.dlq.letter(
                value=rec.raw, key=rec.key, topic=rec.topic, partition=rec.partition, offset=rec.offset,
                stage=rej.stage, rule=rej.rule, field=rej.field, error=rej.error, entity=rej.entity,
                run_id=rej.run_id, source_position=rej.source_position)
            self._produce(producer, self.dlq.topic, None, value, headers=list(headers))
        self._produce_letters(producer, output.letters)
        offsets = [TopicPartition(t, p, o) for (t, p), o in nexts.items()]
        self._guarded("send_offsets_to_transaction", _SEND_OFFSETS_TIMEOUT_S,
                      lambda: producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(),
                                                                   _SEND_OFFSETS_TIMEOUT_S))
        self._commit(producer)

    def _guarded(self, what: str, timeout_s: float, call: Callable[[], object]) -> None:
        """``call()`` under the watchdog: the process exits (and is restarted) if it blocks past its timeout."""
        with self._watchdog.guard(what, timeout_s):
            call()

    def _produce_letters(self, producer: Producer, letters: Sequence[Letter]) -> None:
        for letter in letters:
            value, headers = self.dlq.encode(letter)
            self._produce(producer, self.dlq.topic, None, value, headers=list(headers))

    @staticmethod
    def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None, *, partition: int = -1,
                 headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
        while True:
            try:
                if partition >= 0:
                    producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
                else:
                    producer.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError:
                producer.poll(0.05)

    def _commit(self, producer: Producer) -> None:
        """Commit the open transaction; a retriable error is retried, anything else is raised."""
        for attempt in range(1, 6):
            try:
                self._guarded("commit_transaction", 60, lambda: producer.commit_transaction(60))
                TRANSACTIONS.labels(stage=self.stage.name, outcome="committed").inc()
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.retriable() and attempt < 5:
                    log.warning("committing the transaction timed out (%s); retrying", err.str())
                    continue
                raise

    def _after_failed_transaction(self, exc: KafkaException, firsts: dict[TP, int], attempt: int) -> None:
        """Abort, rewind the batch's partitions, drop their state; raise FencedError when fatal."""
        err = exc.args[0] if exc.args else None
        producer = self._producer
        assert producer is not None
        fatal = isinstance(err, KafkaError) and (err.fatal() or err.code() in _FENCED)
        if fatal:
            raise FencedError(
                f"{self.stage.name}: transactional id {self.opts.transactional_id} was fenced "
                f"({err.str() if isinstance(err, KafkaError) else exc}); another worker owns it or these "
                "partitions now. Give every worker its own --instance; this one stops without committing.")
        try:
            self._guarded("abort_transaction", 30, lambda: producer.abort_transaction(30))
        except KafkaException as abort_exc:
            log.warning("aborting the transaction failed: %s", abort_exc)
        TRANSACTIONS.labels(stage=self.stage.name, outcome="aborted").inc()
        self._rewind(firsts)
        self._renew_producer()
        delay = min(self.opts.retry_backoff_max_s, self.opts.retry_backoff_s * 2 ** (attempt - 1))
        log.warning("%s: transaction aborted (%s); the batch's %d partitions are read again in %.1fs",
                    self.stage.name, err.str() if isinstance(err, KafkaError) else exc, len(firsts), delay,
                    extra={"stage": self.stage.name})
        self.stop_event.wait(delay)

    def _retry_later(self, operation: str, exc: TransientError, firsts: dict[TP, int]) -> None:
        """A dependency is away: rewind the batch, wait (backoff), and let the loop read it again."""
        self._rewind(firsts)
        self._failures += 1
        RETRIES.labels(stage=self.stage.name, operation=operation).inc()
        delay = min(self.opts.retry_backoff_max_s, self.opts.retry_backoff_s * 2 ** (self._failures - 1))
        log.warning("%s: %s failed (%s); the batch's %d partitions are read again in %.1fs", self.stage.name,
                    operation, exc, len(firsts), delay, extra={"stage": self.stage.name})
        self.stop_event.wait(delay)

    def _rewind(self, firsts: dict[TP, int]) -> None:
        """Seek the batch's partitions back to their first offset; their state is restored before reuse."""
        consumer = self._consumer
        assert consumer is not None
        for (topic, partition), offset in firsts.items():
            if (topic, partition) not in self._assigned:
                continue
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.warning("rewinding %s[%d] failed (%s); the partition is re-read from its committed offset",
                            topic, partition, exc)
            if topic in self.stage.changelogs:
                self._restore.add((topic, partition))
        self._release(self._restore)

    def _commit_ends(self) -> None:
        """Commit end offsets past transaction markers, in an offsets-only transaction."""
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        ends = {tp: off for tp, off in self._eof.items() if tp in self._assigned}
        self._eof.clear()
        if not ends:
            return
        try:
            producer.begin_transaction()
            offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
            self._guarded("send_offsets_to_transaction", _SEND_OFFSETS_TIMEOUT_S,
                          lambda: producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(),
                                                                       _SEND_OFFSETS_TIMEOUT_S))
            self._commit(producer)
        except KafkaException as exc:
            self._after_failed_transaction(exc, {}, 1)
            return
        self._done.update(ends)
        self._committed.update(ends)

    # ---------------------------------------------------------------------------- maintenance and drain

    def _maintain(self, *, final: bool = False) -> bool:
        """Every ``maintenance_interval_s`` (or now, when ``final``): commit the dead letters the stage's
        ``maintain`` returns, until it returns none. False when a transaction failed (tried again later)."""
        now = time.monotonic()
        if not final and now < self._next_maintenance:
            return True
        self._next_maintenance = now + self.opts.maintenance_interval_s
        producer = self._producer
        assert producer is not None
        while (output := self.stage.maintain(final=final)) is not None and output.letters:
            try:
                producer.begin_transaction()
                self._produce_letters(producer, output.letters)
                self._commit(producer)
            except KafkaException as exc:
                self._after_failed_transaction(exc, {}, 1)
                return False
            self.stage.committed(output)
            self._report(output, [])
            final = False  # the first pass marked everything held as given up; the next ones page through it
        return True

    def _drained(self) -> bool:
        return self._assigned_once and all(tp in self._at_end for tp in self._assigned)

    def _finish_drain(self) -> bool:
        """Every partition is read: the stage's final dead letters, then the end offsets. True when done."""
        if not self._maintain(final=True):
            return False
        if self._eof:
            self._commit_ends()
        return not self._eof

    # ----------------------------------------------------------------------------- state and rebalance

    def _restore_pending(self) -> bool:
        """Restore the state partitions waiting for it, each state topic from its own changelog; False when a
        stop came first (what was not restored yet stays pending)."""
        for topic in sorted({t for t, _ in self._restore}):
            changelog = self.stage.changelogs.get(topic)
            partitions = sorted(p for t, p in self._restore if t == topic)
            if changelog is None:
                self._restore.difference_update((topic, p) for p in partitions)
                continue
            while True:
                try:
                    state = read_partitions(self.opts.kafka, changelog, partitions, extra=self.opts.client_config)
                    break
                except ChangelogError as exc:
                    log.warning("restoring state failed (%s); retrying", exc, extra={"stage": self.stage.name})
                    if self.stop_event.wait(self.opts.retry_backoff_s):
                        return False
            for p in partitions:
                self.stage.restore(topic, p, state[p])
                STATE_RESTORES.labels(stage=self.stage.name).inc()
                self._restore.discard((topic, p))
        return True

    def _release(self, partitions: set[TP] | list[TP]) -> None:
        """Tell the stage to forget the state of ``partitions`` (state topic, partition), per state topic."""
        for topic in sorted({t for t, _ in partitions}):
            self.stage.release(topic, sorted(p for t, p in partitions if t == topic))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned_once = True
        kept, self._kept = self._kept, {}
        state = [tp for tp in partitions if tp.topic in self.stage.changelogs]
        committed = self._committed_offsets(consumer, state) if state else {}
        reused, stale = 0, []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assigned.add(key)
            if tp.topic not in self.stage.changelogs:
                continue
            offset = committed.get(key)
            if offset is not None:
                self._base[key] = offset
            if key in kept:
                if kept.pop(key) == offset:
                    reused += 1  # back with nothing committed on it since we had it: its state is current
                    continue
                stale.append(key)  # another member committed on it meanwhile (or unknown): read it again
            self._restore.add(key)
        # Kept state that did not come back (what is left in ``kept``), or that is stale, goes.
        self._release([*kept, *stale])
        log.info("assigned %d partitions (now %d)%s", len(partitions), len(self._assigned),
                 f"; kept the state of {reused}" if reused else "", extra={"stage": self.stage.name})

    def _committed_offsets(self, consumer: Consumer, partitions: list[TopicPartition]) -> dict[TP, int]:
        """The group's committed offset of ``partitions`` (-1001: none); {} when the broker does not answer."""
        try:
            found = consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=10)
        except KafkaException as exc:
            log.debug("committed offsets not readable on assignment: %s", exc)
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.error is None}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No transaction is open here: every batch was committed before this consume() call.
        self._unpause(consumer, partitions)
        if self._eager:
            self._keep(partitions)
        self._forget(partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._unpause(consumer, partitions)
        self._forget(partitions, "lost")

    def _keep(self, partitions: list[TopicPartition]) -> None:
        """Note the revoked state partitions whose state is whole (not waiting for a restore) and whose last
        committed offset is known, with that offset: their state is kept until the assignment that follows."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if tp.topic not in self.stage.changelogs or key in self._restore:
                continue
            offset = self._done.get(key, self._base.get(key))
            if offset is not None:
                self._kept[key] = offset

    def _unpause(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Resume the partitions that go and were paused (first topics): librdkafka keeps a partition's pause
        across its revocation, so one assigned again later would stay paused for good."""
        paused = [tp for tp in partitions if (tp.topic, tp.partition) in self._paused]
        if paused:
            try:
                consumer.resume(paused)
            except KafkaException as exc:
                log.debug("resuming revoked partitions failed: %s", exc)

    def _forget(self, partitions: list[TopicPartition], why: str) -> None:
        state_partitions: list[TP] = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assigned.discard(key)
            self._paused.discard(key)
            self._done.pop(key, None)
            self._eof.pop(key, None)
            self._at_end.discard(key)
            self._reached.pop(key, None)
            self._base.pop(key, None)
            if tp.topic in self.stage.changelogs:
                if key not in self._kept:
                    state_partitions.append(key)
                self._restore.discard(key)
            forget_lag(self.stage.name, tp.topic, tp.partition)
        self._release(state_partitions)
        log.info("%s %d partitions (now %d)", why, len(partitions), len(self._assigned),
                 extra={"stage": self.stage.name})

    # ------------------------------------------------------------------------------------ telemetry

    def _report(self, output: StageOutput, undecodable: list[tuple[Message, str]]) -> None:
        for (stage, entity, outcome), n in output.counts.items():
            RECORDS.labels(stage=stage, entity=entity, outcome=outcome).inc(n)
        for (entity, decision), n in output.decisions.items():
            DEDUPE_DECISIONS.labels(entity=entity, decision=decision).inc(n)
        if undecodable:
            RECORDS.labels(stage=self.stage.name, entity="unknown", outcome="in").inc(len(undecodable))
            RECORDS.labels(stage=self.stage.name, entity="unknown", outcome="rejected").inc(len(undecodable))

    def _lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag or self._consumer is None:
            return
        self._next_lag = now + self.opts.lag_interval_s
        update_lag(self._consumer, self.stage.name, self._assigned)

    def _refusal(self, exc: Exception) -> ConfigError | None:
        """A clear error naming the setting when Kafka refused this stage's principal (authentication, TLS, an
        ACL: e.g. TRANSACTIONAL_ID_AUTHORIZATION_FAILED from init_transactions), which retrying cannot fix."""
        if not isinstance(exc, KafkaException) or not isinstance(self.opts.kafka, KafkaConnection):
            return None
        err = exc.args[0] if exc.args else exc
        return self.opts.kafka.explain(err if isinstance(err, KafkaError) else str(err))

    def _retrying(self, what: str, fn: Any, operation: str | None = None) -> bool:
        """Call ``fn`` until it succeeds (True), with backoff; False when a stop came first."""
        attempt = 0
        while not self.stop_event.is_set():
            try:
                fn()
                return True
            except (KafkaException, TransientError) as exc:
                refusal = self._refusal(exc)
                if refusal is not None:  # credentials, TLS or ACLs: only a person can fix it
                    raise refusal from None
                if operation:
                    RETRIES.labels(stage=self.stage.name, operation=operation).inc()
                attempt += 1
                delay = min(self.opts.retry_backoff_max_s, self.opts.retry_backoff_s * 2 ** attempt)
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay, extra={"stage": self.stage.name})
                self.stop_event.wait(delay)
        return False


# Healthy, this takes milliseconds; a broker away fails it within the timeout (abort, rewind, retry), and a
# librdkafka stall past it ends the process (see crmflow.runtime.watchdog) after a short grace.
_SEND_OFFSETS_TIMEOUT_S = 10

# The longest the other topics' turn lasts (after first_hold_max_s of pause) when they bring nothing: a fetch
# of the resumed partitions may wait behind one in flight (fetch.wait.max.ms, 500 ms).
_TURN_S = 1.5
# Asking the broker for a paused partition's high watermark before the others' turn.
_WATERMARK_TIMEOUT_S = 2.0

_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}

