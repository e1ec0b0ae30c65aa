"""The dead-letter topic: every record a stage rejects lands here with its reason, encrypted, replayable.

A dead letter is a ``DeadLetter`` Avro record (``schemas/dlq/dead_letter.avsc``) whose ``payload`` is the
original message value (or the raw source bytes, for snapshot-stage rejects) encrypted with a Fernet key,
so the topic never holds personal data in clear. Headers repeat stage, rule, field and position for tools
that do not decode Avro. The key comes from ``CRMFLOW_DLQ_KEY`` (a Fernet key), or the file named by
``CRMFLOW_DLQ_KEY_FILE``; without either, a key is created once under the stack's home (0600) — fine for a
laptop, not for production, which should set one of the two.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from cryptography.fernet import Fernet, InvalidToken

from crmflow.exceptions import ConfigError, InfrastructureError, TerminalError
from crmflow.kafkalog import client_logging
from crmflow.metrics import DLQ_RECORDS
from crmflow.serialization import AvroCodec, load_schema, topic_subject
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

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes, key_id: str) -> bytes:
        if key_id != self.key_id:
            raise DlqKeyError(f"payload was encrypted with key {key_id}; the configured key is {self.key_id}")
        try:
            return self._fernet.decrypt(token)
        except InvalidToken as exc:
            raise DlqKeyError(f"payload does not decrypt with key {self.key_id}") from exc


class DeadLetterWriter:
    """Produces dead letters without blocking; ``flush`` before committing the offsets they replace."""

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
        self._produce(
            value=msg.value() or b"", key=msg.key(), topic=msg.topic() or "", partition=msg.partition() or 0,
            offset=msg.offset() or 0, stage=stage, rule=rule, error=error, field=field, entity=entity,
            run_id=run_id, source_position=source_position, attempt=attempt,
        )

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
        self._produce(
            value=value, key=key, topic="", partition=-1, offset=-1, stage=stage, rule=rule, error=error,
            field=field, entity=entity, run_id=run_id, source_position=source_position, attempt=1,
        )

    def letter(self, *, value: bytes, key: bytes | None, topic: str, partition: int, offset: int,
               stage: str, rule: str, error: str, field: str | None = None, entity: str | None = None,
               run_id: str | None = None, source_position: str | None = None, attempt: int = 1,
               ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The encoded dead letter and its headers, for callers that produce with their own client
        (the faust processor sends through faust's producer)."""
        record = {
            "stage": stage, "rule": rule, "field": field, "error": error, "entity": entity,
            "source_topic": topic, "source_partition": partition, "source_offset": offset,
            "source_position": source_position, "run_id": run_id,
            "failed_at": int(time.time() * 1000), "attempt": attempt,
            "payload_key": self.cipher.encrypt(key) if key is not None else None,
            "payload": self.cipher.encrypt(value), "key_id": self.cipher.key_id,
        }
        headers = [
            ("crmflow-stage", stage.encode()), ("crmflow-rule", rule.encode()),
            ("crmflow-field", (field or "").encode()),
            ("crmflow-position", (source_position or f"{topic}[{partition}]@{offset}").encode()),
        ]
        DLQ_RECORDS.labels(stage=stage, reason=rule).inc()
        return self.codec.encode(record), headers

    def _produce(self, **kwargs: Any) -> None:
        value, headers = self.letter(**kwargs)
        if self.producer is None:
            raise TerminalError("this DeadLetterWriter has no producer; use letter() and send it yourself")
        while True:
            try:
                self.producer.produce(self.topic, value=value, headers=list(headers))
                return
            except BufferError:
                self.producer.poll(0.1)

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


def read_dead_letters(
    bootstrap_servers: str, registry_client: SchemaRegistryClient, topic: str, *, timeout_s: float = 10.0
) -> Iterator[DeadLetter]:
    """Every dead letter currently in ``topic``, from the beginning to the high watermark (no group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "crmflow-dlq-reader",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest", **client_logging()})
    codec = AvroCodec(registry_client, topic_subject(topic), load_schema(DLQ_SCHEMA))
    try:
        try:
            md = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            raise InfrastructureError(f"Kafka at {bootstrap_servers}", "no answer to a metadata request",
                                      "start it with `crmflow stack up` (see `crmflow stack status`)") from exc
        if topic not in md.topics or md.topics[topic].error is not None:
            return
        ends: dict[int, int] = {}
        assignment = []
        for p in md.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, low))
        if not assignment:
            return
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error():
                    continue
                p, off = msg.partition(), msg.offset()
                assert p is not None and off is not None
                yield DeadLetter(p, off, codec.decode(msg.value() or b"", origin=f"{topic}[{p}]@{off}"))
                deadline = time.monotonic() + timeout_s
                if off + 1 >= ends.get(p, 0):
                    ends.pop(p, None)
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
