"""The PostgreSQL target CRM: batched, idempotent upserts into the ``crm`` schema.

Per batch, in ONE transaction:

1. for each entity, parents first: ``COPY`` the records (binary) into a temporary staging table, then
   one ``INSERT … SELECT … ON CONFLICT (external_id) DO UPDATE … WHERE <row changed>`` that also upserts
   ``crm.xref``; children get ``account_id`` through the ``crm.xref`` entry of their ``customer_id``
   (entity ``account``), and those whose account is not there yet are parked in ``crm.parked`` by the
   same statement;
2. parked children whose account now exists (an account xref entry for their ``customer_id``) are staged
   from ``crm.parked`` and written the same way;
3. one ``crm.migration_audit`` row per entity.

Golden records (dedupe on: accounts carry a ``golden_id``): ``crm.accounts`` holds one row per golden id
(``external_id`` = golden id, the values of the latest record of the cluster in the batch), and every
staged account record upserts its xref entry ``(account, source, customer_id)`` → that row, with its
match evidence; children find that row through the xref entry of their parent's source id and take its
golden id when they have none of their own. A record listing ``merged_golden_ids`` merged those clusters
into its own: before staging, :func:`~sinks.postgres.golden.plan_goldens` resolves every golden id of the
batch to its final survivor (following the batch's merges and those already in ``crm.golden_merges``, so
a chain A→S→R lands on R, and a record re-delivered after its cluster was absorbed only confirms its
xref entry: it neither re-creates the absorbed row nor writes its stale values); after the account
upsert one statement re-points the absorbed rows' contacts, sales, cases and xref entries to the
survivor's row, deletes the absorbed rows and logs each merge in ``crm.golden_merges``. Accounts without a
golden id (dedupe off) are written exactly as before: one row per ``customer_id``.

Golden contacts (contact dedupe: contacts carry a ``contact_golden_id``) go through the same plan:
``crm.contacts`` holds one row per golden contact id, on the account of the golden record's parent, every
source contact with an account upserts its xref entry to that row (with its evidence), one without is parked
on its own, and absorbed golden contacts are merged into their survivor's row (when the survivor has no row
yet, the absorbed row is renamed to it). Parked golden contacts staged again later follow the merges made
meanwhile (:attr:`~sinks.postgres.tables.EntityTable.restage_absorbed_sql`).

Several sinks may write into one target at once (``crmflow migrate --sink-workers``, members of one consumer
group): every batch first takes a transaction-level advisory lock of the schema, shared, so batches of
different members run side by side; a batch that merges golden records or deletes rows takes it exclusively,
so no other member can, meanwhile, attach a child to a row it re-points or removes (which would otherwise fail
the removal on the child's foreign key, or leave the child on a row that is gone). The lock is taken before
any row lock, so it cannot deadlock with them.

Re-delivering records changes nothing: the upsert skips rows whose values are equal, so ``updated_at``
stays, and a merge already applied finds no absorbed row left to move. When a whole-entity statement fails
on a record the database refuses (check constraint, value it cannot store), the sink retries that
entity's rows in halves under savepoints until the offending records are isolated; they come back as
rejects and the rest of the batch lands.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg.rows import TupleRow

from crmflow.connections import PostgresConnection, as_postgres
from crmflow.entities import GOLDEN_ID_FIELDS
from crmflow.entities import id_field as id_field_of
from sinks.base import BatchResult, HeldDeadLetter, Reject, Sink, SinkRecord
from sinks.exceptions import SinkTransientError
from sinks.postgres.golden import GoldenPlan, golden_ids, plan_goldens
from sinks.postgres.migrate import TEMPLATE_SCHEMA, apply_migrations, in_schema
from sinks.postgres.refusals import Refusal, is_refusal, ownership_refusal, refusal
from sinks.postgres.tables import EntityTable, golden_chains_sql, merge_goldens_sql, tables_for

logger = logging.getLogger(__name__)

Cursor = psycopg.Cursor[TupleRow]


@dataclass
class _Merged:
    """What merging some staged rows did; ``refused`` maps a seq to why the database refused it."""

    records: int = 0
    inserted: int = 0
    updated: int = 0
    parked: list[int] = field(default_factory=list)
    refused: dict[int, Refusal] = field(default_factory=dict)

    @property
    def unchanged(self) -> int:
        return max(self.records - self.inserted - self.updated - len(self.parked) - len(self.refused), 0)

    def __iadd__(self, other: _Merged) -> _Merged:
        self.records += other.records
        self.inserted += other.inserted
        self.updated += other.updated
        self.parked += other.parked
        self.refused.update(other.refused)
        return self


class PostgresSink(Sink):
    """Writes mapped records into the schema ``schema`` (default ``crm``) of a PostgreSQL database.

    ``orphan_timeout_s``: how long a child may wait for its account before it is dead-lettered with
    rule ``orphan`` (at the end of a drain, every child still waiting is). ``migrate``: apply the schema
    migrations in :meth:`setup`. ``system``: the source system writing (the config's run name): rows
    are recorded as its own, and rows another system owns are refused (rule ``owned_by_other_source``);
    None writes as nobody in particular (rows owned by a system are then never changed).
    ``deletes`` (``target.deletes``): what a delete (a record with ``deleted``, change data capture) does
    to its row, ``hard`` (delete it, its children and their xref entries) or ``soft`` (set ``deleted_at``
    on it and its children).

    Changes (records with ``source_lsn``): of the records of one id in a batch, the last one wins (a delete
    drops the upserts before it); a change's ``unchanged_fields`` take the values of an earlier record of
    the same id in the batch, else the stored ones; a change older than the stored row's LSN, or than the
    id's last hard delete, changes nothing.
    """

    def __init__(
        self,
        dsn: PostgresConnection | str,
        *,
        schema: str = TEMPLATE_SCHEMA,
        system: str | None = None,
        orphan_timeout_s: float = 3600.0,
        migrate: bool = True,
        stage: str = "sink",
        resolve_chunk: int = 5000,
        dead_letter_chunk: int = 1000,
        deletes: Literal["hard", "soft"] = "hard",
    ) -> None:
        self._dsn = dsn  # as given (tests read it back)
        self._db = as_postgres(dsn, setting="the target DSN")
        self._tables = tables_for(schema)  # checks the schema name
        self._children = tuple(t for t in self._tables.values() if t.is_child)
        self.schema = schema
        self.system = system
        self._resolved = 0  # parked records written since setup
        self.orphan_timeout_s = orphan_timeout_s
        self.migrate = migrate
        self.stage = stage
        self.resolve_chunk = resolve_chunk
        self.dead_letter_chunk = dead_letter_chunk
        self._conn: psycopg.Connection[TupleRow] | None = None
        self.deletes = deletes
        self._lock_name = f"crmflow-sink:{schema}"  # the advisory lock of the schema's writers (module docs)
        self._delete_sql = {
            t.entity: in_schema(t.delete_sql(hard=deletes == "hard", children=() if t.is_child else self._children),
                                schema).encode()
            for t in self._tables.values()
        }

    # ------------------------------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        """Called once before the first write: apply migrations, connect, create the staging tables."""
        with self._guard("set up the target database"):
            if self.migrate:
                conn = self._connection()
                apply_migrations(conn, schema=self.schema)
            self._connection()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            conn = self._db.connect(autocommit=True, application_name="crmflow-sink")
            try:
                for table in self._tables.values():
                    conn.execute(table.create_stage_sql.encode())
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def parents(self) -> frozenset[str]:
        """Accounts: contacts, sales and cases are parked until their account is written."""
        return frozenset(t.entity for t in self._tables.values() if not t.is_child)

    # ------------------------------------------------------------------------------------ writing

    def write_batch(self, batch: Sequence[SinkRecord]) -> BatchResult:
        """Called by the driver on every flush: write ``batch`` in one transaction (module docstring)."""
        by_entity: dict[str, list[int]] = defaultdict(list)
        rejects: list[Reject] = []
        for index, record in enumerate(batch):
            if record.entity in self._tables:
                by_entity[record.entity].append(index)
            else:
                rejects.append(
                    Reject(
                        index,
                        "unknown_entity",
                        f"the target has no table for entity {record.entity!r} ({record.origin})",
                    )
                )
        batch, deletes = _changes(batch, by_entity)
        written = unchanged = 0
        parked: list[int] = []
        exclusive = bool(deletes) or _merges_goldens(batch, by_entity)
        with self._guard("write a batch"):
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                started = cur.execute(_LOCK_SQL[exclusive], (self._lock_name,)).fetchone()
                for entity, table in self._tables.items():
                    indexes = by_entity.get(entity)
                    if not indexes:
                        continue
                    plan = self._plan_goldens(cur, table, batch, indexes)
                    loader = self._batch_loader(table, batch, plan)
                    sql = table.merge_sql if plan.dedupe else table.plain_merge_sql
                    fill = any(batch[i].value.get("unchanged_fields") for i in indexes)
                    merged = self._merge(cur, table, indexes, loader, sql, fill)
                    if plan.merges:
                        self._merge_goldens(cur, table, plan)
                    written += merged.inserted + merged.updated
                    unchanged += merged.unchanged
                    parked += merged.parked
                    rejects += [Reject(i, r.rule, r.error, r.field) for i, r in merged.refused.items()]
                    self._audit(cur, table, [batch[i] for i in indexes], merged, started[0] if started else None)
                if by_entity.get("account"):
                    self._resolve(cur, [str(batch[i].value.get("customer_id")) for i in by_entity["account"]])
                for entity in reversed(self._tables):  # children first: a parent's delete then finds fewer
                    if deletes.get(entity):
                        ids, lsns = zip(*deletes[entity].items(), strict=True)
                        row = cur.execute(self._delete_sql[entity],
                                          {"ids": list(ids), "lsns": list(lsns), "system": self.system}).fetchone()
                        written += int(row[0]) if row else 0
        return BatchResult(rejects=rejects, parked=parked, written=written, unchanged=unchanged)

    def _batch_loader(
        self, table: EntityTable, batch: Sequence[SinkRecord], plan: GoldenPlan
    ) -> Callable[[Cursor, list[int]], None]:
        """Stages records of ``batch`` by index; ``plan`` replaces the golden id of some (their survivor)
        and marks those whose golden id an earlier batch absorbed (accounts and contacts only)."""
        copy_sql = table.copy_sql.encode()
        types = table.copy_types
        golden, stale = plan.golden, plan.stale
        golden_at = table.row_index(table.golden_field) if golden and table.golden_field else 0
        stale_at = table.row_index("_stale") if stale else 0  # only deduplicated entities have it
        child = table.is_child

        def load(cur: Cursor, indexes: list[int]) -> None:
            with cur.copy(copy_sql) as copy:
                copy.set_types(types)
                write = copy.write_row
                for i in indexes:
                    rec = batch[i]
                    row = table.row(i, rec.value)
                    if golden and i in golden:
                        row[golden_at] = golden[i]
                    if stale and i in stale:
                        row[stale_at] = True
                    if child:
                        row += [rec.topic, rec.partition, rec.offset, rec.key, rec.raw_value or b""]
                    write(row)

        return load

    def _merge(
        self,
        cur: Cursor,
        table: EntityTable,
        seqs: list[int],
        load: Callable[[Cursor, list[int]], None],
        sql: str | None = None,
        fill: bool = False,
    ) -> _Merged:
        """Stage and merge ``seqs`` (with ``sql``, default ``table.merge_sql``); on a refusal, split in
        halves under savepoints to find the culprits. ``fill``: some staged changes left fields unchanged
        (a child's are then taken from its parked version, :attr:`EntityTable.fill_from_parked_sql`)."""
        conn = cur.connection
        statement = (sql or table.merge_sql).encode()
        try:
            with conn.transaction():
                cur.execute(f"truncate {table.stage}".encode())
                load(cur, seqs)
                if fill and table.is_child:
                    cur.execute(table.fill_from_parked_sql.encode())
                row = cur.execute(statement, {"system": self.system}).fetchone()
        except psycopg.Error as exc:
            if not is_refusal(exc):
                raise
            if len(seqs) == 1:
                why = refusal(exc, table)
                logger.info(
                    "%s record refused by the database: %s",
                    table.entity,
                    why.error,
                    extra={"stage": self.stage, "entity": table.entity},
                )
                return _Merged(records=1, refused={seqs[0]: why})
            half = len(seqs) // 2
            merged = self._merge(cur, table, seqs[:half], load, sql, fill)
            merged += self._merge(cur, table, seqs[half:], load, sql, fill)
            return merged
        assert row is not None
        records, inserted, updated, parked, owned = row
        refused = {}
        for o in owned or ():
            why = ownership_refusal(table, o, self.system)
            logger.info("%s record refused: %s", table.entity, why.error,
                        extra={"stage": self.stage, "entity": table.entity})
            refused[int(o["seq"])] = why
        return _Merged(records=int(records), inserted=int(inserted), updated=int(updated), parked=list(parked),
                       refused=refused)

    # ------------------------------------------------------------------------------- golden records

    def _plan_goldens(self, cur: Cursor, table: EntityTable, batch: Sequence[SinkRecord],
                      indexes: list[int]) -> GoldenPlan:
        """Resolve the batch's golden ids of ``table``'s entity (accounts, contacts) to their final survivors
        (nothing to do with dedupe off, or for sales and cases)."""
        gf = table.golden_field
        if gf is None or not any(batch[i].value.get(gf) for i in indexes):
            return GoldenPlan()
        ids = golden_ids((batch[i].value for i in indexes), table.entity)
        chains = cur.execute(golden_chains_sql(self.schema),
                             {"ids": ids, "system": self.system, "entity": table.entity}).fetchall()
        known = {str(a): str(b) for a, b in chains}
        return plan_goldens(((i, batch[i].value) for i in indexes), known, table.entity)

    def _merge_goldens(self, cur: Cursor, table: EntityTable, plan: GoldenPlan) -> None:
        """Re-point the absorbed golden rows' children and xref entries to their survivors, drop the rows,
        log the merges (one statement; a merge already applied changes nothing)."""
        row = cur.execute(merge_goldens_sql(self.schema, table.entity),
                          {**plan.params(), "system": self.system}).fetchone()
        assert row is not None
        gone, xrefs, children, logged = (int(v) for v in row)
        if gone or logged:
            logger.info(
                "merged %d golden records into their survivors (%d logged now): re-pointed %d source "
                "records and %d children",
                gone,
                logged,
                xrefs,
                children,
                extra={"stage": self.stage, "entity": table.entity},
            )

    def _audit(self, cur: Cursor, table: EntityTable, records: list[SinkRecord], merged: _Merged, started: Any) -> None:
        first: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        for r in records:
            at, offset = (r.topic, r.partition), r.offset
            if at not in first:
                first[at] = last[at] = offset
            elif offset < first[at]:
                first[at] = offset
            elif offset > last[at]:
                last[at] = offset
        spans = {f"{t}[{p}]": {"first": o, "last": last[t, p]} for (t, p), o in first.items()}
        run_id = next((str(r.value["run_id"]) for r in records if r.value.get("run_id")), None)
        cur.execute(
            self._q(
                "insert into crm.migration_audit (run_id, stage, entity, records, inserted, updated, unchanged, "
                "parked, rejected, offsets, started_at) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "coalesce(%s, now()))"
            ),
            (
                run_id,
                self.stage,
                table.entity,
                len(records),
                merged.inserted,
                merged.updated,
                merged.unchanged,
                len(merged.parked),
                len(merged.refused),
                json.dumps(spans),
                started,
            ),
        )

    # -------------------------------------------------------------------------------------- parking

    def _resolve(self, cur: Cursor, parents: list[str] | None = None) -> int:
        """Write parked children whose account exists now, i.e. whose parent id has an account xref entry
        (of ``parents`` only, when given: the customer ids of the batch's accounts, member ids of golden
        records included; an index lookup instead of a scan of everything parked); mark those the
        database refuses as dead."""
        resolved = 0
        only = "" if parents is None else "and p.parent_external_id = any(%(parents)s) "
        while True:
            progress = 0
            rows = cur.execute(
                self._q(
                    "select p.entity, p.id, p.run_id from crm.parked p where p.dead_rule is null "
                    "and (p.system is null or p.system = %(system)s) "
                    f"{only}and exists (select 1 from crm.xref x where x.entity = 'account' "
                    "and x.source_id = p.parent_external_id) "
                    "order by p.id limit %(limit)s for update of p skip locked"
                ),
                {"parents": parents, "limit": self.resolve_chunk, "system": self.system},
            ).fetchall()
            # Per entity and run: each run's audit (and so its rollback) counts the children of that run.
            ids: dict[str, dict[str | None, list[int]]] = defaultdict(lambda: defaultdict(list))
            for entity, pid, run_id in rows:
                ids[entity][run_id].append(pid)
            for table in self._children:
                for run_id, pids in ids.get(table.entity, {}).items():
                    merged = self._resolve_some(cur, table, pids)
                    resolved += merged.records - len(merged.refused)
                    progress += merged.records
                    if merged.records:
                        self._audit_resolved(cur, table, merged, run_id)
            if len(rows) < self.resolve_chunk or not progress:
                break
        self._resolved += resolved
        if resolved:
            logger.info("wrote %d parked records whose account arrived", resolved, extra={"stage": self.stage})
        return resolved

    def _resolve_some(self, cur: Cursor, table: EntityTable, pids: list[int]) -> _Merged:
        load_sql = table.load_parked_sql.encode()
        # Golden contacts parked before their golden id was absorbed land on its survivor.
        restage = table.restage_absorbed_sql.encode() if table.golden_field else None

        def load(c: Cursor, seqs: list[int], sql: bytes = load_sql, again: bytes | None = restage) -> None:
            c.execute(sql, (seqs,))
            if again is not None:
                c.execute(again, {"system": self.system})

        merged = self._merge(cur, table, pids, load)
        for pid, why in merged.refused.items():
            cur.execute(
                self._q("update crm.parked set dead_rule = %s, dead_field = %s, dead_error = %s where id = %s"),
                (why.rule, why.field, why.error, pid),
            )
        return merged

    def _audit_resolved(self, cur: Cursor, table: EntityTable, merged: _Merged, run_id: str | None) -> None:
        cur.execute(
            self._q(
                "insert into crm.migration_audit (run_id, stage, entity, records, inserted, updated, unchanged, "
                "rejected, started_at) values (%s, %s, %s, %s, %s, %s, %s, %s, now())"
            ),
            (
                run_id,
                f"{self.stage}-resolve",
                table.entity,
                merged.records,
                merged.inserted,
                merged.updated,
                merged.unchanged,
                len(merged.refused),
            ),
        )

    def dead_letters(self, *, final: bool) -> list[HeldDeadLetter]:
        """Called periodically and at the end of a drain: resolve what can be, mark children parked longer
        than ``orphan_timeout_s`` (every one, when ``final``) as orphans, and return the dead ones."""
        with self._guard("list parked records to dead-letter"):
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(_LOCK_SQL[False], (self._lock_name,))
                self._resolve(cur)
                cur.execute(
                    self._q(
                        "update crm.parked set dead_rule = 'orphan', dead_field = 'customer_id', dead_error = "
                        "format('%%s %%s waited %%s for its parent account %%s, which did not arrive', entity, "
                        "external_id, date_trunc('second', now() - parked_at), parent_external_id) "
                        "where dead_rule is null and (system is null or system = %s) "
                        "and (%s or parked_at < now() - make_interval(secs => %s))"
                    ),
                    (self.system, final, self.orphan_timeout_s),
                )
                rows = cur.execute(
                    self._q(
                        "select id, entity, source_topic, source_partition, source_offset, raw_key, raw_value, "
                        "dead_rule, dead_error, dead_field, run_id, source_position from crm.parked "
                        "where dead_rule is not null and (system is null or system = %s) order by id limit %s"
                    ),
                    (self.system, self.dead_letter_chunk),
                ).fetchall()
        return [
            HeldDeadLetter(
                int(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5], bytes(r[6]), r[7], r[8], r[9], r[10], r[11]
            )
            for r in rows
        ]

    def ack_dead_letters(self, records: Sequence[HeldDeadLetter]) -> None:
        """Called once the dead letters are in Kafka: forget them."""
        with self._guard("forget dead-lettered parked records"):
            self._connection().execute(
                self._q("delete from crm.parked where id = any(%s) and dead_rule is not null"),
                ([r.handle for r in records],),
            )

    def held(self) -> Mapping[str, int]:
        with self._guard("count parked records"):
            rows = (
                self._connection()
                .execute(
                    self._q(
                        "select entity, count(*) from crm.parked where dead_rule is null "
                        "and (system is null or system = %s) group by entity"
                    ),
                    (self.system,),
                )
                .fetchall()
            )
        counts = {t.entity: 0 for t in self._children}
        counts.update({str(e): int(n) for e, n in rows})
        return counts

    def resolved(self) -> int:
        return self._resolved

    def _q(self, sql: str) -> bytes:
        """``sql``, written for the schema ``crm``, in this sink's schema."""
        return in_schema(sql, self.schema).encode()

    # -------------------------------------------------------------------------------------- errors

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn connection-level failures into :class:`SinkTransientError` (dropping a broken connection)."""
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if is_refusal(exc):
                raise
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self.close()
            raise SinkTransientError(
                f"could not {what}: {type(exc).__name__} (SQLSTATE {exc.sqlstate or 'none'}); "
                "the transaction was rolled back"
            ) from exc


# The first statement of a batch's transaction: its start time, once the schema's writer lock is held (shared,
# or exclusive for a batch that merges golden records or deletes rows; see the module docs).
_LOCK_SQL = {
    False: b"select clock_timestamp(), pg_advisory_xact_lock_shared(hashtext(%s))",
    True: b"select clock_timestamp(), pg_advisory_xact_lock(hashtext(%s))",
}


def _merges_goldens(batch: Sequence[SinkRecord], by_entity: Mapping[str, list[int]]) -> bool:
    """Whether a record of the batch merges golden records (lists absorbed golden ids)."""
    for entity, (_, merged, _) in GOLDEN_ID_FIELDS.items():
        if any(batch[i].value.get(merged) for i in by_entity.get(entity, ())):
            return True
    return False


def _changes(
    batch: Sequence[SinkRecord], by_entity: dict[str, list[int]]
) -> tuple[list[SinkRecord], dict[str, dict[str, int | None]]]:
    """The batch's changes in order, per entity and id: a change older (lower LSN) than one before it of the
    same id is dropped (a replay in the same batch); the deletes whose id's last record is a delete (id →
    LSN; their upserts are dropped from ``by_entity``); and the records whose ``unchanged_fields`` an earlier
    record of the same id in the batch fills (those fields taken from it)."""
    out = list(batch)
    deletes: dict[str, dict[str, int | None]] = {}
    for entity, indexes in by_entity.items():
        if all(out[i].value.get("source_lsn") is None for i in indexes):
            continue
        id_field = id_field_of(entity)
        last: dict[str, int] = {}
        kept: list[int] = []
        for i in indexes:
            value = out[i].value
            key = str(value.get(id_field))
            prev = last.get(key)
            if prev is not None and _older(value, out[prev].value):
                continue
            fill = value.get("unchanged_fields")
            if fill and prev is not None and not out[prev].value.get("deleted"):
                earlier = out[prev].value
                still = [f for f in fill if f in (earlier.get("unchanged_fields") or ())]
                value = {**value, **{f: earlier.get(f) for f in fill}, "unchanged_fields": still}
                out[i] = out[i]._replace(value=value)
            last[key] = i
            kept.append(i)
        gone = {k: i for k, i in last.items() if out[i].value.get("deleted")}
        if gone:
            deletes[entity] = {k: out[i].value.get("source_lsn") for k, i in gone.items()}
        by_entity[entity] = [i for i in kept if str(out[i].value.get(id_field)) not in gone]
    return out, deletes


def _older(value: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    lsn, before = value.get("source_lsn"), than.get("source_lsn")
    return lsn is not None and before is not None and int(lsn) < int(before)
