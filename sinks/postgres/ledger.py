"""The dead-letter ledger in the target database: ``<schema>.dead_letters`` (migration 0005).

The stages write dead letters to the topic only (durable before they commit, one write path whatever the
engine). The ledger is the topic's de-duplicated view, kept by whoever reads it
(:mod:`crmflow.pipeline.letters`): each letter of the topic is recorded under its **letter id**,
``sha256(dlq topic, entity, origin, rule, digest)``, where ``origin`` is the record's source position
(``customers.csv:7``), else ``topic[partition]@offset``, and ``digest`` an HMAC of the payload's stable
content. A re-run of the same data appends a second copy of each letter to the topic; here it only adds
its run id to the row (``run_ids``) and counts the copy (``copies``). So listing and counting see one letter
per rejected source record and rule, after any number of re-runs.

Status: ``open`` (visible), ``resolved`` (a replay landed it), ``superseded`` (a replay failed again with
another rule: the new row, with ``attempt`` + 1 and ``replay_of`` naming this one, is the visible one). A
letter that fails again with the same rule stays the same row, open, with ``attempt`` + 1. A copy seen in a
later run never reopens a resolved or superseded row: the source record it stands for has been dealt with.

``dead_letter_offsets`` holds the next topic offset to read per partition; rows and offsets are written in
one transaction under an advisory lock per topic (:meth:`Ledger.syncing`), so concurrent readers neither
lose nor double-count a letter.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import TupleRow

from sinks.postgres.migrate import check_schema, in_schema

Status = Literal["open", "resolved", "superseded"]
STATUSES: tuple[Status, ...] = ("open", "resolved", "superseded")
_LOCK_NAMESPACE = "crmflow-dead-letters:"


def letter_id(dlq_topic: str, entity: str | None, origin: str, rule: str, digest: str) -> str:
    """The ledger key of a letter (hex sha256): equal for every copy of one rejection of one source record."""
    parts = (dlq_topic, entity or "", origin, rule, digest)
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """One letter read from the topic, ready to be recorded. ``payload``/``payload_key`` are the topic's
    Fernet tokens (never clear text)."""

    dlq_topic: str
    entity: str | None
    origin: str
    rule: str
    digest: str
    stage: str
    field: str | None
    error: str
    attempt: int
    run_id: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    source_position: str | None
    key_id: str
    payload: bytes = dataclasses.field(repr=False)
    payload_key: bytes | None = dataclasses.field(repr=False)
    dlq_partition: int
    dlq_offset: int
    failed_at: datetime

    @property
    def letter_id(self) -> str:
        return letter_id(self.dlq_topic, self.entity, self.origin, self.rule, self.digest)


@dataclass(frozen=True)
class LedgerRow:
    """A row of the ledger, as ``dlq list`` and ``dlq replay`` see it."""

    letter_id: str
    status: Status
    attempt: int
    copies: int
    run_ids: list[str]
    entity: str | None
    origin: str
    rule: str
    stage: str
    field: str | None
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_position: str | None
    key_id: str
    payload: bytes = dataclasses.field(repr=False)
    payload_key: bytes | None = dataclasses.field(repr=False)
    replay_of: str | None
    resolution: str | None
    first_failed_at: datetime
    last_failed_at: datetime

    @property
    def short_id(self) -> str:
        return self.letter_id[:12]

    def to_json(self) -> dict[str, Any]:
        """Everything but the payload, JSON-ready."""
        return {
            "id": self.letter_id, "status": self.status, "attempt": self.attempt, "copies": self.copies,
            "run_ids": self.run_ids, "stage": self.stage, "rule": self.rule, "field": self.field,
            "entity": self.entity, "origin": self.origin, "error": self.error, "source_topic": self.source_topic,
            "source_partition": self.source_partition, "source_offset": self.source_offset,
            "source_position": self.source_position, "replay_of": self.replay_of, "resolution": self.resolution,
            "first_failed_at": self.first_failed_at.isoformat(), "last_failed_at": self.last_failed_at.isoformat(),
        }  # fmt: skip


_COLUMNS = (
    "letter_id, status, attempt, copies, run_ids, entity, origin, rule, stage, field, error, source_topic, "
    "source_partition, source_offset, source_position, key_id, payload, payload_key, replay_of, resolution, "
    "first_failed_at, last_failed_at"
)

# A copy of a known letter adds its run and counts; ``retry`` (a replayed record failed again) also makes
# the row the open one again with the attempt the replay gives it.
_UPSERT = """
insert into crm.dead_letters as d (
    letter_id, dlq_topic, entity, origin, rule, digest, stage, field, error, attempt, run_ids, source_topic,
    source_partition, source_offset, source_position, key_id, payload, payload_key, dlq_partition, dlq_offset,
    replay_of, first_failed_at, last_failed_at)
values (
    %(letter_id)s, %(dlq_topic)s, %(entity)s, %(origin)s, %(rule)s, %(digest)s, %(stage)s, %(field)s, %(error)s,
    %(attempt)s, array_remove(array[%(run_id)s::text], null), %(source_topic)s, %(source_partition)s,
    %(source_offset)s, %(source_position)s, %(key_id)s, %(payload)s, %(payload_key)s, %(dlq_partition)s,
    %(dlq_offset)s, %(replay_of)s, %(failed_at)s, %(failed_at)s)
on conflict (letter_id) do update set
    copies = d.copies + 1,
    run_ids = case when excluded.run_ids <@ d.run_ids then d.run_ids else d.run_ids || excluded.run_ids end,
    stage = excluded.stage, field = excluded.field, error = excluded.error,
    source_topic = excluded.source_topic, source_partition = excluded.source_partition,
    source_offset = excluded.source_offset, key_id = excluded.key_id, payload = excluded.payload,
    payload_key = excluded.payload_key, dlq_partition = excluded.dlq_partition, dlq_offset = excluded.dlq_offset,
    last_failed_at = greatest(d.last_failed_at, excluded.last_failed_at),
    attempt = case when %(retry)s then excluded.attempt else d.attempt end,
    status = case when %(retry)s then 'open' else d.status end,
    resolved_at = case when %(retry)s then null else d.resolved_at end,
    resolution = case when %(retry)s then null else d.resolution end,
    replay_of = case when %(retry)s and excluded.replay_of is not null then excluded.replay_of else d.replay_of end
"""


class Ledger:
    """The ledger of one schema, on a connection the caller owns (the caller commits)."""

    def __init__(self, conn: psycopg.Connection[TupleRow], schema: str) -> None:
        self.conn = conn
        self.schema = check_schema(schema)

    def _sql(self, sql: str) -> bytes:
        return in_schema(sql, self.schema).encode()

    @contextmanager
    def syncing(self, dlq_topic: str) -> Iterator[dict[int, int]]:
        """A transaction holding the topic's sync lock; yields the next offset to read per partition (update
        it in place: it is saved with the rows when the block ends without an error)."""
        with self.conn.transaction():
            lock = f"{_LOCK_NAMESPACE}{self.schema}:{dlq_topic}"
            self.conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (lock,))
            rows = self.conn.execute(
                self._sql("select partition, next_offset from crm.dead_letter_offsets where dlq_topic = %s"),
                (dlq_topic,),
            ).fetchall()
            offsets = {int(p): int(o) for p, o in rows}
            yield offsets
            with self.conn.cursor() as cur:
                cur.executemany(
                    self._sql(
                        "insert into crm.dead_letter_offsets (dlq_topic, partition, next_offset) values (%s, %s, %s) "
                        "on conflict (dlq_topic, partition) do update set next_offset = excluded.next_offset"
                    ),
                    [(dlq_topic, p, o) for p, o in sorted(offsets.items())],
                )

    def record(self, entry: LedgerEntry, *, attempt: int | None = None, replay_of: str | None = None) -> str:
        """Record one letter of the topic; returns its letter id. ``attempt`` (with ``replay_of`` when the
        replayed row was another one) marks a replayed record that failed again."""
        self.conn.execute(self._sql(_UPSERT), _params(entry, attempt, replay_of))
        return entry.letter_id

    def record_many(self, entries: Sequence[LedgerEntry]) -> None:
        """:meth:`record` for each of ``entries``, in order, in one pipelined round trip (``executemany``)."""
        if entries:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(_UPSERT), [_params(e, None, None) for e in entries])

    def resolve(self, lid: str, resolution: str) -> None:
        self.conn.execute(
            self._sql("update crm.dead_letters set status = 'resolved', resolved_at = now(), resolution = %s "
                      "where letter_id = %s"),
            (resolution, lid),
        )

    def supersede(self, lid: str, by: str) -> None:
        self.conn.execute(
            self._sql("update crm.dead_letters set status = 'superseded', resolved_at = now(), resolution = %s "
                      "where letter_id = %s and letter_id <> %s"),
            (f"failed again as {by[:12]}", lid, by),
        )

    def select(
        self,
        dlq_topic: str,
        *,
        statuses: Sequence[Status] = ("open",),
        run_id: str | None = None,
        stage: str | None = None,
        rule: str | None = None,
        ids: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[LedgerRow]:
        """Rows of ``dlq_topic`` in ``statuses``, oldest first; ``ids`` are letter ids or their prefixes."""
        where, params = self._where(dlq_topic, statuses, run_id, stage, rule, ids)
        sql = f"select {_COLUMNS} from crm.dead_letters where {where} order by first_failed_at, letter_id"
        if limit is not None:
            sql += " limit %(limit)s"
            params["limit"] = limit
        return [LedgerRow(*r) for r in self.conn.execute(self._sql(sql), params).fetchall()]

    def counts(
        self,
        dlq_topic: str,
        *,
        statuses: Sequence[Status] = ("open",),
        run_id: str | None = None,
        stage: str | None = None,
        rule: str | None = None,
    ) -> Counter[tuple[str, str, str]]:
        """(status, stage, rule) -> letters, over everything the filters select."""
        where, params = self._where(dlq_topic, statuses, run_id, stage, rule, ())
        rows = self.conn.execute(
            self._sql(f"select status, stage, rule, count(*) from crm.dead_letters where {where} "
                      "group by status, stage, rule"), params).fetchall()  # fmt: skip
        return Counter({(s, st, r): int(n) for s, st, r, n in rows})

    @staticmethod
    def _where(
        dlq_topic: str, statuses: Sequence[Status], run_id: str | None, stage: str | None, rule: str | None,
        ids: Sequence[str],
    ) -> tuple[str, dict[str, Any]]:  # fmt: skip
        clauses = ["dlq_topic = %(topic)s", "status = any(%(statuses)s)"]
        params: dict[str, Any] = {"topic": dlq_topic, "statuses": list(statuses)}
        for name, value, clause in (("run_id", run_id, "%(run_id)s = any(run_ids)"),
                                    ("stage", stage, "stage = %(stage)s"), ("rule", rule, "rule = %(rule)s")):
            if value is not None:
                clauses.append(clause)
                params[name] = value
        if ids:
            clauses.append("letter_id like any(%(ids)s)")
            params["ids"] = [i.lower() + "%" for i in ids]
        return " and ".join(clauses), params


def delivery_of(
    conn: psycopg.Connection[TupleRow], schema: str, entity: str, source: str, source_id: str
) -> str | None:
    """What the latest delivery of a source record did to the target (inserted/updated/unchanged), if any."""
    row = conn.execute(
        in_schema("select outcome from crm.deliveries where entity = %s and source = %s and source_id = %s "
                  "order by delivered_at desc limit 1", check_schema(schema)).encode(),
        (entity, source, source_id),
    ).fetchone()  # fmt: skip
    return str(row[0]) if row else None


__all__ = ["STATUSES", "Ledger", "LedgerEntry", "LedgerRow", "Status", "delivery_of", "letter_id"]


def _params(entry: LedgerEntry, attempt: int | None, replay_of: str | None) -> dict[str, Any]:
    lid = entry.letter_id
    return {
        "letter_id": lid, "dlq_topic": entry.dlq_topic, "entity": entry.entity, "origin": entry.origin,
        "rule": entry.rule, "digest": entry.digest, "stage": entry.stage, "field": entry.field,
        "error": entry.error, "attempt": attempt if attempt is not None else entry.attempt,
        "run_id": entry.run_id, "source_topic": entry.source_topic, "source_partition": entry.source_partition,
        "source_offset": entry.source_offset, "source_position": entry.source_position, "key_id": entry.key_id,
        "payload": entry.payload, "payload_key": entry.payload_key, "dlq_partition": entry.dlq_partition,
        "dlq_offset": entry.dlq_offset, "failed_at": entry.failed_at,
        "replay_of": replay_of if replay_of != lid else None, "retry": attempt is not None,
    }  # fmt: skip
