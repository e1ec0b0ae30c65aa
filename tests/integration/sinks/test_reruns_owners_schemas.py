"""Re-runs, owners and schemas on the real database (issue 14, items 2, 5 and 13).

A re-run of unchanged data leaves every row, xref entry and its evidence untouched and is counted as
unchanged by :func:`sinks.postgres.report.run_counts`; a second source system is refused rows the first
owns (rule ``owned_by_other_source``) and cannot re-parent its children; a second schema is a separate
target with its own migrations."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from sinks.base import BatchResult, SinkRecord
from sinks.exceptions import MigrationError
from sinks.postgres import PostgresSink, apply_migrations
from sinks.postgres.report import EntityWriteCounts, run_counts

pytestmark = pytest.mark.integration

Query = Callable[[str, str], list[tuple[Any, ...]]]
TABLES = ("accounts", "contacts", "sales", "cases", "xref", "parked", "golden_merges")


def cid(n: int) -> str:
    return f"C{n:07d}"


@contextmanager
def sink(dsn: str, **kwargs: Any) -> Iterator[PostgresSink]:
    s = PostgresSink(dsn, **kwargs)
    s.setup()
    try:
        yield s
    finally:
        s.close()


def snapshot(query: Query, dsn: str, schema: str = "crm") -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every CRM table (updated_at, run_id and evidence included), in a stable order."""
    return {t: query(dsn, f"select * from {schema}.{t} order by 1, 2, 3") for t in TABLES}


def in_run(batch: Sequence[SinkRecord], run_id: str) -> list[SinkRecord]:
    """``batch`` as a later run delivers it: same values, another run id (what `crmflow migrate` does)."""
    return [r._replace(value={**r.value, "run_id": run_id}) for r in batch]


def demo_batch(records: Any, golden: bool = False) -> list[SinkRecord]:
    """Three customers (with dedupe: 1 and 2 in one cluster, evidence on 2) and a contact, sale and case
    of customer 1."""
    values = [records.account(n) for n in (1, 2, 3)]
    if golden:
        ev = json.dumps([{"rule": "email_exact", "score": 1.0, "matched_id": cid(1), "golden_id": cid(1),
                          "decision": "merged", "veto": None}])
        values = [
            records.account(1, golden_id=cid(1), merged_golden_ids=[], match_evidence=None,
                            quality_flags=["email_invalid"]),
            records.account(2, golden_id=cid(1), merged_golden_ids=[], match_evidence=ev, quality_flags=[],
                            full_name="Ann Lee1", last_name="Lee1", email="ann1@example.com"),
            records.account(3, golden_id=cid(3), merged_golden_ids=[], match_evidence=None),
        ]
    batch: list[SinkRecord] = records.sink_records("account", values)
    for entity, value in (("contact", records.contact(1, 1)), ("sale", records.sale(1, 1)),
                          ("case", records.case(1, 1))):
        batch += records.sink_records(entity, [value], 10)
    return batch


def no_rejects(result: BatchResult) -> BatchResult:
    assert (list(result.rejects), list(result.parked)) == ([], [])
    return result


@pytest.mark.parametrize("golden", [False, True], ids=["dedupe-off", "dedupe-on"])
def test_a_rerun_of_unchanged_data_touches_nothing_and_counts_as_unchanged(
    pg_dsn_factory: Callable[[], str], query: Query, records: Any, golden: bool
) -> None:
    dsn = pg_dsn_factory()
    batch = demo_batch(records, golden)
    with sink(dsn, system="demo") as s:
        first = no_rejects(s.write_batch(in_run(batch, "run-1")))
    before = snapshot(query, dsn)
    assert first.written > 0
    evidence = query(dsn, "select count(*) from crm.xref where evidence is not null")
    assert evidence == [(1 if golden else 0,)]

    # The second run: the deduper's state already knows every record, so it sends no evidence; members of
    # the cluster arrive one by one (each with its own quality flags), in another order.
    second = [r._replace(value={**r.value, "match_evidence": None}) if r.entity == "account" else r for r in batch]
    with sink(dsn, system="demo") as s:
        for record in reversed(in_run(second, "run-2")):
            result = no_rejects(s.write_batch([record]))
            assert result.written == 0
    assert snapshot(query, dsn) == before  # rows, run_id, updated_at, source_position, evidence

    audit = query(dsn, "select entity, sum(inserted), sum(updated), sum(unchanged) from crm.migration_audit "
                       "where run_id = 'run-2' group by entity order by entity")
    assert [(e, int(i), int(u)) for e, i, u, _ in audit] == [(e, 0, 0) for e in ("account", "case", "contact",
                                                                                 "sale")]
    counts = run_counts(dsn, "crm", "run-2")
    assert {e: (c.inserted, c.updated, c.unchanged) for e, c in counts.items()} == {
        "account": (0, 0, 3), "contact": (0, 0, 1), "sale": (0, 0, 1), "case": (0, 0, 1)}
    assert {e: (c.inserted, c.updated, c.unchanged) for e, c in run_counts(dsn, "crm", "run-1").items()} == {
        "account": (3, 0, 0), "contact": (1, 0, 0), "sale": (1, 0, 0), "case": (1, 0, 0)}
    if golden:
        assert (counts["account"].golden, counts["account"].merged) == (2, 1)


def test_run_counts_count_updates_golden_accounts_and_flags(
    pg_dsn_factory: Callable[[], str], records: Any
) -> None:
    dsn = pg_dsn_factory()
    batch = demo_batch(records, golden=True)
    with sink(dsn, system="demo") as s:
        no_rejects(s.write_batch(in_run(batch, "run-1")))
        changed = [r._replace(value={**r.value, "run_id": "run-2", "product": "Gadget"}) if r.entity == "sale"
                   else r._replace(value={**r.value, "run_id": "run-2"}) for r in batch]
        no_rejects(s.write_batch(changed))
        no_rejects(s.write_batch(changed))  # re-delivered within the run (a crash): counted once
    counts = run_counts(dsn, "crm", "run-2")
    assert isinstance(counts["sale"], EntityWriteCounts)
    assert (counts["sale"].inserted, counts["sale"].updated, counts["sale"].unchanged) == (0, 1, 0)
    assert (counts["account"].inserted, counts["account"].updated, counts["account"].unchanged) == (0, 0, 3)
    assert (counts["account"].golden, counts["account"].merged) == (2, 1)
    # Flags are read off the target rows: cluster 1's golden row took the flags of the member that wrote
    # it (2: none), customer 3's row has its own.
    assert counts["account"].flagged_values == {"phone_missing": 1}
    assert counts["account"].flagged_records == 1
    assert counts["contact"].flagged_values == {} and counts["contact"].golden is None


def test_a_redelivery_never_weakens_the_evidence(pg_dsn_factory: Callable[[], str], query: Query,
                                                 records: Any) -> None:
    dsn = pg_dsn_factory()
    decision = {"rule": "email_exact", "score": 1.0, "matched_id": cid(1), "golden_id": cid(1),
                "decision": "merged", "veto": None}
    later = {"rule": "fuzzy", "score": 8.1, "matched_id": cid(3), "golden_id": cid(1), "decision": "refused",
             "veto": "birth_date"}

    def member(ev: Any, run: str) -> list[SinkRecord]:
        value = records.account(2, golden_id=cid(1), merged_golden_ids=[], run_id=run,
                                match_evidence=None if ev is None else json.dumps(ev))
        out: list[SinkRecord] = records.sink_records("account", [value])
        return out

    def stored() -> Any:
        return query(dsn, "select evidence, run_id from crm.xref where source_id = 'C0000002'")[0]

    with sink(dsn, system="demo") as s:
        s.write_batch(member([decision], "run-1"))
        for weaker in (None, [], [{"rule": "email_exact", "matched_id": cid(1)}]):
            s.write_batch(member(weaker, "run-2"))
            assert stored() == ([decision], "run-1")
        s.write_batch(member([later], "run-3"))  # a new decision is added to what is known
        assert stored() == ([decision, later], "run-3")


def test_another_system_is_refused_what_the_first_owns(pg_dsn_factory: Callable[[], str], query: Query,
                                                       records: Any) -> None:
    dsn = pg_dsn_factory()
    with sink(dsn, system="demo") as s:
        no_rejects(s.write_batch(in_run(demo_batch(records), "demo-1")))
    before = snapshot(query, dsn)
    assert query(dsn, "select distinct system from crm.accounts union select distinct system from crm.xref") == [
        ("demo",)]

    # The other system: account 1 (other values), sale 1 (owned by demo), sale 2 and contact 9 of customer 1
    # (new ids, but their account is demo's), account 4 and its sale 4 (nobody's: written).
    other = records.sink_records("account", [records.account(1, full_name="Other One", run_id="other-1"),
                                             records.account(4, run_id="other-1")])
    other += records.sink_records("sale", [records.sale(1, 1, product="Other", run_id="other-1"),
                                           records.sale(2, 1, run_id="other-1"),
                                           records.sale(4, 4, run_id="other-1")], 10)
    other += records.sink_records("contact", [records.contact(9, 1, run_id="other-1")], 20)
    with sink(dsn, system="other") as s:
        result = s.write_batch(other)
        assert s.dead_letters(final=True) == []  # nothing of demo's is parked, none of its records leak
    refused = {other[r.index].origin: (r.rule, r.field) for r in result.rejects}
    assert refused == {
        "test.mapped.account[0]@0": ("owned_by_other_source", "customer_id"),
        "test.mapped.sale[0]@10": ("owned_by_other_source", "sale_id"),
        "test.mapped.sale[0]@11": ("owned_by_other_source", "customer_id"),
        "test.mapped.contact[0]@20": ("owned_by_other_source", "customer_id"),
    }
    errors = " ".join(r.error for r in result.rejects)
    assert "system demo" in errors and "C0000001" in errors and "S0000001" in errors
    assert "Other One" not in errors and "@example.com" not in errors  # ids and systems only, no PII
    assert list(result.parked) == []

    after = snapshot(query, dsn)
    for table in TABLES:  # demo's rows are exactly as they were; only the other system's new rows were added
        assert [r for r in before[table] if r not in after[table]] == [], table
    assert query(dsn, "select external_id, system from crm.accounts order by 1") == [
        (cid(1), "demo"), (cid(2), "demo"), (cid(3), "demo"), (cid(4), "other")]
    assert query(dsn, "select s.external_id, a.external_id, s.system from crm.sales s "
                      "join crm.accounts a on a.id = s.account_id order by 1") == [
        ("S0000001", cid(1), "demo"), ("S0000004", cid(4), "other")]
    # Audit and counts of the other run: its refused records are not delivered.
    counts = run_counts(dsn, "crm", "other-1")
    assert {e: (c.inserted, c.unchanged) for e, c in counts.items()} == {"account": (1, 0), "sale": (1, 0)}
    assert query(dsn, "select entity, sum(rejected) from crm.migration_audit where run_id = 'other-1' "
                      "group by entity order by 1") == [("account", 1), ("contact", 1), ("sale", 2)]


def test_a_child_parked_for_another_systems_account_is_refused_when_it_arrives(
    pg_dsn_factory: Callable[[], str], query: Query, records: Any
) -> None:
    dsn = pg_dsn_factory()
    with sink(dsn, system="other", orphan_timeout_s=3600) as s:
        result = s.write_batch(records.sink_records("sale", [records.sale(7, 1, run_id="other-1")]))
        assert list(result.parked) == [0]  # no account C0000001 anywhere yet
    with sink(dsn, system="demo") as s:
        no_rejects(s.write_batch(in_run(records.sink_records("account", [records.account(1)]), "demo-1")))
        assert s.held() == {"contact": 0, "sale": 0, "case": 0}  # the parked sale is not demo's
        assert s.dead_letters(final=True) == []
    with sink(dsn, system="other") as s:
        held = s.dead_letters(final=False)
        assert [(h.entity, h.rule, h.field) for h in held] == [("sale", "owned_by_other_source", "customer_id")]
        s.ack_dead_letters(held)
    assert query(dsn, "select count(*) from crm.sales") == [(0,)]


def test_a_second_schema_is_a_separate_target(pg_dsn_factory: Callable[[], str], query: Query,
                                              records: Any) -> None:
    dsn = pg_dsn_factory()
    with sink(dsn, system="demo") as s:
        no_rejects(s.write_batch(in_run(demo_batch(records), "demo-1")))
    before = snapshot(query, dsn)
    other = [r._replace(value={**r.value, "run_id": "other-1", "full_name": "Other Name"})
             if r.entity == "account" else in_run([r], "other-1")[0] for r in demo_batch(records)]
    with sink(dsn, schema="crm_other", system="other") as s:
        no_rejects(s.write_batch(other))
    assert snapshot(query, dsn) == before
    assert query(dsn, "select external_id, full_name, system from crm_other.accounts order by 1") == [
        (cid(n), "Other Name", "other") for n in (1, 2, 3)]
    assert query(dsn, "select count(*) from crm_other.sales s join crm_other.accounts a on a.id = s.account_id") \
        == [(1,)]
    # Migrations are tracked per schema; applying them again changes nothing in either.
    versions = query(dsn, "select version from crm_other.schema_migrations order by 1")
    assert versions == query(dsn, "select version from crm.schema_migrations order by 1") and len(versions) >= 4
    assert apply_migrations(dsn, schema="crm_other") == [] and apply_migrations(dsn) == []
    counts = run_counts(dsn, "crm_other", "other-1")
    assert counts["account"].inserted == 3 and run_counts(dsn, "crm", "other-1") == {}


@pytest.mark.parametrize("schema", ["CRM", "crm; drop table x", "1crm", "crm.x", ""])
def test_a_schema_that_is_not_a_plain_identifier_is_refused(pg_dsn_factory: Callable[[], str], schema: str) -> None:
    with pytest.raises(MigrationError, match="target schema"):
        apply_migrations(pg_dsn_factory(), schema=schema)
    with pytest.raises(MigrationError, match="target schema"):
        PostgresSink("dbname=unused", schema=schema)
