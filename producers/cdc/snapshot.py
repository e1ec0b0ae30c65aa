"""Snapshots while the stream runs: a table re-snapshotted on a signal, and an interrupted initial load resumed.

Both read the table in primary-key order, in chunks, with the watermark scheme of DBLog (Netflix, 2020) that
Debezium's incremental snapshots also use, so that a chunk's rows never overwrite a newer change:

1. write a *low* watermark into the WAL (``pg_logical_emit_message``, non-transactional, prefix
   :data:`WATERMARK`), then select the next chunk (``where key > last key order by key limit n``), then write a
   *high* watermark;
2. keep streaming. A change of the table decoded between the two watermarks is newer than (or as new as) the
   chunk's copy of its row: that key is dropped from the chunk (the change is produced as usual);
3. at the high watermark the chunk's remaining rows are produced as op ``r`` (``source.snapshot`` true), Kafka
   acknowledges them, and the table's last key is checkpointed.

The chunk's select also keeps its snapshot (``pg_current_snapshot()``). PostgreSQL writes a commit record to
the WAL before the transaction becomes visible (it waits for the WAL flush in between), so a transaction may be
decoded *before* the low watermark and still be invisible to the select: its change is then newer than the
chunk's copy too, and the key is dropped as well. Without that, the chunk's older row would follow the change
and win. A transaction can even be decoded (and its change produced) before the chunk is selected and still be
invisible to the select, when its commit waits for a synchronous standby: the stream remembers the xids it
decoded lately, and a chunk whose snapshot misses one of them is dropped and selected again a little later
(``crmflow_cdc_snapshot_chunks_deferred_total``).

Checkpoints live with the slot, in the legacy database: the publication's comment keeps the load state on its
first line and the pending snapshots as JSON on its second, ``{"schema.table": [last key as text] | null}``.
A crash repeats at most the chunk in flight (replays are allowed; gaps are not). The initial load writes the
same checkpoint every chunk, so a restart after a crash goes on from its last key with this scheme instead of
starting over: the slot still stands at the load's consistent point, so every change since is streamed too.

A signal is a logical message with prefix :data:`SIGNAL` whose content is JSON ``{"snapshot": "schema.table"}``::

    select pg_logical_emit_message(true, 'crmflow.cdc.signal', '{"snapshot": "legacy.customers"}');
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from crmflow import metrics
from producers.cdc import pgoutput as pg
from producers.cdc.events import TableEvents
from producers.cdc.initial import COMPLETE, IN_PROGRESS

__all__ = ["SIGNAL", "WATERMARK", "Chunk", "Resnapshot", "Visibility", "read_comment", "write_comment"]

log = logging.getLogger(__name__)

SIGNAL = "crmflow.cdc.signal"
WATERMARK = "crmflow.cdc.watermark"

RECENT_XIDS = 10_000  # transactions decoded lately that a chunk's select must see (see the module doc)
DEFER_S = 0.05  # a chunk dropped for a transaction not yet visible is selected again after this

Pending = dict[str, list[str] | None]  # table -> last key done (text of each key column), None: from the start


def read_comment(conn: psycopg.Connection[Any], publication: str) -> tuple[str | None, Pending | None]:
    """The load state (first line of the publication's comment) and the pending snapshots (None: no checkpoint)."""
    row = conn.execute(
        "select obj_description(oid, 'pg_publication') from pg_publication where pubname = %s", (publication,)
    ).fetchone()
    if row is None or row[0] is None:
        return None, None
    state, _, rest = str(row[0]).partition("\n")
    try:
        pending = json.loads(rest) if rest.strip() else None
    except json.JSONDecodeError:
        pending = None
    return state, pending if isinstance(pending, dict) else None


def write_comment(conn: psycopg.Connection[Any], publication: str, state: str, pending: Pending) -> None:
    text = f"{state}\n{json.dumps(pending)}"
    conn.execute(sql.SQL("comment on publication {} is {}").format(sql.Identifier(publication), sql.Literal(text)))


def chunk_query(ev: TableEvents, after: list[str] | None, size: int) -> tuple[sql.Composed, list[Any]]:
    """The next ``size`` rows of the table after key ``after``, in key order, every column as text."""
    table = ev.table
    cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in table.columns)
    # qualified: ORDER BY a bare name would sort by the output column, the key's text ('10' before '9')
    key = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in table.key)
    types = {c.name: c.type_name for c in table.columns}
    where: sql.Composable = sql.SQL("")
    params: list[Any] = []
    if after is not None:
        bound = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(types[k])) for k in table.key)
        where = sql.SQL(" where ({}) > ({})").format(key, bound)
        params = list(after)
    query = sql.SQL("select {} from {}.{} as t{} order by {} limit {}").format(
        cols, sql.Identifier(table.schema), sql.Identifier(table.name), where, key, sql.Literal(size))
    return query, params


_XID_MASK = 0xFFFFFFFF


def _precedes(a: int, b: int) -> bool:
    """``a`` is older than ``b``, as 32-bit transaction ids compare (modulo 2^32)."""
    return ((a - b) & _XID_MASK) >= 0x80000000


@dataclass(frozen=True)
class Visibility:
    """Which transactions an MVCC snapshot sees, from ``pg_current_snapshot()`` (``xmin:xmax:xip,...``)."""

    xmin: int
    xmax: int
    in_progress: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Visibility:
        xmin, xmax, xip = text.split(":")
        # pgoutput's Begin carries the 32-bit xid; the snapshot's are 64-bit (epoch in the high half)
        return cls(int(xmin) & _XID_MASK, int(xmax) & _XID_MASK,
                   frozenset(int(x) & _XID_MASK for x in xip.split(",") if x))  # fmt: skip

    def sees(self, xid: int) -> bool:
        if _precedes(xid, self.xmin):
            return True
        return _precedes(xid, self.xmax) and xid not in self.in_progress


@dataclass
class Chunk:
    """A chunk between its watermarks: rows by key, the last key read, whether the table ends with it."""

    table: str
    mark: str  # the watermarks' content: "<slot>:<n>:low" / ":high"
    rows: dict[tuple[Any, ...], tuple[pg.TupleValue, ...]] = field(default_factory=dict)
    last_key: list[str] | None = None
    last: bool = False
    open: bool = False  # the low watermark was decoded: changes of the table now win over the chunk's rows
    snapshot: Visibility | None = None  # the select's: a change it does not see wins, even before the low mark


class Resnapshot:
    """The pending snapshots of one slot (see the module doc). The stream calls :meth:`next_chunk` between
    transactions, :meth:`on_change` for each change, and :meth:`on_watermark` for each watermark message."""

    def __init__(self, *, slot: str, publication: str, catalog: Callable[[], psycopg.Connection[Any]],
                 events: Callable[[str], TableEvents | None], chunk_size: int) -> None:  # fmt: skip
        self.slot, self.publication, self.catalog, self.events = slot, publication, catalog, events
        self.chunk_size = chunk_size
        self.pending: Pending = {}
        self.state: str | None = None
        self.chunk: Chunk | None = None
        self._n = 0
        self._recent: deque[int] = deque(maxlen=RECENT_XIDS)  # xids decoded lately, oldest first
        self._recent_set: set[int] = set()
        self._retry_at = 0.0

    def decoded(self, xid: int) -> None:
        """The stream decoded (the Begin of) transaction ``xid``."""
        if xid in self._recent_set:
            return
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(xid)
        self._recent_set.add(xid)

    def load(self) -> None:
        self.state, pending = read_comment(self.catalog(), self.publication)
        self.pending = pending or {}
        if self.pending:
            log.info("cdc slot %s: snapshots to finish: %s", self.slot, ", ".join(self.pending))

    def save(self) -> None:
        write_comment(self.catalog(), self.publication, self.state or "", self.pending)

    def request(self, table: str) -> None:
        """Snapshot ``table`` (again) from its first key."""
        if self.events(table) is None:
            log.error("cdc slot %s: snapshot signal for %s ignored: not a captured table", self.slot, table)
            return
        self.pending[table] = None
        if self.chunk is not None and self.chunk.table == table:
            self.chunk = None  # its watermarks are ignored; the table starts over
        self.save()
        log.info("cdc slot %s: snapshot of %s requested", self.slot, table)

    def on_signal(self, content: bytes) -> None:
        try:
            table = json.loads(content.decode())["snapshot"]
        except (ValueError, KeyError, TypeError):
            log.error("cdc slot %s: a signal (%s) is not JSON {\"snapshot\": \"schema.table\"}; ignored", self.slot,
                      SIGNAL)  # fmt: skip
            return
        self.request(str(table))

    def next_chunk(self) -> None:
        """Between transactions: with no chunk in flight, select the next one between two watermarks."""
        if self.chunk is not None or not self.pending or time.monotonic() < self._retry_at:
            return
        table, after = next(iter(self.pending.items()))
        ev = self.events(table)
        if ev is None:  # stopped or no longer captured
            del self.pending[table]
            self.save()
            return
        self._n += 1
        chunk = Chunk(table, f"{self.slot}:{self._n}")
        conn = self.catalog()
        emit = "select pg_logical_emit_message(false, %s, %s)"
        conn.execute(emit, (WATERMARK, f"{chunk.mark}:low"))
        query, params = chunk_query(ev, after, self.chunk_size)
        with conn.transaction():  # one snapshot for the select and the visibility it is read with
            conn.execute("set transaction isolation level repeatable read")
            snapshot = conn.execute("select pg_current_snapshot()::text").fetchone()
            rows = conn.execute(query, params).fetchall()
        chunk.snapshot = Visibility.parse(str(snapshot[0])) if snapshot else None
        if chunk.snapshot is not None and not chunk.snapshot.in_progress.isdisjoint(self._recent_set):
            # a change already produced is newer than this select's rows; its transaction will be visible soon
            self._retry_at = time.monotonic() + DEFER_S
            metrics.CDC_SNAPSHOT_CHUNKS_DEFERRED.labels(table).inc()
            log.debug("cdc slot %s: chunk of %s deferred: a decoded transaction is not visible yet", self.slot, table)
            return
        conn.execute(emit, (WATERMARK, f"{chunk.mark}:high"))
        key_index = [[c.name for c in ev.table.columns].index(k) for k in ev.table.key]
        for values in rows:
            chunk.rows[tuple(ev.key(values).values())] = tuple(values)
        if rows:
            chunk.last_key = [str(rows[-1][i]) for i in key_index]
        chunk.last = len(rows) < self.chunk_size
        self.chunk = chunk

    def on_change(self, table: str, key: dict[str, Any], xid: int) -> None:
        """A change of ``table`` by transaction ``xid``: newer than the chunk's row if in the watermark window, or
        if the chunk's select did not see its transaction."""
        chunk = self.chunk
        if chunk is None or chunk.table != table:
            return
        if chunk.open or (chunk.snapshot is not None and not chunk.snapshot.sees(xid)):
            chunk.rows.pop(tuple(key.values()), None)

    def on_watermark(self, content: bytes) -> Chunk | None:
        """The chunk to produce now (at its high watermark), else None."""
        text = content.decode(errors="replace")
        if self.chunk is None or not text.startswith(f"{self.chunk.mark}:"):
            return None  # another slot's, or a chunk abandoned by a new request
        if text.endswith(":low"):
            self.chunk.open = True
            return None
        chunk, self.chunk = self.chunk, None
        return chunk

    def done(self, chunk: Chunk) -> None:
        """``chunk``'s rows are in Kafka: checkpoint its last key (or finish the table)."""
        if chunk.table not in self.pending:
            return
        if chunk.last:
            del self.pending[chunk.table]
            log.info("cdc slot %s: snapshot of %s complete", self.slot, chunk.table)
            if not self.pending and (self.state or "").startswith(IN_PROGRESS):
                self.state = f"{COMPLETE} (resumed after an interruption)"  # the initial load's last rows are in
        else:
            self.pending[chunk.table] = chunk.last_key
        self.save()
