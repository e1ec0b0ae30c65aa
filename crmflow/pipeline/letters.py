"""Keeping the dead-letter ledger (:mod:`sinks.postgres.ledger`) in step with the dead-letter topic.

Why a ledger in the target database, filled from the topic, rather than the topic de-duplicated on each
read: the topic keeps every copy (each re-run appends its own) until retention deletes them, so reading
it costs more with every run, a replayed letter's *resolution* has to live somewhere, and retention would
take the replayable payload away. The ledger reads each letter once (it keeps the next offset per
partition), keeps one row per rejected source record and rule, its status and attempts, and the
encrypted payload; the stages keep writing to the topic only, so no engine has to know about it.

A letter's identity is its origin (source position, else ``topic[partition]@offset``), rule, entity and
the **digest** of its payload's stable content: the payload is decrypted, and when it is a Confluent-framed
Avro record (what the processor and the sink dead-letter) its volatile fields (``run_id``,
``captured_at``, ``mapped_at``) are left out, so the same source record rejected by two runs has one
digest. The digest is an HMAC under a key derived from the dead-letter key
(:meth:`crmflow.dlq.DlqCipher.digest`), never a plain hash of personal data.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka.schema_registry import SchemaRegistryClient
from psycopg.rows import TupleRow

from crmflow.config import MigrationConfig
from crmflow.connections import KafkaConnection
from crmflow.dlq import DeadLetter, DlqCipher, read_dead_letters
from crmflow.exceptions import InfrastructureError
from crmflow.metrics import RETRIES
from crmflow.pipeline.targets import Target
from crmflow.serialization import AvroDecoder, SerializationError
from crmflow.stack import Endpoints
from sinks.postgres.ledger import Ledger, LedgerEntry, LedgerRow
from sinks.postgres.migrate import apply_migrations

log = logging.getLogger(__name__)

_INSUFFICIENT_RESOURCES = "53"
"""SQLSTATE class 53: disk full, out of memory, too many connections. Waiting for it helps; nothing was written."""
#: Letters written per round trip when the ledger catches up with its topic.
_LEDGER_BATCH = 1000

VOLATILE_FIELDS = frozenset({"run_id", "captured_at", "mapped_at"})
"""Fields of a dead-lettered Avro record that differ between runs of the same source record."""


def stable_content(plain: bytes, decoder: AvroDecoder) -> bytes:
    """What the digest covers: a Confluent-framed Avro record without its volatile fields (canonical JSON),
    anything else (a raw source line) as it is."""
    if len(plain) <= 5 or plain[0] != 0:
        return plain
    try:
        record = decoder.decode(plain)
    except SerializationError:
        return plain
    stable = {k: v for k, v in record.items() if k not in VOLATILE_FIELDS}
    return json.dumps(stable, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8", "surrogateescape")


def to_entry(letter: DeadLetter, dlq_topic: str, cipher: DlqCipher, decoder: AvroDecoder) -> LedgerEntry:
    """The ledger entry of one letter read from the topic (decrypts its payload to digest it)."""
    r = letter.record
    plain = cipher.decrypt(r["payload"], r["key_id"])
    failed_at = r["failed_at"]
    if not isinstance(failed_at, datetime):
        failed_at = datetime.fromtimestamp(int(failed_at) / 1000, UTC)
    origin = r["source_position"] or f'{r["source_topic"]}[{r["source_partition"]}]@{r["source_offset"]}'
    return LedgerEntry(
        dlq_topic=dlq_topic, entity=r["entity"], origin=origin, rule=r["rule"],
        digest=cipher.digest(stable_content(plain, decoder)), stage=r["stage"], field=r["field"], error=r["error"],
        attempt=int(r["attempt"]), run_id=r["run_id"], source_topic=r["source_topic"],
        source_partition=int(r["source_partition"]), source_offset=int(r["source_offset"]),
        source_position=r["source_position"], key_id=r["key_id"], payload=r["payload"],
        payload_key=r["payload_key"], dlq_partition=letter.partition, dlq_offset=letter.offset, failed_at=failed_at,
    )  # fmt: skip


@dataclass
class RetryWatch:
    """Letters a replay re-sent, found again by what a new letter of the same record carries: its source
    position, or the topic coordinates the replay produced it at. ``failed`` collects, per replayed letter
    id, the letters it failed again as (new letter id, rule)."""

    by_position: dict[str, LedgerRow] = field(default_factory=dict)
    by_coords: dict[tuple[str, int, int], LedgerRow] = field(default_factory=dict)
    failed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def match(self, record: Mapping[str, Any]) -> LedgerRow | None:
        position = record.get("source_position")
        if position and position in self.by_position:
            return self.by_position[position]
        return self.by_coords.get((record["source_topic"], int(record["source_partition"]),
                                   int(record["source_offset"])))  # fmt: skip


@dataclass(frozen=True)
class SyncResult:
    read: int
    """Letters read from the topic in this sync (new copies included)."""


def sync_ledger(
    conn: psycopg.Connection[TupleRow],
    schema: str,
    dlq_topic: str,
    kafka: KafkaConnection | str,
    registry: SchemaRegistryClient,
    cipher: DlqCipher,
    retries: RetryWatch | None = None,
) -> SyncResult:
    """Record every letter the topic got since the last sync, in one transaction. With ``retries``, a
    letter of a record the replay re-sent is that letter failing again: its row gets the replayed
    attempt + 1, and a replayed row whose record now fails by another rule is superseded."""
    ledger = Ledger(conn, schema)
    decoder = AvroDecoder(registry)
    read = 0
    pending: list[LedgerEntry] = []  # letters of no replay, written a batch at a time (one round trip each)
    with ledger.syncing(dlq_topic) as offsets:
        for letter in read_dead_letters(kafka, registry, dlq_topic, start=dict(offsets), complete=True):
            entry = to_entry(letter, dlq_topic, cipher, decoder)
            replayed = retries.match(letter.record) if retries is not None else None
            if replayed is None:
                pending.append(entry)
                if len(pending) >= _LEDGER_BATCH:
                    ledger.record_many(pending)
                    pending.clear()
            else:
                ledger.record_many(pending)  # in topic order: an earlier letter of the same record comes first
                pending.clear()
                lid = ledger.record(entry, attempt=replayed.attempt + 1, replay_of=replayed.letter_id)
                assert retries is not None
                retries.failed.setdefault(replayed.letter_id, []).append((lid, entry.rule))
                if lid != replayed.letter_id:
                    ledger.supersede(replayed.letter_id, lid)
            offsets[letter.partition] = letter.offset + 1
            read += 1
        ledger.record_many(pending)
    if read:
        log.info("dead-letter ledger %s.dead_letters: %d letter(s) read from %s", schema, read, dlq_topic)
    return SyncResult(read)


@contextmanager
def ledger_connection(target: Target) -> Iterator[psycopg.Connection[TupleRow]]:
    """A connection to the target database, its schema migrated (the ledger's table included)."""
    try:
        apply_migrations(target.dsn, schema=target.schema)
        conn = target.dsn.connect()
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
        raise InfrastructureError(f"PostgreSQL at {target.dsn.describe()}", first,
                                  "start it with `crmflow stack up` (or check the target DSN)") from exc  # fmt: skip
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def update_ledger(cfg: MigrationConfig, ep: Endpoints, target: Target, *, max_wait_s: float = 600.0,
                  backoff_s: float = 1.0, backoff_max_s: float = 15.0) -> SyncResult:
    """Bring the config's ledger up to date with its dead-letter topic (what ``dlq list`` does first); for
    ``migrate`` to call at the end of a run, so the letters of the run are in the ledger at once.

    The ledger's database out of space (or of another resource: SQLSTATE class 53) rolls the sync back,
    offsets included, so nothing is lost: it is reported and tried again with backoff
    (``crmflow_retries_total{stage="dlq",operation="ledger"}``) until it fits, for up to ``max_wait_s``."""
    registry = ep.registry.client()
    deadline = time.monotonic() + max_wait_s
    delay = backoff_s
    while True:
        try:
            with ledger_connection(target) as conn:
                return sync_ledger(conn, target.schema, cfg.kafka.dlq_topic, ep.kafka.for_stage("ops"), registry,
                                   DlqCipher.from_env())  # fmt: skip
        except psycopg.OperationalError as exc:  # DiskFull (53100) is one, not an InsufficientResources
            if not (exc.sqlstate or "").startswith(_INSUFFICIENT_RESOURCES):
                raise
            # The first line only: it names the file or resource, never a value.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            if time.monotonic() + delay > deadline:
                raise InfrastructureError(
                    f"the dead-letter ledger {target.schema}.dead_letters in {target.dsn.describe()}",
                    f"{first} (SQLSTATE {exc.sqlstate}), for {max_wait_s:.0f}s",
                    "free space on the database's volume (or the table's tablespace), then run "
                    "`crmflow dlq list` to bring the ledger up to date: the letters wait in the topic") from exc
            RETRIES.labels(stage="dlq", operation="ledger").inc()
            log.warning("the dead-letter ledger cannot be written (%s, SQLSTATE %s); nothing was recorded, the "
                        "letters wait in %s; trying again in %.0fs", first, exc.sqlstate, cfg.kafka.dlq_topic,
                        delay)
            time.sleep(delay)
            delay = min(backoff_max_s, delay * 2)
