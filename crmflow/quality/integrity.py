"""Consistency and integrity of the whole target, set-based (one query per check, at most ``LIMIT`` rows each):

- ``integrity``: cross-references pointing to no row, or to a row other than their golden record (or own id);
  children whose account is not the one their parent's cross-reference names (a broken golden link), or
  whose parent has no account at all (an orphan); absorbed golden ids that still have a row; children still
  parked; duplicate ids.
- ``reference``: currencies outside the config's ``reference.currency_rates`` (and its base currency),
  values of a ``lookup`` field outside its table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sinks.postgres.tables import CHILDREN, TABLES

if TYPE_CHECKING:
    from crmflow.quality.target import TargetReader
    from crmflow.quality.validate import Discrepancy

LIMIT = 1000


def integrity_issues(reader: TargetReader, cfg: Any) -> Iterator[Discrepancy]:
    from crmflow.quality.validate import Discrepancy

    for entity, t in TABLES.items():
        for r in reader.fetch(
            f"select x.source, x.source_id, x.target_id from crm.xref x where x.entity = %s "
            f"and not exists (select 1 from crm.{t.table} t where t.id = x.target_id) limit {LIMIT}",
            (entity,),
        ):
            yield Discrepancy("integrity", entity, str(r["source_id"]), "xref.target_id", "an existing row",
                              f"row id {r['target_id']} does not exist", "xref points to a row")
        # An account's entry names its golden record (or its own row); a child's names its own row and
        # carries the golden id of that row.
        # A golden contact's (contact dedupe) names its golden contact's row and carries that golden contact id.
        if not t.is_child:
            broken = "t.external_id is distinct from coalesce(x.golden_id, x.source_id)"
        elif t.golden_field:
            own = f"t.{t.golden_field}"
            broken = (f"(t.external_id is distinct from coalesce({own}, x.source_id) "
                      f"or x.golden_id is distinct from coalesce({own}, t.golden_id))")
        else:
            broken = "(t.external_id <> x.source_id or x.golden_id is distinct from t.golden_id)"
        for r in reader.fetch(
            f"select x.source_id, x.golden_id, t.external_id from crm.xref x join crm.{t.table} t "
            f"on t.id = x.target_id where x.entity = %s and {broken} limit {LIMIT}",
            (entity,),
        ):
            yield Discrepancy("integrity", entity, str(r["source_id"]), "xref.golden_id",
                              str(r["golden_id"] or r["source_id"]), str(r["external_id"]),
                              "xref consistent with the golden record")
        for r in reader.fetch(
            f"select external_id, count(*) as n from crm.{t.table} group by external_id having count(*) > 1 "
            f"limit {LIMIT}"
        ):
            yield Discrepancy("integrity", entity, str(r["external_id"]), "external_id", "unique",
                              f"{r['n']} rows", "unique key")
    for t in CHILDREN:
        # The account a child should hang off: its parent's xref entry (first source by name), as the sink finds it.
        for r in reader.fetch(
            f"select c.external_id, c.customer_id, c.account_id, p.target_id from crm.{t.table} c "
            "left join lateral (select x.target_id from crm.xref x where x.entity = 'account' "
            "and x.source_id = c.customer_id order by x.source limit 1) p on true "
            f"where p.target_id is distinct from c.account_id limit {LIMIT}"
        ):
            if r["target_id"] is None:
                yield Discrepancy("integrity", t.entity, str(r["external_id"]), "customer_id",
                                  "an account with this id", f"orphan: no account {r['customer_id']}",
                                  "no orphans")
            else:
                yield Discrepancy("integrity", t.entity, str(r["external_id"]), "account_id",
                                  f"account row {r['target_id']}", f"account row {r['account_id']}",
                                  "child linked to its parent's golden record")
    for entity, table in (("account", "accounts"), ("contact", "contacts")):
        for r in reader.fetch(
            f"select m.absorbed_golden_id, m.survivor_golden_id from crm.golden_merges m join crm.{table} a "
            f"on a.external_id = m.absorbed_golden_id where m.entity = %s limit {LIMIT}",
            (entity,),
        ):
            yield Discrepancy("integrity", entity, str(r["absorbed_golden_id"]), "golden_id",
                              f"merged into {r['survivor_golden_id']}", "row still present", "golden merges applied")
    for r in reader.fetch(f"select entity, external_id from crm.parked where dead_rule is null limit {LIMIT}"):
        yield Discrepancy("integrity", str(r["entity"]), str(r["external_id"]), "account_id", "an account",
                          "still parked, waiting for its account", "no orphans")
    yield from _reference(reader, cfg)


def _reference(reader: TargetReader, cfg: Any) -> Iterator[Discrepancy]:
    from crmflow.quality.validate import Discrepancy

    currencies = sorted({*cfg.reference.currency_rates, cfg.run.base_currency})
    for column in ("currency", "original_currency"):
        for r in reader.fetch(
            f"select external_id, {column} as v from crm.sales where {column} is not null "
            f"and not ({column} = any(%s)) limit {LIMIT}",
            (currencies,),
        ):
            yield Discrepancy("reference", "sale", str(r["external_id"]), column, f"one of {', '.join(currencies)}",
                              str(r["v"]), "reference.currency_rates")
    lookups = cfg.reference.lookups
    for entity, mapping in cfg.entities.items():
        for spec in mapping.fields:
            for step in spec.transform:
                table = step.params.get("table") if step.name == "lookup" else None
                if not table or table not in lookups:
                    continue
                allowed = sorted({str(v) for v in lookups[table].values()})
                for r in reader.fetch(
                    f"select external_id, {spec.target} as v from crm.{TABLES[entity].table} "
                    f"where {spec.target} is not null and not ({spec.target}::text = any(%s)) limit {LIMIT}",
                    (allowed,),
                ):
                    yield Discrepancy("reference", entity, str(r["external_id"]), spec.target,
                                      f"a value of reference.lookups.{table}", str(r["v"]), f"lookup {table}")
