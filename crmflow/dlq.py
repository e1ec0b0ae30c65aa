"""The dead-letter topic: every record a stage rejects lands here with its reason, encrypted, replayable.

A dead letter is a ``DeadLetter`` Avro record (``schemas/dlq/dead_letter.avsc``) whose ``payload`` is the
original message value (or the raw source bytes, for snapshot-stage rejects) encrypted with a Fernet key,
so the topic never holds personal data in clear. Headers repeat stage, rule, field and position for tools
that do not decode Avro. The key comes from ``CRMFLOW_DLQ_KEY`` (a Fernet key), or the file named by
``CRMFLOW_DLQ_KEY_FILE``; without either, a key is created once under the stack's home (0600) — fine for a
laptop, not for production, which should set one of the two.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from cryptography.fernet import Fernet, InvalidToken

from crmflow.connections import KafkaConnection, as_kafka, kafka_config
from crmflow.exceptions import ConfigError, InfrastructureError, TerminalError
from crmflow.metrics import DLQ_RECORDS, DLQ_UNREADABLE
from crmflow.serialization import AvroCodec, SerializationError, load_schema, topic_subject
from crmflow.settings import stack_settings

log = logging.getLogger(__name__)

DLQ_SCHEMA = "dlq/dead_letter"


class DlqKeyError(TerminalError):
    """The dead-letter key is missing, malformed, or not the one a payload was encrypted with."""


class DlqCipher:
    """Encrypts and decrypts dead-letter payloads; ``key_id`` names the key without revealing it."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise DlqKeyError("the dead-letter key is not a valid Fernet key (32 url-safe base64 bytes)") from exc
        self.key_id = hashlib.sha256(key).hexdigest()[:12]
        self._digest_key = hmac.new(key, b"crmflow dead-letter digest", hashlib.sha256).digest()

    @classmethod
    def from_env(cls) -> DlqCipher:
        if key := os.environ.get("CRMFLOW_DLQ_KEY"):
            return cls(key.encode())
        if key_file := os.environ.get("CRMFLOW_DLQ_KEY_FILE"):
            path = Path(key_file)
            if not path.exists():
                raise ConfigError(f"CRMFLOW_DLQ_KEY_FILE names {path}, which does not exist")
            return cls(path.read_bytes().strip())
        path = stack_settings().home / "dlq.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
            log.warning("no CRMFLOW_DLQ_KEY set: created a local dead-letter key at %s", path)
        return cls(path.read_bytes().strip())

    def digest(self, data: bytes) -> str:
        """HMAC-SHA256 of ``data`` under a key derived from the dead-letter key: equal payloads get equal
        digests, and a digest cannot be matched against guessed values without the key (a plain hash of an
        email address can)."""
        return hmac.new(self._digest_key, data, hashlib.sha256).hexdigest()

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes, key_id: str) -> bytes:
        if key_id != self.key_id:
            raise DlqKeyError(f"payload was encrypted with key {key_id}; the configured key is {self.key_id}")
        try:
            return self._fernet.decrypt(token)
        except InvalidToken as exc:
            raise DlqKeyError(f"payload does not decrypt with key {self.key_id}") from exc


@dataclass(frozen=True)
class Letter:
    """One record a stage gives up on, before it is encoded: why (stage, rule, field, a PII-free error),
    whose (entity, run, source position), where it was read (``topic``/``partition``/``offset``: empty
    topic and -1 for source lines that never were Kafka messages), and the original ``key``/``value`` in
    clear (encrypted only when encoded). ``attempt`` counts tries: 1, then one more per failed replay."""

    stage: str
    rule: str
    error: str
    value: bytes = dataclasses.field(repr=False)
    key: bytes | None = dataclasses.field(default=None, repr=False)
    field: str | None = None
    entity: str | None = None
    run_id: str | None = None
    source_position: str | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1
    attempt: int = 1

    @classmethod
    def of_message(cls, msg: Message, *, stage: str, rule: str, error: str, **details: Any) -> Letter:
        """A letter for a consumed Kafka message (its key, value and coordinates)."""
        return cls(stage=stage, rule=rule, error=error, value=msg.value() or b"", key=msg.key(),
                   topic=msg.topic() or "", partition=msg.partition() or 0, offset=msg.offset() or 0,
                   **details)  # fmt: skip

    @property
    def origin(self) -> str:
        """Where the record came from: its source position, else ``topic[partition]@offset``."""
        return self.source_position or f"{self.topic}[{self.partition}]@{self.offset}"


class DeadLetterWriter:
    """Encodes :class:`Letter` s and produces them without blocking; ``flush`` before committing the offsets
    they replace. ``send``/``send_raw``/``letter`` are the keyword forms older callers use."""

    def __init__(
        self,
        producer: Producer | None,
        registry_client: SchemaRegistryClient,
        topic: str,
        cipher: DlqCipher | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.cipher = cipher or DlqCipher.from_env()
        self.codec = AvroCodec(registry_client, topic_subject(topic), load_schema(DLQ_SCHEMA))

    def encode(self, letter: Letter) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The encoded dead letter (payload encrypted) and its headers, for callers that produce with their
        own client (the processor sends through its own producer)."""
        record = {
            "stage": letter.stage, "rule": letter.rule, "field": letter.field, "error": letter.error,
            "entity": letter.entity, "source_topic": letter.topic, "source_partition": letter.partition,
            "source_offset": letter.offset, "source_position": letter.source_position, "run_id": letter.run_id,
            "failed_at": int(time.time() * 1000), "attempt": letter.attempt,
            "payload_key": self.cipher.encrypt(letter.key) if letter.key is not None else None,
            "payload": self.cipher.encrypt(letter.value), "key_id": self.cipher.key_id,
        }
        headers = [
            ("crmflow-stage", letter.stage.encode()), ("crmflow-rule", letter.rule.encode()),
            ("crmflow-field", (letter.field or "").encode()),
            ("crmflow-position", (letter.source_position or f"{letter.topic}[{letter.partition}]@{letter.offset}"
                                  ).encode()),
            ("crmflow-attempt", str(letter.attempt).encode()),
        ]  # fmt: skip
        DLQ_RECORDS.labels(stage=letter.stage, reason=letter.rule).inc()
        return self.codec.encode(record), headers

    def write(self, letter: Letter, on_delivery: Callable[..., None] | None = None) -> None:
        """Produce ``letter`` (asynchronously: :meth:`flush` waits for Kafka's acknowledgement)."""
        if self.producer is None:
            raise TerminalError("this DeadLetterWriter has no producer; use encode() and send it yourself")
        value, headers = self.encode(letter)
        kwargs: dict[str, Any] = {"on_delivery": on_delivery} if on_delivery is not None else {}
        while True:
            try:
                self.producer.produce(self.topic, value=value, headers=list(headers), **kwargs)
                return
            except BufferError:
                self.producer.poll(0.1)

    # The keyword forms (kept for their callers; new code builds a Letter).

    def send(
        self,
        msg: Message,
        *,
        stage: str,
        rule: str,
        error: str,
        field: str | None = None,
        entity: str | None = None,
        run_id: str | None = None,
        source_position: str | None = None,
        attempt: int = 1,
    ) -> None:
        """Dead-letter a consumed Kafka message."""
        self.write(Letter.of_message(msg, stage=stage, rule=rule, error=error, field=field, entity=entity,
                                     run_id=run_id, source_position=source_position, attempt=attempt))

    def send_raw(
        self,
        value: bytes,
        *,
        key: bytes | None,
        stage: str,
        rule: str,
        error: str,
        field: str | None = None,
        entity: str | None = None,
        run_id: str | None = None,
        source_position: str | None = None,
    ) -> None:
        """Dead-letter bytes that never were a Kafka message (a malformed source line)."""
        self.write(Letter(stage=stage, rule=rule, error=error, value=value, key=key, field=field, entity=entity,
                          run_id=run_id, source_position=source_position))

    def letter(self, *, value: bytes, key: bytes | None, topic: str, partition: int, offset: int,
               stage: str, rule: str, error: str, field: str | None = None, entity: str | None = None,
               run_id: str | None = None, source_position: str | None = None, attempt: int = 1,
               ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """:meth:`encode` of the letter these keywords describe."""
        return self.encode(Letter(stage=stage, rule=rule, error=error, value=value, key=key, field=field,
                                  entity=entity, run_id=run_id, source_position=source_position, topic=topic,
                                  partition=partition, offset=offset, attempt=attempt))

    def flush(self, timeout: float = 30.0) -> None:
        if self.producer is None:
            return
        remaining = self.producer.flush(timeout)
        if remaining:
            raise TerminalError(f"{remaining} dead letters not acknowledged by Kafka within {timeout:.0f}s")


@dataclass(frozen=True)
class DeadLetter:
    """A decoded dead letter; ``partition``/``offset`` are its place in the DLQ topic."""

    partition: int
    offset: int
    record: dict[str, Any]

    @property
    def replayable(self) -> bool:
        """Only letters that came from a topic can go back to it; source-file rejects are re-read."""
        return bool(self.record["source_topic"])


#: Seconds without progress before a dead-letter read gives up (more than the writers' 20 s transaction timeout).
_STUCK_S = 30.0


def read_dead_letters(
    kafka: KafkaConnection | str, registry_client: SchemaRegistryClient, topic: str, *, timeout_s: float = 10.0,
    start: Mapping[int, int] | None = None, complete: bool = False,
) -> Iterator[DeadLetter]:
    """Every dead letter currently in ``topic``, from the beginning (or from ``start``, the next offset to
    read per partition) to the high watermark (no group). A start outside the partition's offsets (the
    topic was re-created, or retention deleted the start) reads the partition from its beginning.

    With ``complete`` (counts and the ledger), a partition not read to its end (an open transaction, a broker
    not answering) waits past the writers' transaction timeout, then raises InfrastructureError: never a silent
    partial read. Without it, the read ends after ``timeout_s`` without progress (a look at what is there)."""
    # read_committed: a letter a processor batch wrote in a transaction that was then aborted never counts.
    conn = as_kafka(kafka)
    consumer = Consumer(kafka_config(conn, {"group.id": "crmflow-dlq-reader", "enable.auto.commit": False,
                                            "auto.offset.reset": "earliest", "isolation.level": "read_committed"}))
    codec = AvroCodec(registry_client, topic_subject(topic), load_schema(DLQ_SCHEMA))
    # A partition stuck at an open transaction (a writer killed mid-transaction) is readable again once the
    # coordinator aborts it, after the writers' transaction.timeout.ms (20 s): wait for that, not less.
    stuck_s = max(timeout_s, _STUCK_S) if complete else timeout_s
    try:
        try:
            md = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            refusal = conn.explain(exc.args[0] if exc.args else exc)
            if refusal is not None:
                raise refusal from None
            raise InfrastructureError(f"Kafka at {conn.bootstrap_servers}", "no answer to a metadata request",
                                      "start it with `crmflow stack up` (see `crmflow stack status`)") from exc
        if topic not in md.topics or md.topics[topic].error is not None:
            return
        ends: dict[int, int] = {}
        assignment = []
        for p in md.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            begin = (start or {}).get(p, low)
            if not low <= begin <= high:
                begin = low
            if high > begin:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, begin))
        if not assignment:
            return
        consumer.assign(assignment)
        deadline = time.monotonic() + stuck_s
        while ends and time.monotonic() < deadline:
            # A short wait: the read ends on an empty poll (past the commit markers), one per call
            batch = consumer.consume(500, timeout=0.1)
            for msg in batch:
                if msg.error():
                    continue
                p, off = msg.partition(), msg.offset()
                assert p is not None and off is not None
                deadline = time.monotonic() + stuck_s
                if off + 1 >= ends.get(p, 0):
                    ends.pop(p, None)
                try:
                    record = codec.decode(msg.value() or b"", origin=f"{topic}[{p}]@{off}")
                except SerializationError as exc:
                    # Not a letter (written by something else, or damaged): it cannot be dead-lettered again,
                    # so it is passed over, counted and named; the message names no payload byte.
                    DLQ_UNREADABLE.labels(topic=topic).inc()
                    log.warning("passing over an unreadable message in the dead-letter topic: %s", exc)
                    continue
                yield DeadLetter(p, off, record)
            if not batch and ends:
                # A transactional writer leaves commit markers at the end of a partition: they take
                # offsets but are never delivered. The consumer's position moves past them.
                for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                    if tp.offset >= ends.get(tp.partition, 0):
                        ends.pop(tp.partition, None)
        if ends and complete:
            # Never a silent partial read: counts and the ledger built on it would be short.
            parts = ", ".join(f"{p} (up to offset {end})" for p, end in sorted(ends.items()))
            raise InfrastructureError(
                f"Kafka at {conn.bootstrap_servers}",
                f"dead-letter topic {topic}: partitions {parts} not read to their end within {stuck_s:.0f}s "
                "(an open transaction, or the broker not answering)",
                "run the command again; `crmflow stack status` shows whether Kafka answers",
            )
    finally:
        consumer.close()


def replay(
    letters: Iterator[DeadLetter], producer: Producer, cipher: DlqCipher
) -> tuple[int, int]:
    """Send each replayable letter's original message back to its source topic; returns (replayed, skipped).

    Downstream writes are idempotent, so replaying a letter twice is harmless."""
    replayed = skipped = 0
    for letter in letters:
        r = letter.record
        if not letter.replayable:
            skipped += 1
            continue
        value = cipher.decrypt(r["payload"], r["key_id"])
        key = cipher.decrypt(r["payload_key"], r["key_id"]) if r["payload_key"] is not None else None
        headers: list[tuple[str, str | bytes | None]] = [("crmflow-replay-of", f"{letter.partition}:{letter.offset}"),
                   ("crmflow-attempt", str(int(r["attempt"]) + 1))]
        while True:
            try:
                producer.produce(r["source_topic"], value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        replayed += 1
    remaining = producer.flush(30)
    if remaining:
        raise TerminalError(f"{remaining} replayed messages not acknowledged by Kafka")
    return replayed, skipped
