"""Reading the target CRM for validation: rows by id, account links through the xref, extra ids, dead letters.

All SQL is written for the schema ``crm`` and run in the target's schema (:func:`sinks.postgres.migrate.in_schema`);
table and column names come from :mod:`sinks.postgres.tables`, never from input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from crmflow.entities import business_fields, id_field
from crmflow.pii import DEFAULT_POLICIES, PiiConfig, partial_email, partial_phone, partial_text
from sinks.postgres.migrate import check_schema, in_schema
from sinks.postgres.tables import TABLES

_CDC_COLUMN = "source_lsn"


def normalise(value: Any) -> Any:
    """One comparable form for a mapped value and a column value: dates as ISO text, amounts with two
    decimals, lists sorted, everything else as it is."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, list | tuple):
        return tuple(sorted(str(v) for v in value))
    return value


def pii_fields(cfg: Any, entity: str) -> frozenset[str]:
    """Fields of ``entity`` holding personal data: the contract's defaults, full_name, and the config's rules."""
    pii: PiiConfig = cfg.pii or PiiConfig()
    configured = set(pii.entities.of(entity))
    known = set(business_fields(entity))
    return frozenset(((set(DEFAULT_POLICIES) | {"full_name"}) & known) | configured)


def display(value: Any, field: str, pii: bool) -> str | None:
    """A value as a report shows it: PII fields in their partial form (``j***@example.com``, ``*** *** 0123``)."""
    if value is None:
        return None
    text = ", ".join(value) if isinstance(value, tuple) else str(value)
    if not pii:
        return text
    if field == "email":
        return partial_email(text)
    if field == "phone":
        return partial_phone(text)
    return partial_text(text)


class TargetReader:
    """Queries of one target schema on a connection the caller owns (read only)."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, *, system: str | None = None) -> None:
        self.conn = conn
        self.schema = check_schema(schema)
        self.system = system
        self._has_cdc_column: bool | None = None
        self._soft_deletes: bool | None = None
        self._seen_table = False

    def sql(self, text: str) -> bytes:
        return in_schema(text, self.schema).encode()

    def fetch(self, text: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return list(cur.execute(self.sql(text), params).fetchall())

    # ------------------------------------------------------------------------------------------ CDC

    def cdc_note(self) -> str:
        """Whether rows carry a CDC source position. Rows written by the snapshot carry their file:line (or
        table row) in ``source_position``, compared with the source's current one (a difference counts the
        row as in flight). A column for the change stream's position (``source_lsn``) comes with CDC apply;
        until the target has it, CDC positions are not compared (a no-op)."""
        rows = self.fetch("select 1 from information_schema.columns where table_schema = %s and column_name = %s",
                          (self.schema, _CDC_COLUMN))  # fmt: skip
        self._has_cdc_column = bool(rows)
        if rows:
            return f"rows carry {_CDC_COLUMN}: rows whose position differs from the source's are counted in flight"
        return (f"no {_CDC_COLUMN} column in the target yet (CDC apply is not built): in-flight detection uses "
                "source_position only")  # fmt: skip

    # ----------------------------------------------------------------------------------------- rows

    def live(self, alias: str = "t") -> str:
        """The condition of a row that is there: a soft-deleted row (``deleted_at``, migration 0008) is not."""
        if self._soft_deletes is None:
            self._soft_deletes = bool(self.fetch(
                "select 1 from information_schema.columns where table_schema = %s and column_name = 'deleted_at'",
                (self.schema,)))  # fmt: skip
        return f"{alias}.deleted_at is null" if self._soft_deletes else "true"

    def _columns(self, entity: str) -> str:
        own = id_field(entity)
        cols = ["t.id", "t.external_id", "t.source_position", "t.run_id", "t.golden_id"]
        cols += [f"t.{f}" for f in business_fields(entity) if f != own]
        cols += ["t.quality_flags", "t.source"]
        if TABLES[entity].is_child:
            cols.append("t.account_id")
        return ", ".join(dict.fromkeys(cols))

    def rows(self, entity: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Rows of ``entity`` by external id."""
        return self.rows_by_external_id(entity, ids)

    def rows_by_external_id(self, entity: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        table = TABLES[entity].table
        found = self.fetch(f"select {self._columns(entity)} from crm.{table} t where t.external_id = any(%s) "
                           f"and {self.live()}", (list(ids),))  # fmt: skip
        return {str(r["external_id"]): r for r in found}

    def account_links(self, keys: Sequence[tuple[str, str]],
                      entity: str = "account") -> dict[tuple[str, str], dict[str, Any]]:
        """(source, source id) → the ``entity`` row (an account, or a golden contact) its xref entry points to,
        with ``members``: how many xref entries point to that row (a golden record of one member is that
        member)."""
        if not keys:
            return {}
        sources = [s for s, _ in keys]
        ids = [i for _, i in keys]
        table = TABLES[entity].table
        found = self.fetch(
            "with k as (select * from unnest(%s::text[], %s::text[]) as k (source, source_id)) "
            f"select x.source as _source, x.source_id as _source_id, {self._columns(entity)}, "
            "(select count(*) from crm.xref y where y.entity = %s and y.target_id = x.target_id) as members "
            "from k join crm.xref x on x.entity = %s and x.source = k.source and x.source_id = k.source_id "
            f"left join crm.{table} t on t.id = x.target_id and {self.live()}",
            (sources, ids, entity, entity),
        )
        return {(str(r["_source"]), str(r["_source_id"])): r for r in found}

    def count(self, entity: str) -> int:
        row = self.fetch(f"select count(*) as n from crm.{TABLES[entity].table} t where {self.live()}")
        return int(row[0]["n"])

    def add_seen(self, entity: str, ids: Sequence[str]) -> None:
        """Remember target ids the sources reached, in a temporary table of this session (not in memory:
        millions of ids), for :meth:`extra_ids`."""
        if not self._seen_table:
            self.conn.execute("create temp table if not exists _validate_seen (entity text, external_id text)")
            self.conn.execute("truncate _validate_seen")
            self._seen_table = True
        if ids:
            with self.conn.cursor() as cur, cur.copy("copy _validate_seen (entity, external_id) from stdin") as copy:
                for ident in ids:
                    copy.write_row((entity, ident))

    def extra_ids(self, entity: str, *, run_id: str | None) -> Iterator[str]:
        """External ids of ``entity`` rows (this system's, or only ``run_id``'s when given) that no source
        record reached (:meth:`add_seen`)."""
        table = TABLES[entity].table
        where = f"(t.system is null or t.system = %s) and {self.live()}"
        params: list[Any] = [self.system]
        if run_id is not None:
            where += " and t.run_id = %s"
            params.append(run_id)
        if self._seen_table:
            self.conn.execute("analyze _validate_seen")
            where += (" and not exists (select 1 from _validate_seen s where s.entity = %s "
                      "and s.external_id = t.external_id)")  # fmt: skip
            params.append(entity)
        with self.conn.cursor(name=f"extra_{entity}") as cur:
            cur.itersize = 10000
            cur.execute(self.sql(f"select t.external_id from crm.{table} t where {where}"), params)
            for (ext,) in cur:
                yield str(ext)

    def dead_letter_rules(self, positions: Sequence[str], entity: str) -> dict[str, str]:
        """Source position → rule of an open or resolved-as-rejected dead letter of ``entity`` (the sink's
        rejections: orphans, refusals), from the ledger (brought up to date by the caller)."""
        if not positions:
            return {}
        found = self.fetch(
            "select origin, rule from crm.dead_letters where status = 'open' and entity = %s and origin = any(%s)",
            (entity, list(positions)),
        )
        return {str(r["origin"]): str(r["rule"]) for r in found}
