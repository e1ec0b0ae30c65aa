"""The CDC producer: PostgreSQL logical replication (``pgoutput``) → Avro change events in Kafka.

Lifecycle of :func:`run_cdc`:

1. check the slot and the publication (``init=True`` creates them, and only then: a missing or invalidated slot
   on a normal start is a :class:`~producers.cdc.exceptions.SlotError` naming the slot and what to do);
   ``init=True`` also loads the tables from the slot's exported snapshot (:mod:`producers.cdc.initial`);
2. read each captured table's columns from the catalog, register its key and envelope schemas (subjects
   ``<topic>-key`` / ``<topic>-value``) and create its topic;
3. stream from the slot's confirmed position: each change is produced asynchronously (librdkafka batches; no
   flush per message), a tombstone after each delete, and the LSN confirmed to PostgreSQL is the end of the last
   transaction whose every event Kafka acknowledged (:class:`~producers.cdc.positions.AckTracker`). A crash
   therefore replays at most the unacknowledged transactions, and loses none;
4. every ``feedback_interval_s`` the confirmed LSN is sent even when nothing changed; between transactions, with
   every event acknowledged, it moves to the server's WAL end (the keepalives' position), so an idle publication
   does not pin WAL (the heartbeat);
5. on ``stop_event``: flush Kafka, confirm what it acknowledged, close.

A lost legacy database (a restart, a terminated walsender, a dropped connection) ends only the replication
session: :func:`run_cdc` reconnects with exponential backoff, counts ``crmflow_cdc_reconnects_total``, checks the
slot again (missing or invalidated: :class:`~producers.cdc.exceptions.SlotError`) and resumes from its confirmed
position.

DDL while running (a Relation message with other columns) is :mod:`producers.cdc.tables`' business: a compatible
change registers a new schema version and the stream goes on; an incompatible one stops only that table (its
changes become dead letters).

Snapshots while streaming (:mod:`producers.cdc.snapshot`): a table re-snapshotted on a signal, and an initial load
interrupted by a crash finished from its checkpoint, both in watermark chunks between transactions.

Not here yet (issue 10): TRUNCATE events (logged and counted, not produced).
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg2
import psycopg2.extras
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow import metrics
from crmflow.configbase import KafkaConfig
from crmflow.connections import KafkaConnection, PostgresConnection, kafka_config
from producers.cdc import pgoutput as pg
from producers.cdc.events import Op, load_table
from producers.cdc.exceptions import CdcDeliveryError, SlotBusyError, SlotError, SourceGoneError
from producers.cdc.initial import COMPLETE, IN_PROGRESS, create_slot_exporting, read_tables
from producers.cdc.positions import AckTracker
from producers.cdc.snapshot import SIGNAL, WATERMARK, Chunk, Resnapshot, read_comment, write_comment
from producers.cdc.tables import CapturedTables
from producers.config import CdcConfig
from producers.kafka import DEFAULT_PRODUCER_CONFIG

__all__ = ["CdcStats", "run_cdc", "slot_state"]

log = logging.getLogger(__name__)

# Text output of dates and timestamps the converters of producers.cdc.events expect.
SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3"


@dataclass
class CdcStats:
    events: dict[str, int] = field(default_factory=dict)  # "table op" -> count
    transactions: int = 0
    loaded: int = 0  # rows of the initial load (op r)
    confirmed_lsn: int = 0
    reconnects: int = 0
    stopped: bool = False


def slot_state(conn: psycopg.Connection[Any], slot: str) -> dict[str, Any] | None:
    """The slot's row of ``pg_replication_slots`` (plugin, database, wal_status, LSNs as ints), or None."""
    row = conn.execute(
        "select plugin, database, wal_status, active_pid, confirmed_flush_lsn::text, restart_lsn::text, "
        "pg_current_wal_lsn()::text from pg_replication_slots where slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    lsn = [pg.parse_lsn(v) if v else None for v in row[4:7]]
    return {"plugin": row[0], "database": row[1], "wal_status": row[2], "active_pid": row[3],
            "confirmed_flush_lsn": lsn[0], "restart_lsn": lsn[1], "current_lsn": lsn[2]}  # fmt: skip


def _missing_slot(conn: psycopg.Connection[Any], cfg: CdcConfig, database: str) -> str:
    """What to do about a slot that is not there: a first start, a dropped slot, or a failover to a copy.

    PostgreSQL before 17 never copies a logical slot to a physical standby, so a promoted copy has none: the
    changes between the old slot's position and the failover cannot be streamed from anywhere any more."""
    timeline = int(str(conn.execute("select pg_walfile_name(pg_current_wal_lsn())").fetchone()[0])[:8], 16)  # type: ignore[index]
    promoted = f" (timeline {timeline}: this server was promoted from a standby)" if timeline > 1 else ""
    return (f"replication slot {cfg.slot} does not exist in database {database} at "
            f"{conn.info.host}:{conn.info.port}{promoted}. If this is the first start, run `crmflow cdc --init` (it "
            f"creates the slot and publication {cfg.publication}). If the slot was dropped, or this is a copy "
            "promoted after a failover (PostgreSQL before 17 does not copy logical slots to standbys), the changes "
            "since the old slot's position cannot be streamed: re-create the slot with a fresh initial load "
            "(`crmflow cdc --init`, which re-sends every row as op r), and, so that the next failover keeps the slot, "
            "use PostgreSQL 17's failover slots (a slot with failover = true, sync_replication_slots = on on the "
            "standby)")


def _prepare_slot(conn: psycopg.Connection[Any], cfg: CdcConfig, database: str, *, init: bool) -> None:
    if conn.execute("select pg_is_in_recovery()").fetchone() == (True,):
        raise SlotError(f"database {database} at {conn.info.host}:{conn.info.port} is a standby (in recovery): "
                        f"crmflow cdc streams from the primary; point {cfg.dsn_env} at the primary (after a failover: "
                        "at the promoted copy, e.g. a host list with target_session_attrs=read-write)")
    state = slot_state(conn, cfg.slot)
    has_pub = conn.execute("select 1 from pg_publication where pubname = %s", (cfg.publication,)).fetchone()
    if init:
        if state is not None:
            raise SlotError(f"replication slot {cfg.slot} already exists; to resume from it run `crmflow cdc` without "
                            f"--init, or drop it (select pg_drop_replication_slot('{cfg.slot}')) to start over")
        if not has_pub:
            conn.execute(f"create publication {cfg.publication} for table {', '.join(cfg.tables)}")
        # until the initial load is in Kafka (the slot comes next); the tables still to load, checkpointed as it goes
        write_comment(conn, cfg.publication, IN_PROGRESS, dict.fromkeys(cfg.tables))
        return
    if state is None:
        raise SlotError(_missing_slot(conn, cfg, database))
    if state["wal_status"] == "lost":
        raise SlotError(
            f"replication slot {cfg.slot} is invalidated (wal_status=lost: PostgreSQL removed WAL it still needed, "
            "max_slot_wal_keep_size); changes are lost: drop the slot, run `crmflow cdc --init` and re-load the tables"
        )
    if state["plugin"] != "pgoutput" or state["database"] != database:
        raise SlotError(f"replication slot {cfg.slot} uses plugin {state['plugin']} on database {state['database']}, "
                        f"not pgoutput on {database}; name another slot under cdc.slot")
    if state["active_pid"] is not None:
        raise SlotBusyError(f"replication slot {cfg.slot} is in use by backend pid {state['active_pid']} "
                            "(another crmflow cdc?); stop it first")
    if not has_pub:
        raise SlotError(f"publication {cfg.publication} does not exist in database {database}; "
                        "create it for the cdc.tables or run --init with a new slot")
    load, pending = read_comment(conn, cfg.publication)
    if (load or "").startswith(IN_PROGRESS):
        if pending is None:
            raise SlotError(f"the initial load of slot {cfg.slot} was interrupted and has no checkpoint, so streaming "
                            f"on would miss rows: drop the slot (select pg_drop_replication_slot('{cfg.slot}')) and "
                            "run `crmflow cdc --init` again")  # fmt: skip
        log.warning("the initial load of slot %s was interrupted; finishing %s from its checkpoint while streaming",
                    cfg.slot, ", ".join(pending))  # fmt: skip
    published = {f"{r[0]}.{r[1]}" for r in conn.execute(
        "select schemaname, tablename from pg_publication_tables where pubname = %s", (cfg.publication,))}
    missing = [t for t in cfg.tables if t not in published]
    if missing:
        raise SlotError(f"publication {cfg.publication} does not carry {', '.join(missing)}: add them with "
                        f"`alter publication {cfg.publication} add table ...` (their rows need a load: issue 10)")


class _Stream:
    """One replication session: decodes messages, produces events, tracks acknowledgements, sends feedback."""

    def __init__(self, cfg: CdcConfig, tables: CapturedTables, producer: Producer, cursor: Any,
                 stats: CdcStats, resnap: Resnapshot) -> None:  # fmt: skip
        self.cfg, self.tables, self.resnap = cfg, tables, resnap
        self.producer, self.cursor, self.stats = producer, cursor, stats
        self.acks = AckTracker(stats.confirmed_lsn)  # a new session resumes at what the last one confirmed
        self.relations: dict[int, str | None] = {}  # relation id -> captured table name (None: not captured)
        self.txn: Any = None
        self.xid = 0
        self.commit_ms = 0
        self.commit_lsn = 0  # the open transaction's commit record (Begin's final LSN): the order of its changes
        self.last_feedback = 0.0
        self.started = False  # replication started: feedback may be sent

    # ---------------------------------------------------------------------------------------------- events

    def produce(self, table: str, op: str, key: dict[str, Any], value: dict[str, Any] | None) -> None:
        cap = self.tables[table]
        assert cap.key_codec is not None and cap.value_codec is not None  # registered, or the table is stopped
        kbytes = cap.key_codec.encode(key)
        vbytes = None if value is None else cap.value_codec.encode(value)
        callback = self.acks.sent(self.txn)
        while True:
            try:
                self.producer.produce(cap.topic, key=kbytes, value=vbytes, on_delivery=callback)
                break
            except BufferError:  # librdkafka's queue is full: serve deliveries, then retry
                self.producer.poll(0.1)
        metrics.CDC_EVENTS.labels(table, op).inc()
        self.stats.events[f"{table} {op}"] = self.stats.events.get(f"{table} {op}", 0) + 1

    def _change(self, table: str, op: Op, before: Any, after: Any, key: dict[str, Any], lsn: int) -> None:
        ev = self.tables[table].events
        self.resnap.on_change(table, key, self.xid)  # newer than a snapshot chunk's copy of the row
        envelope = ev.envelope(op, before, after, lsn=lsn, xid=self.xid, commit_ms=self.commit_ms,
                               commit_lsn=self.commit_lsn)  # fmt: skip
        self.produce(table, op, key, envelope)
        if op == "d":
            self.produce(table, "tombstone", key, None)

    def handle(self, msg: pg.Message, lsn: int) -> None:
        if isinstance(msg, pg.Begin):
            self.xid, self.commit_ms = msg.xid, int(pg.pg_time(msg.commit_ts).timestamp() * 1000)
            self.commit_lsn = msg.final_lsn
            self.txn = self.acks.begin(self.commit_ms)
            self.resnap.decoded(msg.xid)
        elif isinstance(msg, pg.Commit):
            self.acks.commit(self.txn, msg.end_lsn)
            self.txn = None
            self.stats.transactions += 1
            self.resnap.next_chunk()
        elif isinstance(msg, pg.Relation):  # before the first change of a table, and after DDL changed it
            cap = self.tables.on_relation(msg)
            self.relations[msg.relation_id] = None if cap is None else cap.name
        elif isinstance(msg, pg.Insert | pg.Update | pg.Delete):
            table = self.relations.get(msg.relation_id)
            if table is None:
                return
            cap = self.tables[table]
            if cap.stopped is not None:  # an incompatible schema change stopped this table: dead letters
                op, values = ("c", msg.new) if isinstance(msg, pg.Insert) else \
                    ("u", msg.new) if isinstance(msg, pg.Update) else ("d", msg.old)  # fmt: skip
                self.tables.dead_letter(cap, op, values, lsn=lsn, xid=self.xid, on_delivery=self.acks.sent(self.txn))
                metrics.CDC_EVENTS.labels(table, "dead_letter").inc()
                return
            ev = cap.events
            if isinstance(msg, pg.Insert):
                self._change(table, "c", None, ev.row(msg.new), ev.key(msg.new), lsn)
            elif isinstance(msg, pg.Update):
                before = ev.row(msg.old) if msg.old is not None else None
                after, key = ev.row(msg.new), ev.key(msg.new)
                if msg.old is not None and ev.key(msg.old) != key:  # the key changed: delete the old key first
                    self._change(table, "d", before, None, ev.key(msg.old), lsn)
                    self._change(table, "c", None, after, key, lsn)
                else:
                    self._change(table, "u", before, after, key, lsn)
            else:
                self._change(table, "d", ev.row(msg.old), None, ev.key(msg.old), lsn)
        elif isinstance(msg, pg.Truncate):
            names = [self.relations.get(r) for r in msg.relation_ids]
            log.warning("TRUNCATE of %s at %s is not captured (no events produced)", names, pg.format_lsn(lsn))
            for captured in names:
                if captured:
                    metrics.CDC_EVENTS.labels(captured, "truncate_skipped").inc()
        elif isinstance(msg, pg.LogicalMessage):
            if msg.prefix == SIGNAL:
                self.resnap.on_signal(msg.content)
            elif msg.prefix == WATERMARK and (chunk := self.resnap.on_watermark(msg.content)) is not None:
                self.emit_chunk(chunk, lsn)
        # Origin and Type messages carry nothing to produce.

    def emit_chunk(self, chunk: Chunk, lsn: int) -> None:
        """At a chunk's high watermark: its rows no change overtook, as op r, acknowledged, then checkpointed."""
        cap = self.tables[chunk.table]
        if cap.stopped is None:
            now_ms = int(time.time() * 1000)
            self.txn = self.acks.begin(now_ms)
            ev = cap.events
            for values in chunk.rows.values():
                self.produce(chunk.table, "r", ev.key(values),
                             ev.envelope("r", None, ev.row(values), lsn=lsn, xid=None, commit_ms=now_ms, snapshot=True))
                self.stats.loaded += 1
                self.producer.poll(0)
            self.acks.commit(self.txn, lsn)
            self.txn = None
            self.producer.flush(60)
            if self.acks.failure is not None or self.acks.confirmable() < lsn:
                raise CdcDeliveryError(f"Kafka did not acknowledge a snapshot chunk of {chunk.table} "
                                       f"({self.acks.failure or 'timed out'}); run again: it resumes at its checkpoint")
        self.resnap.done(chunk)

    # -------------------------------------------------------------------------------------------- feedback

    def feedback(self, *, force: bool = False) -> None:
        if self.acks.failure is not None:
            raise CdcDeliveryError(f"Kafka did not acknowledge an event ({self.acks.failure}); slot {self.cfg.slot} "
                                   f"stays at {pg.format_lsn(self.stats.confirmed_lsn)}: run again to resume from it")
        if self.txn is None:  # between transactions: everything the server sent so far was handled
            self.acks.advance_idle(int(self.cursor.wal_end or 0))
        confirmed = self.acks.confirmable()
        oldest = self.acks.oldest_pending_ms()
        metrics.CDC_REPLICATION_LAG_SECONDS.labels(self.cfg.slot).set(
            0.0 if oldest is None else max(0.0, time.time() - oldest / 1000))
        now = time.monotonic()
        if confirmed > self.stats.confirmed_lsn or force or now - self.last_feedback >= self.cfg.feedback_interval_s:
            # psycopg2 keeps the highest LSN it was given and sends it every status_interval too.
            self.cursor.send_feedback(flush_lsn=confirmed, write_lsn=confirmed,
                                      force=force or now - self.last_feedback >= self.cfg.feedback_interval_s)
            if confirmed > self.stats.confirmed_lsn:
                self.stats.confirmed_lsn = confirmed
                metrics.CDC_LAST_ACKED_LSN.labels(self.cfg.slot).set(confirmed)
            if force or now - self.last_feedback >= self.cfg.feedback_interval_s:
                self.last_feedback = now

    def run(self, stop: threading.Event, on_stats: Callable[[], None]) -> None:
        next_stats = 0.0
        while not stop.is_set():
            message = self.cursor.read_message()
            if message is None:
                self.producer.poll(0)
                self.feedback()
                if self.txn is None:
                    self.resnap.next_chunk()
                if time.monotonic() >= next_stats:
                    on_stats()
                    next_stats = time.monotonic() + self.cfg.stats_interval_s
                select.select([self.cursor], [], [], 0.2)
                continue
            self.handle(pg.decode(message.payload), message.data_start)
            self.producer.poll(0)
            self.feedback()
        self.stats.stopped = True


class Backoff:
    """Exponential waits between reconnects: ``initial``, doubling up to ``cap``, with ±20% jitter."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap = initial, cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2**self.attempt)
        self.attempt += 1
        return float(delay * random.uniform(0.8, 1.2))  # jitter, not a secret

    def reset(self) -> None:
        self.attempt = 0


# What a lost legacy database looks like: a restart, a terminated walsender, a refused connection, a closed socket
# (psycopg2 then says DatabaseError "no COPY in progress"). A missing slot is caught before each session, as a
# SlotError, so retrying these never hides one.
CONNECTION_LOST = (psycopg2.DatabaseError, psycopg2.InterfaceError, psycopg.OperationalError, SlotBusyError)


def _describe(exc: BaseException) -> str:
    """The error's class and first line: PostgreSQL's connection errors name no row value (no PII)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def run_cdc(
    cfg: CdcConfig,
    kafka: KafkaConfig,
    *,
    connection: KafkaConnection | str,
    registry_client: SchemaRegistryClient,
    init: bool = False,
    load: bool = True,
    stop_event: threading.Event | None = None,
    producer_config: dict[str, Any] | None = None,
) -> CdcStats:
    """Stream the ``cdc`` tables' changes into Kafka until ``stop_event`` is set (see the module doc).

    A lost legacy database (restart, terminated walsender, dropped connection) ends the replication session,
    not the run: after an exponential backoff (``reconnect_initial_s`` doubling to ``reconnect_max_s``) the slot
    is checked again and streaming resumes from its confirmed position (events past it are replayed, none lost).
    A slot that is then missing or invalidated is a :class:`SlotError`, never a new start.
    """
    stop = stop_event or threading.Event()
    dsn = PostgresConnection.from_env(cfg.dsn_env, cfg.dsn())
    try:
        conn = dsn.connect(autocommit=True, options=SESSION_OPTIONS)
    except psycopg.OperationalError as exc:
        raise SourceGoneError(f"legacy database ({cfg.dsn_env}) unreachable: {exc}") from exc
    stats = CdcStats()
    meta = {"conn": conn}  # the catalog connection, replaced after a reconnect
    with conn:
        database = str(conn.info.dbname)
        infos = [load_table(conn, t) for t in cfg.tables]
        _prepare_slot(conn, cfg, database, init=init)
        producer = Producer(kafka_config(connection, DEFAULT_PRODUCER_CONFIG, producer_config))
        tables = CapturedTables(registry_client=registry_client, kafka=kafka, connection=connection,
                                database=database, slot=cfg.slot, producer=producer, catalog=lambda: meta["conn"],
                                capture_new=cfg.capture_new_tables)  # fmt: skip
        for info in infos:
            tables.add(info)
        resnap = Resnapshot(slot=cfg.slot, publication=cfg.publication, catalog=lambda: meta["conn"],
                            events=lambda t: tables[t].events if t in tables and not tables[t].stopped else None,
                            chunk_size=cfg.snapshot_chunk_size)  # fmt: skip

        def measure() -> None:
            state = slot_state(meta["conn"], cfg.slot)
            if state and state["current_lsn"] is not None:
                if state["confirmed_flush_lsn"] is not None:
                    metrics.CDC_REPLICATION_LAG_BYTES.labels(cfg.slot).set(
                        state["current_lsn"] - state["confirmed_flush_lsn"])
                if state["restart_lsn"] is not None:
                    metrics.CDC_RETAINED_WAL_BYTES.labels(cfg.slot).set(state["current_lsn"] - state["restart_lsn"])

        backoff = Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        first = True
        streamed = threading.Event()  # replication started once: the slot (and its load) exist from here on

        def on_streaming() -> None:
            streamed.set()
            backoff.reset()
        try:
            while first or not stop.is_set():  # a stop before the first session still creates the slot (--init)
                try:
                    if not first:
                        meta["conn"].close()
                        meta["conn"] = dsn.connect(autocommit=True, options=SESSION_OPTIONS)
                        _prepare_slot(meta["conn"], cfg, database, init=False)  # SlotError stays terminal
                    session = _Stream(cfg, tables, producer, None, stats, resnap)
                    if not _session(session, meta["conn"], dsn, init=init and first, load=load, stop=stop,
                                    measure=measure, on_streaming=on_streaming):  # fmt: skip
                        break
                except CONNECTION_LOST as exc:
                    if init and not streamed.is_set():
                        raise SourceGoneError(f"replication from slot {cfg.slot} failed during --init: {exc}") from exc
                    producer.flush(30)  # the lost session's events: acknowledged or not, the slot replays them
                    delay = backoff.next()
                    metrics.CDC_RECONNECTS.labels(cfg.slot).inc()
                    stats.reconnects += 1
                    log.warning("cdc slot %s: lost the legacy database (%s); reconnecting in %.1f s (attempt %d), "
                                "resuming from the slot's confirmed position %s", cfg.slot, _describe(exc), delay,
                                backoff.attempt, pg.format_lsn(stats.confirmed_lsn))  # fmt: skip
                    stop.wait(delay)
                first = False
        finally:
            remaining = producer.flush(30)
            if remaining:
                log.warning("%d event(s) not acknowledged by Kafka at shutdown; replayed on restart", remaining)
            with contextlib.suppress(psycopg.Error):
                measure()
            meta["conn"].close()
    stats.stopped = stop.is_set() or stats.stopped
    return stats


def _session(stream: _Stream, conn: psycopg.Connection[Any], dsn: PostgresConnection, *, init: bool, load: bool,
             stop: threading.Event, measure: Callable[[], None], on_streaming: Callable[[], None]) -> bool:  # fmt: skip
    """One replication connection: (with ``init``) create the slot and load, then stream until ``stop``.

    Returns False when the run must end (stopped during the load); connection losses propagate."""
    cfg = stream.cfg
    repl = psycopg2.connect(dsn.conninfo(), connection_factory=psycopg2.extras.LogicalReplicationConnection,
                            options=SESSION_OPTIONS)  # fmt: skip
    try:
        cursor = repl.cursor()
        stream.cursor = cursor
        if init:
            consistent_lsn, snapshot = create_slot_exporting(cursor, cfg.slot)
            log.info("created slot %s at %s", cfg.slot, pg.format_lsn(consistent_lsn))
            if load and not _initial_load(stream, dsn, snapshot, consistent_lsn, stop):
                return False
            write_comment(conn, cfg.publication, f"{COMPLETE} at {pg.format_lsn(consistent_lsn)}"
                          + ("" if load else " (skipped: --no-load)"), {})  # fmt: skip
        stream.resnap.load()  # the snapshots still pending (a resumed initial load, signals before a restart)
        stream.resnap.chunk = None  # a chunk of a lost session starts over
        cursor.start_replication(
            slot_name=cfg.slot, decode=False, status_interval=max(1.0, cfg.feedback_interval_s),  # psycopg2: >= 1
            options={"proto_version": "1", "publication_names": cfg.publication, "messages": "true"},
        )  # fmt: skip
        stream.started = True
        on_streaming()
        log.info("streaming slot %s (publication %s) into %s",
                 cfg.slot, cfg.publication, ", ".join(c.topic for c in stream.tables.by_name.values()))  # fmt: skip
        stream.run(stop, measure)
        stream.producer.flush(30)
        try:
            stream.feedback(force=True)
        except (CdcDeliveryError, psycopg2.Error) as exc:
            log.warning("last feedback not sent: %s", exc)
        return False
    finally:
        repl.close()


def _initial_load(stream: _Stream, dsn: PostgresConnection, snapshot: str, consistent_lsn: int,
                  stop: threading.Event) -> bool:
    """The tables as of the slot's consistent point, every row acknowledged by Kafka; False if stopped."""
    stream.txn = stream.acks.begin(int(time.time() * 1000))

    def emit(table: str, key: dict[str, Any], envelope: dict[str, Any]) -> None:
        stream.produce(table, "r", key, envelope)
        stream.stats.loaded += 1
        stream.producer.poll(0)

    pending: dict[str, list[str] | None] = dict.fromkeys(stream.tables.events())

    def progress(table: str, last_key: list[str] | None, finished: bool) -> None:
        """Checkpoint ``table``'s last key once Kafka acknowledged every row so far (a crash resumes after it)."""
        stream.producer.flush(60)
        if stream.acks.failure is not None or stream.producer.flush(0):
            return  # not acknowledged: the checkpoint stays behind (the error is raised after the load)
        if finished:
            pending.pop(table, None)
        else:
            pending[table] = last_key
        write_comment(stream.tables.catalog(), stream.cfg.publication, IN_PROGRESS, pending)

    done = read_tables(dsn, SESSION_OPTIONS, snapshot, stream.tables.events(), emit, consistent_lsn=consistent_lsn,
                       stop=stop, progress=progress, progress_every=stream.cfg.snapshot_chunk_size)  # fmt: skip
    stream.acks.commit(stream.txn, consistent_lsn)
    stream.txn = None
    stream.producer.flush(60)
    if stream.acks.failure is not None or stream.acks.confirmable() < consistent_lsn:
        raise CdcDeliveryError(f"Kafka did not acknowledge the initial load of slot {stream.cfg.slot} "
                               f"({stream.acks.failure or 'timed out'}); drop the slot and run --init again")
    stream.stats.stopped = not done
    return done
