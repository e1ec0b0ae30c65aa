"""How each target entity maps onto its ``crm`` table, and the set-based SQL that writes it.

One :class:`EntityTable` per entity lists its columns (in the order rows are copied into the staging
table) and builds the statements :mod:`sinks.postgres.sink` runs. Identifiers here are constants of
this module, never input, which is why plain string formatting is safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

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
    """A table column, its type for the binary COPY, the Avro field it comes from, and whether a
    different value counts as a change (lineage columns do not bump ``updated_at`` on their own)."""

    name: str
    copy_type: str
    field: str | None = None
    compared: bool = True

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
)


def _text(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, "text") for n in names)


@dataclass(frozen=True)
class EntityTable:
    entity: str
    table: str
    id_field: str
    columns: tuple[Column, ...]
    parent_field: str | None = None

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
        """Stage parked records (``%s`` = array of crm.parked ids) as if they had just arrived."""
        cols = ", ".join(f"r.{c.name}" for c in self.columns)
        return (
            f"insert into {self.stage} select p.id, {cols}, p.source_topic, p.source_partition, "
            "p.source_offset, p.raw_key, p.raw_value from crm.parked p "
            f"cross join lateral jsonb_populate_record(null::{self.stage}, p.record) r where p.id = any(%s)"
        )

    @cached_property
    def merge_sql(self) -> str:
        """Upsert the staged rows (latest per external id) and their xref entries in one statement.

        Returns one row: distinct staged records, inserted, updated, and (children) the seqs parked."""
        target_cols = ([("account_id", "account_id")] if self.is_child else []) + [
            (c.name, c.name) for c in self.columns
        ]
        insert_cols = ", ".join(n for n, _ in target_cols)
        select_cols = ", ".join(f"j.{src}" for _, src in target_cols)
        sets = ", ".join(f"{n} = excluded.{n}" for n, _ in target_cols if n != "external_id")
        compared = (["account_id"] if self.is_child else []) + [
            c.name for c in self.columns if c.compared and c.name != "external_id"
        ]
        changed = (
            f"({', '.join('t.' + n for n in compared)}) is distinct from "
            f"({', '.join('excluded.' + n for n in compared)})"
        )
        latest = f"latest as (select distinct on (external_id) * from {self.stage} order by external_id, seq desc)"
        if self.is_child:
            joined = (
                "joined as (select l.*, a.id as account_id from latest l "
                f"join crm.accounts a on a.external_id = l.{self.parent_field})"
            )
        else:
            joined = "joined as (select * from latest)"
        upsert = (
            f"up as (insert into crm.{self.table} as t ({insert_cols}) select {select_cols} from joined j "
            f"on conflict (external_id) do update set {sets}, updated_at = now() where {changed} "
            "returning t.id, t.external_id, (t.xmax = 0) as inserted)"
        )
        # Every staged row confirms its xref entry, changed or not, so the xref's run_id says which run
        # last delivered the record (what `crmflow migrate` reconciles against). A re-delivery within the
        # same run writes nothing. Rows inserted by ``up`` are not visible to the table scan of this same
        # statement, hence both joins.
        xref = (
            "xr as (insert into crm.xref as x (entity, source, source_id, target_id, golden_id, run_id) "
            f"select '{self.entity}', j.source, j.external_id, coalesce(up.id, t.id), j.golden_id, j.run_id "
            "from joined j left join up using (external_id) "
            f"left join crm.{self.table} t on t.external_id = j.external_id "
            "where coalesce(up.id, t.id) is not null "
            "on conflict (entity, source, source_id) do update set target_id = excluded.target_id, "
            "golden_id = excluded.golden_id, run_id = excluded.run_id, updated_at = now() "
            "where (x.target_id, x.golden_id, x.run_id) is distinct from "
            "(excluded.target_id, excluded.golden_id, excluded.run_id))"
        )
        ctes = [latest, joined, upsert, xref]
        parked = "'{}'::bigint[]"
        if self.is_child:
            record = "to_jsonb(l) - array['seq', " + ", ".join(f"'{n}'" for n, _ in ORIGIN_COLUMNS) + "]"
            ctes += [
                # A record written now supersedes an older version of it still parked.
                "unparked as (delete from crm.parked p using joined j "
                f"where p.entity = '{self.entity}' and p.external_id = j.external_id)",
                "orphans as (select * from latest l where not exists "
                f"(select 1 from crm.accounts a where a.external_id = l.{self.parent_field}))",
                "park as (insert into crm.parked as p (entity, external_id, parent_external_id, record, "
                "source_topic, source_partition, source_offset, raw_key, raw_value, run_id, source_position) "
                f"select '{self.entity}', l.external_id, l.{self.parent_field}, {record}, l._topic, "
                "l._partition, l._offset, l._key, l._value, l.run_id, l.source_position from orphans l "
                "on conflict (entity, external_id) do update set "
                "parent_external_id = excluded.parent_external_id, record = excluded.record, "
                "source_topic = excluded.source_topic, source_partition = excluded.source_partition, "
                "source_offset = excluded.source_offset, raw_key = excluded.raw_key, "
                "raw_value = excluded.raw_value, run_id = excluded.run_id, "
                "source_position = excluded.source_position, last_seen_at = now(), "
                "dead_rule = null, dead_field = null, dead_error = null "
                # A re-delivery of the same record leaves the parked row as it is.
                "where (p.record, p.parent_external_id, p.source_topic, p.source_partition, p.source_offset) "
                "is distinct from (excluded.record, excluded.parent_external_id, excluded.source_topic, "
                "excluded.source_partition, excluded.source_offset))",
            ]
            parked = "(select coalesce(array_agg(seq), '{}') from orphans)"
        return (
            f"with {', '.join(ctes)} select (select count(*) from latest), "
            f"count(*) filter (where inserted), count(*) filter (where not inserted), {parked} from up"
        )


def _sql_type(copy_type: str) -> str:
    return {"int8": "bigint", "int4": "integer"}.get(copy_type, copy_type)


ACCOUNT = EntityTable(
    "account",
    "accounts",
    "customer_id",
    (
        Column("external_id", "text", field="customer_id"),
        *_text(
            "full_name",
            "first_name",
            "last_name",
            "email",
            "phone",
            "street",
            "city",
            "postal_code",
            "country",
            "region",
        ),
        Column("birth_date", "date"),
        Column("customer_since", "date"),
        *_LINEAGE,
    ),
)
CONTACT = EntityTable(
    "contact",
    "contacts",
    "contact_id",
    (
        Column("external_id", "text", field="contact_id"),
        *_text("customer_id", "full_name", "first_name", "last_name", "email", "phone", "job_title"),
        *_LINEAGE,
    ),
    parent_field="customer_id",
)
SALE = EntityTable(
    "sale",
    "sales",
    "sale_id",
    (
        Column("external_id", "text", field="sale_id"),
        Column("customer_id", "text"),
        Column("total_sales", "numeric"),
        Column("currency", "text"),
        Column("original_amount", "numeric"),
        Column("original_currency", "text"),
        Column("sale_date", "date"),
        Column("product", "text"),
        *_LINEAGE,
    ),
    parent_field="customer_id",
)
CASE = EntityTable(
    "case",
    "cases",
    "case_id",
    (
        Column("external_id", "text", field="case_id"),
        Column("customer_id", "text"),
        Column("case_creation_date", "date"),
        *_text("subject", "status", "priority"),
        *_LINEAGE,
    ),
    parent_field="customer_id",
)

# Parents first: within one transaction a child then finds the account written by the same batch.
TABLES: dict[str, EntityTable] = {t.entity: t for t in (ACCOUNT, CONTACT, SALE, CASE)}
CHILDREN = tuple(t for t in TABLES.values() if t.is_child)
