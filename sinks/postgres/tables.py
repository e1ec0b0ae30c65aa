"""How each target entity maps onto its ``crm`` table, and the set-based SQL that writes it.

One :class:`EntityTable` per entity lists its columns (in the order rows are copied into the staging
table) and builds the statements :mod:`sinks.postgres.sink` runs. Identifiers here are constants of
this module, never input, which is why plain string formatting is safe; the one exception, the target
schema (``target.schema``, ``crm`` by default; :func:`tables_for`), is checked to be a plain lower-case
identifier first. Below, ``crm`` stands for that schema.

Owners: every row, xref entry and parked record carries the ``system`` that wrote it (the config's run
name, ``%(system)s`` of every statement; its source is in ``source``). A record whose row or xref entry
another system owns, or whose parent account exists only as another system's, is not written: the
statement returns it as refused (rule ``owned_by_other_source``) and the other system's rows stay as
they are. Re-delivering unchanged records changes nothing: rows, xref entries (their ``run_id`` and
evidence) and parked records are updated only when their values differ; ``crm.deliveries`` records what
each run's delivery of each source record did (see :mod:`sinks.postgres.report`).

Accounts and golden records: an account row's ``external_id`` is ``coalesce(golden_id, customer_id)``.
With dedupe off (``golden_id`` null) that is the record's own id, one row per source record; with dedupe
on, ``crm.accounts`` holds one row per golden id, written from the latest staged record of the cluster
(which carries the golden record's surviving values), and ``crm.xref`` maps EVERY source record
(``customer_id``) to that row, with its match evidence. Children therefore find their account through
``crm.xref`` (entity ``account``, ``source_id`` = the child's ``customer_id``), whatever the mode, and
take the parent's golden id when they have none of their own. A batch without any golden id is written
with :attr:`EntityTable.plain_merge_sql` (one row and one xref entry per latest record, as before golden
records existed). :data:`GOLDEN_CHAINS_SQL` and :data:`MERGE_GOLDENS_SQL` are the two statements of
cluster merges (see :mod:`sinks.postgres.sink`).

Contacts with contact dedupe (``contact_golden_id``, :attr:`EntityTable.golden_field`) are golden records
too: the row of a contact is ``coalesce(contact_golden_id, contact_id)``, written from the latest staged
record of the cluster, and every source contact's xref entry points to it (its ``golden_id`` the golden
contact id, with the match evidence); the row's own ``golden_id`` stays the parent account's.
:data:`CONTACT_MERGE_GOLDENS_SQL` merges absorbed golden contacts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache, cached_property
from typing import Any

from crmflow.entities import business_fields, column_type, id_field
from sinks.postgres.migrate import TEMPLATE_SCHEMA, check_schema, in_schema

# Staging-only columns of child entities: where the record came from, so a parked one keeps it.
ORIGIN_COLUMNS = (
    ("_topic", "text"),
    ("_partition", "int4"),
    ("_offset", "int8"),
    ("_key", "bytea"),
    ("_value", "bytea"),
)


@dataclass(frozen=True)
class Column:
    """A table column, its type for the binary COPY, the Avro field it comes from, whether a different
    value counts as a change (lineage columns do not bump ``updated_at`` on their own), and whether the
    entity's table has it (``stored=False``: staging only, e.g. an account's match evidence, which goes
    to ``crm.xref``)."""

    name: str
    copy_type: str
    field: str | None = None
    compared: bool = True
    stored: bool = True

    @property
    def source_field(self) -> str:
        return self.field or self.name


_LINEAGE = (
    Column("quality_flags", "text[]"),
    Column("golden_id", "text"),
    Column("source", "text"),
    Column("run_id", "text", compared=False),
    Column("source_position", "text", compared=False),
    Column("mapped_at", "timestamptz", compared=False),
    # The change's LSN (null: a file or snapshot read): compared by the upsert's own rule (a newer one
    # is recorded, an older one never overwrites), see :meth:`EntityTable._upsert_parts`.
    Column("source_lsn", "int8", compared=False),
    # Staging only: the fields a change left unchanged; the upsert takes their stored values.
    Column("unchanged_fields", "text[]", stored=False),
)
_LINEAGE_NAMES = frozenset(c.name for c in _LINEAGE)


def _contract(entity: str) -> tuple[Column, ...]:
    """The entity's columns as the contract declares its fields (:mod:`crmflow.entities`), in its order:
    the id field as ``external_id``, then every other business field under its own name and type.
    tests/unit/sinks/test_migrations_contract.py holds the SQL migrations to the same list."""
    own = id_field(entity)
    return (
        Column("external_id", "text", field=own),
        *(Column(f, column_type(entity, f)) for f in business_fields(entity) if f != own),
    )


@dataclass(frozen=True)
class EntityTable:
    entity: str
    table: str
    id_field: str
    columns: tuple[Column, ...]
    parent_field: str | None = None
    schema: str = TEMPLATE_SCHEMA  # a checked identifier (see :func:`tables_for`)
    #: The record's golden-id field when the entity can be deduplicated (accounts' ``golden_id``, contacts'
    #: ``contact_golden_id``): a row per golden id then, and every source record's xref entry points at it.
    golden_field: str | None = None

    @property
    def is_child(self) -> bool:
        return self.parent_field is not None

    @property
    def stage(self) -> str:
        return f"pg_temp._stage_{self.entity}"

    @property
    def copy_types(self) -> list[str]:
        origin = [t for _, t in ORIGIN_COLUMNS] if self.is_child else []
        return ["int8", *(c.copy_type for c in self.columns), *origin]

    @cached_property
    def source_fields(self) -> tuple[str, ...]:
        return tuple(c.source_field for c in self.columns)

    def row(self, seq: int, value: Mapping[str, Any]) -> list[Any]:
        """The staging row of one decoded record (origin columns are appended by the caller)."""
        return [seq, *map(value.get, self.source_fields)]

    def row_index(self, column: str) -> int:
        """Where ``column`` is in a staging row of :meth:`row` (after ``seq``)."""
        return 1 + [c.name for c in self.columns].index(column)

    def field_of(self, column: str | None) -> str | None:
        """The contract's field name of a column (``external_id`` is the entity's own id field)."""
        if column is None:
            return None
        return self.id_field if column == "external_id" else column

    # ------------------------------------------------------------------------------------------ SQL

    @cached_property
    def create_stage_sql(self) -> str:
        cols = [("seq", "bigint"), *((c.name, _sql_type(c.copy_type)) for c in self.columns)]
        if self.is_child:
            cols += [(n, _sql_type(t)) for n, t in ORIGIN_COLUMNS]
        body = ", ".join(f"{n} {t}" for n, t in cols)
        return f"create temp table if not exists _stage_{self.entity} ({body}) on commit delete rows"

    @cached_property
    def copy_sql(self) -> str:
        names = ["seq", *(c.name for c in self.columns)]
        if self.is_child:
            names += [n for n, _ in ORIGIN_COLUMNS]
        return f"copy {self.stage} ({', '.join(names)}) from stdin (format binary)"

    @cached_property
    def load_parked_sql(self) -> str:
        """Stage parked records (``%s`` = array of parked ids) as if they had just arrived."""
        cols = ", ".join(f"r.{c.name}" for c in self.columns)
        return (
            f"insert into {self.stage} select p.id, {cols}, p.source_topic, p.source_partition, "
            f"p.source_offset, p.raw_key, p.raw_value from {self.schema}.parked p "
            f"cross join lateral jsonb_populate_record(null::{self.stage}, p.record) r where p.id = any(%s)"
        )

    @cached_property
    def fill_from_parked_sql(self) -> str:
        """Fill the staged changes' ``unchanged_fields`` of a child with no row yet from the parked version of
        the same id (its insert, waiting for the account), as the row would have given them: otherwise the
        change would replace that version, or be written over it, without the values it left unchanged."""
        s = self.schema
        names = [c.name for c in self.columns
                 if c.stored and c.name not in _LINEAGE_NAMES and c.name not in ("external_id", "account_id")]
        sets = ", ".join(f"{n} = case when '{n}' = any(l.unchanged_fields) then r.{n} else l.{n} end" for n in names)
        return (
            f"update {self.stage} l set {sets}, unchanged_fields = array(select unnest(l.unchanged_fields) "
            "intersect select unnest(r.unchanged_fields)) "
            f"from {s}.parked p cross join lateral jsonb_populate_record(null::{self.stage}, p.record) r "
            f"where cardinality(l.unchanged_fields) > 0 and p.entity = '{self.entity}' "
            "and p.external_id = l.external_id and p.dead_rule is null "
            "and (r.source_lsn is null or l.source_lsn is null or r.source_lsn <= l.source_lsn) "
            f"and not exists (select 1 from {s}.{self.table} t where t.external_id = l.external_id)"
        )  # fmt: skip

    @cached_property
    def merge_sql(self) -> str:
        """Upsert the staged rows (latest per target row) and their xref entries in one statement, as the
        system ``%(system)s``.

        Returns one row: distinct target rows staged, inserted, updated, (children) the seqs parked, and
        the records refused because another system owns what they would write (a JSON array of
        ``{seq, id, parent, kind, owner, owner_source}``; see :func:`ownership_refusal`)."""
        if self.is_child:
            return self._child_merge_sql(golden=self.golden_field is not None)
        return self._account_merge_sql(golden=True)

    @cached_property
    def plain_merge_sql(self) -> str:
        """:attr:`merge_sql` for a batch without golden ids (dedupe off): every record is its own row, so
        the latest record per row is also the latest per source record (accounts: one sort fewer)."""
        return self._child_merge_sql(golden=False) if self.is_child else self._account_merge_sql(golden=False)

    @cached_property
    def restage_absorbed_sql(self) -> str:
        """For staged records of a deduplicated child (parked golden contacts, staged again): those whose golden
        id was absorbed since they were parked (``crm.golden_merges``, of the system ``%(system)s``) take the
        end of its chain and become xref-only (``_stale``), as :func:`~sinks.postgres.golden.plan_goldens` does
        for a batch's records."""
        gf, s = self.golden_field, self.schema
        return (
            "with recursive chain (start, cur, depth) as ("
            f"select distinct {gf}, {gf}, 0 from {self.stage} where {gf} is not null "
            f"union all select c.start, m.survivor_golden_id, c.depth + 1 from chain c join {s}.golden_merges m "
            f"on m.entity = '{self.entity}' and m.absorbed_golden_id = c.cur "
            "and (m.system is null or m.system = %(system)s::text) where c.depth < 64), "
            "finals as (select distinct on (start) start, cur from chain order by start, depth desc) "
            f"update {self.stage} l set {gf} = f.cur, _stale = true from finals f "
            f"where l.{gf} = f.start and f.start <> f.cur"
        )

    def _upsert_parts(self, *, golden: bool = False) -> tuple[str, str, str]:
        """Insert column list, ``set`` list and the "row changed" test of the upsert into the table.

        A golden row (``golden``) holds the cluster's surviving values; its ``quality_flags`` and
        ``source`` are those of whichever member last changed them (lineage), so a member re-delivered
        with its own flags does not count as a change of the golden row."""
        cols = (["account_id"] if self.is_child else []) + [c.name for c in self.columns if c.stored]
        sets = ", ".join(
            "source_lsn = coalesce(excluded.source_lsn, t.source_lsn)" if n == "source_lsn" else f"{n} = excluded.{n}"
            for n in [*cols, "system"]
            if n != "external_id"
        )
        sets += ", deleted_at = null"  # a newer insert brings a soft-deleted row back
        lineage = {"quality_flags", "source"} if golden else set()
        compared = (["account_id"] if self.is_child else []) + [
            c.name
            for c in self.columns
            if c.stored and c.compared and c.name != "external_id" and c.name not in lineage
        ]
        # A newer LSN is recorded even when the values are equal (so an older event replayed later finds
        # it); a soft-deleted row comes back.
        changed = (
            f"({', '.join('t.' + n for n in compared)}) is distinct from "
            f"({', '.join('excluded.' + n for n in compared)}) or t.deleted_at is not null "
            "or (excluded.source_lsn is not null and (t.source_lsn is null or excluded.source_lsn > t.source_lsn))"
        )
        return ", ".join(cols), sets, changed

    def _filled(self, alias: str, name: str) -> str:
        """The value to write of column ``name`` of the staged row ``alias``: the stored one (of its stored
        row ``_cur``) when the change left the field unchanged (``unchanged_fields``)."""
        if name in _LINEAGE_NAMES or name in ("external_id", "account_id"):
            return f"{alias}.{name}"
        return f"case when '{name}' = any({alias}.unchanged_fields) then ({alias}._cur).{name} else {alias}.{name} end"

    def _stored(self, target: str) -> tuple[str, str]:
        """The join that reads, once per staged record, the stored row its ``target`` (an expression over the
        staged record) names, and the columns that carry it to every part of the statement: ``_cur`` (the whole
        row, null when there is none), its ``_cur_id``, and ``_foreign`` (true when another system owns it). Every
        part of one statement sees the table as it was before the statement, so they all see this row."""
        return (
            f"left join {self.schema}.{self.table} cur on cur.external_id = {target}",
            "cur as _cur, cur.id as _cur_id, coalesce(cur.system <> %(system)s::text, false) as _foreign",
        )

    def _source(self, relation: str, alias: str, target: str) -> str:
        """The upsert's rows: ``relation`` as ``alias`` (each with its stored row ``_cur``), less the changes
        older than a hard delete of their id (``deletions``, migration 0008). A change at the delete's LSN is
        of the same transaction (a change's LSN is its transaction's commit), after it: it stays."""
        s = self.schema
        return (
            f"{relation} {alias} "
            f"where not exists (select 1 from {s}.deletions d where d.entity = '{self.entity}' "
            f"and d.external_id = {alias}.{target} and d.source_lsn > {alias}.source_lsn)"
        )

    def _upsert(self, insert_cols: str, select_cols: str, source: str, sets: str, changed: str) -> str:
        # Only a row this system owns (or nobody yet) is updated, only when its values change (a
        # re-delivery leaves it untouched: run_id, updated_at, source_position included), and never by a
        # change older than the row's (a stale or replayed event).
        return (
            f"up as (insert into {self.schema}.{self.table} as t ({insert_cols}, system) "
            f"select {select_cols}, %(system)s::text from {source} "
            f"on conflict (external_id) do update set {sets}, updated_at = now() "
            f"where ({changed}) and (t.system is null or t.system = excluded.system) "
            "and (excluded.source_lsn is null or t.source_lsn is null or excluded.source_lsn >= t.source_lsn) "
            "returning t.id, t.external_id, (t.xmax = 0) as inserted)"
        )

    def _xref(self, select: str, *, evidence: bool) -> str:
        """Upsert the xref entries of ``select`` (rows of entity, source, source_id, target_id, golden_id,
        run_id[, evidence]). An entry changes only when its target, golden id or evidence does, so a
        re-delivery keeps the run id of the run that last changed it, and its evidence."""
        s = self.schema
        ev_col, ev_set, ev_old, ev_new = "", "", "", ""
        if evidence:
            merged = _EVIDENCE
            ev_col, ev_set = ", evidence", f"evidence = {merged}, "
            ev_old, ev_new = ", x.evidence", f", {merged}"
        return (
            f"xr as (insert into {s}.xref as x (entity, source, source_id, target_id, golden_id, run_id{ev_col}, "
            f"system) {select} "
            "on conflict (entity, source, source_id) do update set target_id = excluded.target_id, "
            f"golden_id = excluded.golden_id, run_id = excluded.run_id, {ev_set}system = excluded.system, "
            "updated_at = now() "
            f"where (x.target_id, x.golden_id{ev_old}) is distinct from (excluded.target_id, excluded.golden_id"
            f"{ev_new}) and (x.system is null or x.system = excluded.system) "
            "returning x.source, x.source_id, (x.xmax = 0) as inserted)"
        )

    def _account_merge_sql(self, *, golden: bool) -> str:
        # The row of a record is its golden id's (dedupe on) or its own id's (dedupe off): ``_target``.
        # The latest staged record per target row writes the row; every staged source record (the latest
        # per source and id) writes its xref entry, pointing to the row of its target. Records whose
        # target row or xref entry another system owns are refused first and take no part.
        s = self.schema
        insert_cols, sets, changed = self._upsert_parts(golden=golden)
        select_cols = ", ".join(
            "l._target" if c.name == "external_id" else self._filled("l", c.name) for c in self.columns if c.stored
        )
        target = "coalesce(s.golden_id, s.external_id)" if golden else "s.external_id"
        stored, stored_cols = self._stored(target)
        ctes = [
            f"staged as (select s.*, {target} as _target, {stored_cols} from {self.stage} s {stored})",
            "refused as (select distinct on (s.seq) s.seq, s.external_id as id, null::text as parent, "
            "case when s._foreign then 'row' else 'xref' end as kind, "
            "case when s._foreign then (s._cur).system else x.system end as owner, "
            "case when s._foreign then (s._cur).source else x.source end as owner_source from staged s "
            f"left join {s}.xref x on x.source_id = s.external_id and x.entity = '{self.entity}' "
            "and x.source = s.source and x.system <> %(system)s::text "
            "where s._foreign or x.source_id is not null order by s.seq)",
            "ok as (select * from staged s where not exists (select 1 from refused r where r.seq = s.seq))",
        ]
        if golden:
            # A record whose golden id an earlier batch absorbed (``_stale``, a re-delivery) is older than
            # the survivor's values: it confirms its xref entry only.
            ctes.append(
                "latest as (select distinct on (_target) * from ok where _stale is not true "
                "order by _target, seq desc)"
            )
            members = (
                "members as (select distinct on (source, external_id) * from ok "
                "order by source, external_id, seq desc)"
            )
        else:
            ctes.append("latest as (select distinct on (_target) * from ok order by _target, seq desc)")
            members = "members as (select * from latest)"
        upsert = self._upsert(insert_cols, select_cols, self._source("latest", "l", "_target"), sets, changed)
        # A row inserted by ``up`` is not the stored row of its record (``_cur``, read before), hence both.
        versions = self._versions_sql("latest l on l._target = up.external_id")
        xref = self._xref(
            f"select '{self.entity}', m.source, m.external_id, coalesce(up.id, m._cur_id), m.golden_id, m.run_id, "
            "m.match_evidence::jsonb, %(system)s::text from members m left join up on up.external_id = m._target "
            "where coalesce(up.id, m._cur_id) is not null",
            evidence=True,
        )
        deliveries = self._deliveries_sql(
            "members m left join xr on xr.source = m.source and xr.source_id = m.external_id "
            "left join up on up.external_id = m._target where m._cur_id is not null or up.id is not null",
        )
        return (
            f"with {', '.join(ctes)}, {upsert}, {versions}, {members}, {xref}, {deliveries} "
            "select (select count(*) from latest) + (select count(*) from refused), "
            "count(*) filter (where inserted), count(*) filter (where not inserted), '{}'::bigint[], "
            f"{_REFUSED_JSON} from up"
        )

    def _child_merge_sql(self, *, golden: bool = False) -> str:
        """The child statement; ``golden`` (contacts with contact dedupe): the row of a record is its golden
        contact id's (``_target``, its own id without one), written from the latest staged record of the
        cluster whose golden id is current (not ``_stale``); every source record with a parent writes its xref
        entry (golden id: the golden contact id; evidence) to that row, and every one without a parent is
        parked on its own (its own id)."""
        s = self.schema
        insert_cols, sets, changed = self._upsert_parts()
        select_cols = ", ".join("j._target" if golden and n == "external_id" else self._filled("j", n)
                                for n in insert_cols.split(", "))
        gf = self.golden_field
        target = f", coalesce(s.{gf}, s.external_id) as _target" if golden else ""
        latest = (f"latest as (select distinct on (external_id) s.*{target} from {self.stage} s "
                  "order by external_id, seq desc)")
        # The account is found through its xref entry: the parent's source id may be a member of a
        # golden record (dedupe on) or the account's own id (dedupe off). Only an account of this system
        # (or of nobody yet) is a parent: a child is never attached to another system's account. Of two
        # account sources with the same id, the first source by name wins. A child without a golden id
        # of its own takes the parent's. One index read finds the first entry by source (``p``); only when
        # another system owns it is the first of this system's looked for (``q``).
        pf = self.parent_field
        ours = "(x.system is null or x.system = %(system)s::text)"
        first = (
            f"(select x.target_id, x.golden_id, x.system, x.source, {ours} as ours from {s}.xref x "
            f"where x.source_id = l.{pf} and x.entity = 'account' order by x.source limit 1)"
        )
        own = (
            f"(select x.target_id, x.golden_id from {s}.xref x where not p.ours and x.source_id = l.{pf} "
            f"and x.entity = 'account' and {ours} order by x.source limit 1)"
        )
        target = "l._target" if golden else "l.external_id"
        stored, stored_cols = self._stored(target)
        cand = (
            f"cand as (select l.seq, l.external_id, {target} as _target, "
            f"l.source, l.{pf} as _parent, case when p.ours then p.target_id else q.target_id end as _account_id, "
            "case when p.ours then p.golden_id else q.golden_id end as _parent_golden, "
            "p.source is not null as _has_parent, p.system as _parent_system, p.source as _parent_source, "
            f"{stored_cols} from latest l left join lateral {first} p on true left join lateral {own} q on true "
            f"{stored})"
        )
        # Refused: the row or its xref entry is another system's, its parent account is only another
        # system's, or (parent not there yet) another system's record with the same id is parked.
        refused = (
            "refused as (select distinct on (seq) * from ("
            "select c.seq, c.external_id as id, c._parent as parent, 'row' as kind, (c._cur).system as owner, "
            "(c._cur).source as owner_source from cand c where c._foreign "
            "union all select c.seq, c.external_id, c._parent, 'xref', x.system, x.source from cand c "
            f"join {s}.xref x on x.source_id = c.external_id and x.entity = '{self.entity}' "
            "and x.source = c.source where x.system <> %(system)s::text "
            "union all select c.seq, c.external_id, c._parent, 'parent', c._parent_system, c._parent_source "
            "from cand c where c._account_id is null and c._has_parent "
            "union all select c.seq, c.external_id, c._parent, 'parked', p.system, null from cand c "
            f"join {s}.parked p on p.entity = '{self.entity}' and p.external_id = c.external_id "
            "where not c._has_parent and p.system <> %(system)s::text"
            ") r order by seq, array_position(array['row', 'xref', 'parent', 'parked'], kind))"
        )
        cols = ", ".join(
            "coalesce(l.golden_id, c._parent_golden) as golden_id" if c.name == "golden_id" else f"l.{c.name}"
            for c in self.columns
        )
        joined = (
            f"joined as (select l.seq, {cols}, c._target, c._account_id as account_id, c._cur, c._cur_id "
            "from latest l "
            "join cand c on c.seq = l.seq "
            "where c._account_id is not null and not exists (select 1 from refused r where r.seq = l.seq))"
        )
        if golden:
            # One row per golden contact: the cluster's latest record whose golden id is current writes it. A record
            # whose golden id was absorbed (``_stale``) writes it only while the survivor has no row at all (its
            # own records parked, waiting for their account): the cluster then has its row, and theirs update it.
            rows = ["rows as (select distinct on (_target) * from joined j where _stale is not true "
                    "or j._cur_id is null order by _target, (_stale is not true) desc, seq desc)"]
            upsert = self._upsert(insert_cols, select_cols, self._source("rows", "j", "_target"), sets, changed)
            versions = self._versions_sql("rows l on l._target = up.external_id")
            xref = self._xref(
                f"select '{self.entity}', j.source, j.external_id, coalesce(up.id, j._cur_id), "
                f"coalesce(j.{gf}, j.golden_id), j.run_id, j.match_evidence::jsonb, %(system)s::text from joined j "
                "left join up on up.external_id = j._target where coalesce(up.id, j._cur_id) is not null",
                evidence=True,
            )
        else:
            rows = []
            upsert = self._upsert(insert_cols, select_cols, self._source("joined", "j", "external_id"), sets,
                                  changed)
            versions = self._versions_sql("joined l on l.external_id = up.external_id")
            xref = self._xref(
                f"select '{self.entity}', j.source, j.external_id, coalesce(up.id, j._cur_id), j.golden_id, "
                "j.run_id, %(system)s::text from joined j left join up using (external_id) "
                "where coalesce(up.id, j._cur_id) is not null",
                evidence=False,
            )
        deliveries = self._deliveries_sql(
            "joined m left join xr on xr.source = m.source and xr.source_id = m.external_id "
            "left join up on up.external_id = m._target",
        )
        stripped = [*(n for n, _ in ORIGIN_COLUMNS), *(["_target"] if golden else [])]
        record = "to_jsonb(l) - array['seq', " + ", ".join(f"'{n}'" for n in stripped) + "]"
        ctes = [
            latest,
            cand,
            refused,
            joined,
            *rows,
            upsert,
            versions,
            xref,
            deliveries,
            # A record written now supersedes an older version of it still parked.
            f"unparked as (delete from {s}.parked p using joined j "
            f"where p.entity = '{self.entity}' and p.external_id = j.external_id)",
            "orphans as (select l.* from latest l join cand c on c.seq = l.seq where not c._has_parent "
            "and not exists (select 1 from refused r where r.seq = l.seq))",
            f"park as (insert into {s}.parked as p (entity, external_id, parent_external_id, record, "
            "source_topic, source_partition, source_offset, raw_key, raw_value, run_id, source_position, "
            f"system) select '{self.entity}', l.external_id, l.{pf}, {record}, l._topic, "
            "l._partition, l._offset, l._key, l._value, l.run_id, l.source_position, %(system)s::text from orphans l "
            "on conflict (entity, external_id) do update set "
            "parent_external_id = excluded.parent_external_id, record = excluded.record, "
            "source_topic = excluded.source_topic, source_partition = excluded.source_partition, "
            "source_offset = excluded.source_offset, raw_key = excluded.raw_key, "
            "raw_value = excluded.raw_value, run_id = excluded.run_id, "
            "source_position = excluded.source_position, system = excluded.system, last_seen_at = now(), "
            "dead_rule = null, dead_field = null, dead_error = null "
            # A re-delivery of the same record leaves the parked row as it is.
            "where (p.record, p.parent_external_id, p.source_topic, p.source_partition, p.source_offset) "
            "is distinct from (excluded.record, excluded.parent_external_id, excluded.source_topic, "
            "excluded.source_partition, excluded.source_offset) "
            "and (p.system is null or p.system = excluded.system))",
        ]
        parked = "(select coalesce(array_agg(seq), '{}') from orphans)"
        return (
            f"with {', '.join(ctes)} select (select count(*) from latest), "
            f"count(*) filter (where inserted), count(*) filter (where not inserted), {parked}, "
            f"{_REFUSED_JSON} from up"
        )

    def delete_sql(self, *, hard: bool, children: tuple[EntityTable, ...] = ()) -> str:
        """Apply deletes (``%(ids)s`` external ids, ``%(lsns)s`` their LSNs) as the system ``%(system)s``:
        a row whose stored LSN is newer than the delete's is left alone (a stale delete). ``hard`` deletes
        the rows, their xref entries and (an account) its ``children``' rows, and remembers each id's delete
        LSN in ``deletions``; otherwise the rows and their children get ``deleted_at``. A parked child with a
        deleted id is dropped. Returns one row: the rows deleted (children not counted).

        A golden record's row (:attr:`golden_field`) is found through the xref entries of the deleted source
        records: each leaves it, and the row goes only when none of its members is left (its values stay those
        the deduper last sent; see the README on deletes of merged records)."""
        s = self.schema
        ctes = [
            "d as (select distinct on (external_id) external_id, lsn from unnest(%(ids)s::text[], "
            "%(lsns)s::bigint[]) as d (external_id, lsn) order by external_id, lsn desc nulls last)",
        ]
        if self.golden_field:
            # A row is a golden record: a deleted source record leaves it (its xref entry goes), and the row
            # goes with its last member only. A row with other members left stays, under its golden id; with
            # no other member, a delete older than the row is stale, as for a plain row.
            ctes += [
                f"m as (select x.source_id, x.target_id, d.lsn, t.source_lsn, exists (select 1 from {s}.xref o "
                f"where o.entity = '{self.entity}' and o.target_id = x.target_id "
                "and o.source_id <> all(%(ids)s::text[])) as shared "
                f"from {s}.xref x join d on x.source_id = d.external_id "
                f"join {s}.{self.table} t on t.id = x.target_id where x.entity = '{self.entity}' "
                "and (t.system is null or t.system = %(system)s::text))",
                "left_ as (select * from m where shared or source_lsn is null or lsn is null or source_lsn <= lsn)",
                "gone as (select t.id, t.external_id, max(l.lsn) as lsn from left_ l "
                f"join {s}.{self.table} t on t.id = l.target_id where not l.shared"
                + ("" if hard else " and t.deleted_at is null") + " group by t.id, t.external_id)",
                f"xm as (delete from {s}.xref x using left_ l where x.entity = '{self.entity}' "
                "and x.source_id = l.source_id" + ("" if hard else " and l.shared") + ")",
            ]
        else:
            ctes.append(
                f"gone as (select t.id, t.external_id, d.lsn from {s}.{self.table} t join d using (external_id) "
                "where (t.system is null or t.system = %(system)s::text) "
                "and (t.source_lsn is null or d.lsn is null or t.source_lsn <= d.lsn)"
                + ("" if hard else " and t.deleted_at is null") + ")"
            )
        remembered = ["select external_id, lsn from d"]
        for child in children:
            c = child.table
            if hard:
                ctes.append(f"{c}_gone as (delete from {s}.{c} c using gone g where c.account_id = g.id "
                            "returning c.id, c.external_id, g.lsn)")
                ctes.append(f"{c}_xref as (delete from {s}.xref x using {c}_gone k "
                            f"where x.entity = '{child.entity}' and x.target_id = k.id)")
                ctes.append(f"{c}_mem as (insert into {s}.deletions as m (entity, external_id, source_lsn, system) "
                            f"select distinct on (external_id) '{child.entity}', external_id, lsn, %(system)s::text "
                            f"from {c}_gone where lsn is not null order by external_id, lsn desc {_REMEMBER})")
            else:
                ctes.append(f"{c}_gone as (update {s}.{c} c set deleted_at = now(), updated_at = now() "
                            "from gone g where c.account_id = g.id and c.deleted_at is null)")
        if hard:
            ctes += [
                *([] if self.golden_field else [f"xr as (delete from {s}.xref x using gone g "
                                                f"where x.entity = '{self.entity}' and x.target_id = g.id)"]),
                f"del as (delete from {s}.{self.table} t using gone g where t.id = g.id returning 1)",
                f"mem as (insert into {s}.deletions as m (entity, external_id, source_lsn, system) "
                f"select '{self.entity}', external_id, lsn, %(system)s::text from ({remembered[0]}) r "
                f"where lsn is not null {_REMEMBER})",
            ]
        else:
            ctes.append(
                f"del as (update {s}.{self.table} t set deleted_at = now(), updated_at = now(), "
                "source_lsn = coalesce(greatest(t.source_lsn, g.lsn), t.source_lsn) "
                "from gone g where t.id = g.id returning 1)"
            )
        if self.is_child:
            ctes.append(f"unpark as (delete from {s}.parked p using d where p.entity = '{self.entity}' "
                        "and p.external_id = d.external_id and (p.system is null or p.system = %(system)s::text))")
        return f"with {', '.join(ctes)} select count(*) from del"

    def _versions_sql(self, joined: str) -> str:
        """The CTE keeping, per row the upsert ``up`` changed, the row as it was before the run's first change
        of it (``crm.row_versions``, migration 0007; null when inserted): what ``crmflow rollback`` restores.
        Every part of one statement sees the table as it was before the statement, so ``l._cur`` is that row."""
        return (
            f"ver as (insert into {self.schema}.row_versions (run_id, entity, external_id, previous) "
            f"select distinct on (up.external_id) coalesce(l.run_id, ''), '{self.entity}', up.external_id, "
            f"to_jsonb(l._cur) from up join {joined} on conflict do nothing)"
        )

    def _deliveries_sql(self, source: str) -> str:
        """The CTE recording what the batch delivered for each source record (``deliveries``): inserted
        when its cross-reference is new, updated when it or its target row changed, else unchanged. The
        first delivery of a record in a run wins; a re-delivery in the same run adds nothing."""
        return (
            f"dl as (insert into {self.schema}.deliveries (run_id, entity, source, source_id, outcome) "
            f"select distinct on (m.source, m.external_id) coalesce(m.run_id, ''), '{self.entity}', m.source, "
            "m.external_id, case when xr.inserted then 'inserted' "
            "when xr.source_id is not null or up.id is not null then 'updated' else 'unchanged' end "
            f"from {source} on conflict do nothing)"
        )


# The evidence an xref entry keeps when a record is delivered again: a delivery without evidence (none,
# or an empty list: a re-run whose deduper had nothing new to decide), or with evidence the entry already
# contains, keeps the entry's; new decisions are appended to it. Evidence is never replaced by less.
_EVIDENCE = (
    "(case when excluded.evidence is null or excluded.evidence = '[]'::jsonb "
    "or (x.evidence is not null and x.evidence @> excluded.evidence) then x.evidence "
    "when x.evidence is null or jsonb_typeof(x.evidence) <> 'array' "
    "or jsonb_typeof(excluded.evidence) <> 'array' then excluded.evidence "
    "else x.evidence || coalesce((select jsonb_agg(e) from jsonb_array_elements(excluded.evidence) e "
    "where not x.evidence @> jsonb_build_array(e)), '[]'::jsonb) end)"
)
# A delete remembered again keeps the newest LSN.
_REMEMBER = (
    "on conflict (entity, external_id) do update set source_lsn = greatest(m.source_lsn, excluded.source_lsn), "
    "system = excluded.system, deleted_at = now()"
)
_REFUSED_JSON = (
    "(select coalesce(jsonb_agg(jsonb_build_object('seq', seq, 'id', id, 'parent', parent, 'kind', kind, "
    "'owner', owner, 'owner_source', owner_source)), '[]'::jsonb) from refused)"
)


def _sql_type(copy_type: str) -> str:
    return {"int8": "bigint", "int4": "integer"}.get(copy_type, copy_type)


ACCOUNT = EntityTable(
    "account",
    "accounts",
    "customer_id",
    (
        *_contract("account"),
        *_LINEAGE,
        Column("match_evidence", "text", stored=False),
        # Set by the sink: the record's golden id was absorbed by an earlier batch (xref entry only).
        Column("_stale", "bool", stored=False),
    ),
    golden_field="golden_id",
)
CONTACT = EntityTable(
    "contact",
    "contacts",
    "contact_id",
    (
        *_contract("contact"),
        *_LINEAGE,
        # Contact dedupe (migration 0009): the golden contact's id, the row's external id when set.
        Column("contact_golden_id", "text"),
        Column("match_evidence", "text", stored=False),
        Column("_stale", "bool", stored=False),
    ),
    parent_field="customer_id",
    golden_field="contact_golden_id",
)
SALE = EntityTable(
    "sale",
    "sales",
    "sale_id",
    (
        *_contract("sale"),
        *_LINEAGE,
    ),
    parent_field="customer_id",
)
CASE = EntityTable(
    "case",
    "cases",
    "case_id",
    (
        *_contract("case"),
        *_LINEAGE,
    ),
    parent_field="customer_id",
)

# Parents first: within one transaction a child then finds the account written by the same batch.
TABLES: dict[str, EntityTable] = {t.entity: t for t in (ACCOUNT, CONTACT, SALE, CASE)}
CHILDREN = tuple(t for t in TABLES.values() if t.is_child)

# Where absorbed golden ids went: for each id of ``%(ids)s`` that crm.golden_merges knows as absorbed (by
# the system ``%(system)s``), the
# golden id at the end of its chain of merges (``survivor_golden_id`` is the immediate survivor). A
# record re-delivered after its cluster was merged then lands on the survivor's row, never re-creating an
# absorbed one. The depth bound only guards against a cycle in corrupt data.
GOLDEN_CHAINS_SQL = (
    "with recursive chain (start, cur, depth) as ("
    "select g, g, 0 from unnest(%(ids)s::text[]) g "
    "union all select c.start, m.survivor_golden_id, c.depth + 1 from chain c "
    "join crm.golden_merges m on m.entity = %(entity)s::text and m.absorbed_golden_id = c.cur "
    "and (m.system is null or m.system = %(system)s::text) where c.depth < 64) "
    "select start, cur from (select distinct on (start) start, cur from chain order by start, depth desc) z "
    "where start <> cur"
)

# Apply cluster merges of the system ``%(system)s``, one statement: for each absorbed golden id whose
# survivor (``final``: the end of the chain) has a row of that system (or of nobody yet), re-point the
# absorbed row's contacts, sales and cases (their golden id too, unless they carry one of their own) and
# the xref entries pointing to it, delete it, and log the merge once.
# Children and xref rows of the children whose golden id changed follow. Idempotent: once the absorbed
# row is gone every update matches nothing and the log insert does nothing. Foreign keys are checked at
# the end of the statement, when no child references the deleted row any more.
# A golden contact's xref entries keep its own golden id (``contact_golden_id``), not the account's.
_REPOINT_CHILD = (
    "{alias}_moved as (update crm.{table} c set account_id = p.new_id, updated_at = now(), golden_id = "
    "case when c.golden_id is null or c.golden_id = p.absorbed then p.final else c.golden_id end "
    "from pairs p where c.account_id = p.old_id returning c.id, c.golden_id, {own} as own), "
    "{alias}_xref as (update crm.xref x set golden_id = m.golden_id, updated_at = now() from {alias}_moved m "
    "where x.entity = '{entity}' and x.target_id = m.id and m.own is null and x.golden_id is distinct from m.golden_id)"
)
MERGE_GOLDENS_SQL = (
    "with m as (select * from unnest(%(absorbed)s::text[], %(survivor)s::text[], %(final)s::text[], "
    "%(record)s::text[], %(run)s::text[], %(evidence)s::text[]) "
    "as m (absorbed, survivor, final, record_id, run_id, evidence)), "
    "pairs as (select m.*, a.id as old_id, g.id as new_id from m "
    "join crm.accounts g on g.external_id = m.final and (g.system is null or g.system = %(system)s::text) "
    "left join crm.accounts a on a.external_id = m.absorbed and a.id <> g.id "
    "and (a.system is null or a.system = %(system)s::text)), "
    + ", ".join(_REPOINT_CHILD.format(alias=t.table, table=t.table, entity=t.entity,
                                      own=f"c.{t.golden_field}" if t.golden_field else "null::text")
                for t in CHILDREN)
    + ", account_xref as (update crm.xref x set target_id = p.new_id, golden_id = p.final, updated_at = now() "
    "from pairs p where x.entity = 'account' and x.target_id = p.old_id returning 1), "
    "gone as (delete from crm.accounts a using pairs p where a.id = p.old_id returning 1), "
    "logged as (insert into crm.golden_merges (entity, absorbed_golden_id, survivor_golden_id, record_id, run_id, "
    "evidence, system) select 'account', absorbed, survivor, record_id, run_id, evidence::jsonb, %(system)s::text "
    "from pairs on conflict (entity, absorbed_golden_id) do nothing returning 1) "
    "select (select count(*) from gone), (select count(*) from account_xref), "
    + " + ".join(f"(select count(*) from {t.table}_moved)" for t in CHILDREN)
    + ", (select count(*) from logged)"
)


# The same for golden contacts (``%(entity)s`` is not used: contacts only): re-point the xref entries of each
# absorbed golden contact's row to its survivor's row and delete it. When the survivor has no row yet (its
# records are parked, waiting for their account), the first absorbed row of that survivor is renamed to it
# instead (its xref entries follow), so the cluster keeps one row. Every merge is logged, row or not, so
# parked records staged again later land on the survivor (:attr:`EntityTable.restage_absorbed_sql`).
CONTACT_MERGE_GOLDENS_SQL = (
    "with m as (select * from unnest(%(absorbed)s::text[], %(survivor)s::text[], %(final)s::text[], "
    "%(record)s::text[], %(run)s::text[], %(evidence)s::text[]) "
    "as m (absorbed, survivor, final, record_id, run_id, evidence)), "
    "found as (select m.*, a.id as old_id, g.id as final_id, g.id is not null as final_exists, "
    "(g.system is null or g.system = %(system)s::text) as final_ours from m "
    "left join crm.contacts g on g.external_id = m.final "
    "left join crm.contacts a on a.external_id = m.absorbed "
    "and (a.system is null or a.system = %(system)s::text)), "
    "heir as (select distinct on (final) final, absorbed as heir_of, old_id as heir_id from found "
    "where not final_exists and old_id is not null order by final, absorbed), "
    "pairs as (select f.*, coalesce(case when f.final_ours then f.final_id end, h.heir_id) as new_id from found f "
    "left join heir h using (final) where f.old_id is not null), "
    "moving as (select * from pairs where new_id is not null and new_id <> old_id), "
    "renamed as (update crm.contacts c set external_id = h.final, contact_golden_id = h.final, updated_at = now() "
    "from heir h where c.id = h.heir_id returning c.id), "
    "heir_xref as (update crm.xref x set golden_id = h.final, updated_at = now() from heir h "
    "where x.entity = 'contact' and x.target_id = h.heir_id and x.golden_id is distinct from h.final), "
    # The renamed row's versions follow it, so a rollback of the run that inserted it still deletes it.
    "heir_versions as (update crm.row_versions v set external_id = h.final from heir h "
    "where v.entity = 'contact' and v.external_id = h.heir_of and not exists (select 1 from crm.row_versions w "
    "where w.run_id = v.run_id and w.entity = 'contact' and w.external_id = h.final)), "
    "contact_xref as (update crm.xref x set target_id = p.new_id, golden_id = p.final, updated_at = now() "
    "from moving p where x.entity = 'contact' and x.target_id = p.old_id returning 1), "
    "gone as (delete from crm.contacts c using moving p where c.id = p.old_id returning 1), "
    "logged as (insert into crm.golden_merges (entity, absorbed_golden_id, survivor_golden_id, record_id, run_id, "
    "evidence, system) select 'contact', absorbed, survivor, record_id, run_id, evidence::jsonb, %(system)s::text "
    "from m on conflict (entity, absorbed_golden_id) do nothing returning 1) "
    "select (select count(*) from gone) + (select count(*) from renamed), (select count(*) from contact_xref), "
    "0::bigint, (select count(*) from logged)"
)


@cache
def tables_for(schema: str) -> dict[str, EntityTable]:
    """:data:`TABLES` writing into ``schema`` (checked: a plain lower-case identifier)."""
    check_schema(schema)
    return {e: replace(t, schema=schema) for e, t in TABLES.items()}


@cache
def golden_chains_sql(schema: str) -> bytes:
    """:data:`GOLDEN_CHAINS_SQL` in ``schema``."""
    return in_schema(GOLDEN_CHAINS_SQL, schema).encode()


@cache
def merge_goldens_sql(schema: str, entity: str = "account") -> bytes:
    """:data:`MERGE_GOLDENS_SQL` (accounts) or :data:`CONTACT_MERGE_GOLDENS_SQL` (contacts) in ``schema``."""
    return in_schema(CONTACT_MERGE_GOLDENS_SQL if entity == "contact" else MERGE_GOLDENS_SQL, schema).encode()
