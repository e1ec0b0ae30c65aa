"""The PostgreSQL sink on the real database: migrations, values and keys, idempotence, parking, refusals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from sinks.exceptions import MigrationError
from sinks.postgres import PostgresSink, apply_migrations, load_migrations
from sinks.postgres.migrate import Migration

pytestmark = pytest.mark.integration

Query = Callable[[str, str], list[tuple[Any, ...]]]
TABLES = ("accounts", "contacts", "sales", "cases", "xref", "parked")


def snapshot(query: Query, dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every target table, in a stable order."""
    return {t: query(dsn, f"select * from crm.{t} order by 1, 2, 3") for t in TABLES}


def test_migrations_apply_once_and_are_idempotent(pg_dsn_factory: Callable[[], str], query: Query) -> None:
    dsn = pg_dsn_factory()
    first = apply_migrations(dsn)
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert apply_migrations(dsn) == []
    tables = {r[0] for r in query(dsn, "select table_name from information_schema.tables where table_schema = 'crm'")}
    assert {"accounts", "contacts", "sales", "cases", "xref", "parked", "migration_audit", "golden_merges",
            "schema_migrations"} <= tables


def test_an_edited_applied_migration_is_refused(pg_dsn_factory: Callable[[], str]) -> None:
    dsn = pg_dsn_factory()
    apply_migrations(dsn)
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited\n") for m in load_migrations()]
    with pytest.raises(MigrationError, match="different contents"):
        apply_migrations(dsn, edited)


def test_accounts_and_children_land_with_their_values_and_keys(sink: Any, query: Query, records: Any) -> None:
    batch = (records.sink_records("account", [records.account(i) for i in range(3)])
             + records.sink_records("contact", [records.contact(1, 0), records.contact(2, 2)])
             + records.sink_records("sale", [records.sale(1, 1)])
             + records.sink_records("case", [records.case(1, 2)]))
    result = sink.write_batch(batch)
    assert (result.rejects, result.parked, result.written) == ([], [], 7)
    dsn = sink._dsn
    acc = query(dsn, "select external_id, full_name, email, phone, country, birth_date, customer_since, "
                     "quality_flags, run_id, source, source_position from crm.accounts order by external_id")
    assert acc[1] == ("C0000001", "Ann Lee1", "ann1@example.com", "+14155550123", "US", date(1980, 1, 2),
                      date(2010, 3, 4), ["phone_missing"], "run-1", "legacy", "customers.csv:2")
    fk = query(dsn, "select c.external_id, a.external_id from crm.contacts c join crm.accounts a "
                    "on a.id = c.account_id order by 1")
    assert fk == [("K0000001", "C0000000"), ("K0000002", "C0000002")]
    sale = query(dsn, "select s.total_sales, s.original_amount, s.currency, s.sale_date, a.external_id "
                      "from crm.sales s join crm.accounts a on a.id = s.account_id")
    assert sale == [(Decimal("1234.50"), Decimal("1143.06"), "USD", date(2023, 7, 8), "C0000001")]
    case = query(dsn, "select c.case_creation_date, a.external_id from crm.cases c join crm.accounts a "
                      "on a.id = c.account_id")
    assert case == [(date(2024, 1, 9), "C0000002")]
    xref = query(dsn, "select x.entity, x.source_id from crm.xref x order by 1, 2")
    assert len(xref) == 7 and ("contact", "K0000002") in xref
    assert query(dsn, "select count(*) from crm.xref x join crm.accounts a on x.entity = 'account' "
                      "and a.id = x.target_id and a.external_id = x.source_id") == [(3,)]
    audit = query(dsn, "select entity, records, inserted, offsets from crm.migration_audit where stage = 'sink' "
                       "order by id")
    assert audit[0] == ("account", 3, 3, {"test.mapped.account[0]": {"first": 0, "last": 2}})


def test_redelivering_a_batch_changes_nothing(sink: Any, query: Query, records: Any) -> None:
    batch = (records.sink_records("account", [records.account(i) for i in range(5)])
             + records.sink_records("contact", [records.contact(i, i) for i in range(5)])
             + records.sink_records("contact", [records.contact(9, 99)], first_offset=5))  # parked
    first = sink.write_batch(batch)
    before = snapshot(query, sink._dsn)
    again = sink.write_batch(batch)
    assert snapshot(query, sink._dsn) == before  # same rows, same ids, same updated_at
    assert (first.written, again.written, again.unchanged) == (10, 0, 10)
    assert len(again.parked) == 1
    assert query(sink._dsn, "select count(*), count(distinct external_id) from crm.accounts") == [(5, 5)]


def test_a_changed_record_updates_its_row_only(sink: Any, query: Query, records: Any) -> None:
    sink.write_batch(records.sink_records("account", [records.account(1), records.account(2)]))
    before: dict[str, Any] = dict(query(sink._dsn, "select external_id, updated_at from crm.accounts"))
    result = sink.write_batch(records.sink_records("account", [records.account(1, city="Shelbyville"),
                                                               records.account(2, run_id="run-2")]))
    assert (result.written, result.unchanged) == (1, 1)  # a new run id alone is not a change
    after: dict[str, Any] = dict(query(sink._dsn, "select external_id, updated_at from crm.accounts"))
    assert after["C0000001"] > before["C0000001"] and after["C0000002"] == before["C0000002"]


def test_the_latest_version_in_a_batch_wins(sink: Any, query: Query, records: Any) -> None:
    sink.write_batch(records.sink_records("account", [records.account(1, city="Old"), records.account(1, city="New")]))
    assert query(sink._dsn, "select city from crm.accounts") == [("New",)]


def test_a_child_before_its_parent_is_parked_then_written_when_the_parent_arrives(
    sink: Any, query: Query, records: Any
) -> None:
    first = sink.write_batch(records.sink_records("contact", [records.contact(1, 7)])
                             + records.sink_records("sale", [records.sale(1, 7)]))
    assert sorted(first.parked) == [0, 1] and first.written == 0
    assert sink.held() == {"contact": 1, "sale": 1, "case": 0}
    assert query(sink._dsn, "select count(*) from crm.contacts") == [(0,)]
    second = sink.write_batch(records.sink_records("account", [records.account(7)]))
    assert second.parked == []
    assert sink.held() == {"contact": 0, "sale": 0, "case": 0}
    rows = query(sink._dsn, "select c.external_id, c.email, a.external_id from crm.contacts c "
                            "join crm.accounts a on a.id = c.account_id")
    assert rows == [("K0000001", "bo1@example.com", "C0000007")]
    assert query(sink._dsn, "select total_sales from crm.sales") == [(Decimal("1234.50"),)]
    assert sink.dead_letters(final=True) == []
    # The run of the children owns their resolution's audit rows, so a rollback of that run removes them.
    assert query(sink._dsn, "select stage, entity, run_id, inserted from crm.migration_audit "
                            "where stage like '%-resolve' order by entity") == [
        ("sink-resolve", "contact", "run-1", 1), ("sink-resolve", "sale", "run-1", 1)]


def test_a_newer_version_supersedes_a_parked_one(sink: Any, query: Query, records: Any) -> None:
    sink.write_batch(records.sink_records("contact", [records.contact(1, 7, job_title="Old")]))
    sink.write_batch(records.sink_records("account", [records.account(7)])
                     + records.sink_records("contact", [records.contact(1, 7, job_title="New")], first_offset=1))
    assert query(sink._dsn, "select job_title from crm.contacts") == [("New",)]
    assert sink.held()["contact"] == 0


def test_orphans_are_dead_lettered_at_the_end_of_a_drain_and_forgotten_once_acknowledged(
    sink: Any, records: Any
) -> None:
    sink.write_batch(records.sink_records("case", [records.case(3, 404)], first_offset=17))
    assert sink.dead_letters(final=False) == []  # the deadline (an hour) has not passed
    dead = sink.dead_letters(final=True)
    assert [(d.entity, d.rule, d.field, d.topic, d.offset, d.raw_value) for d in dead] == [
        ("case", "orphan", "customer_id", "test.mapped.case", 17, b"avro-bytes")]
    assert "C0000404" in dead[0].error and "Broken" not in dead[0].error
    assert sink.dead_letters(final=False) == dead  # held until acknowledged
    sink.ack_dead_letters(dead)
    assert sink.dead_letters(final=True) == []


def test_orphans_past_their_deadline_are_dead_lettered(pg_dsn_factory: Callable[[], str], records: Any) -> None:
    s = PostgresSink(pg_dsn_factory(), orphan_timeout_s=0)
    s.setup()
    try:
        s.write_batch(records.sink_records("contact", [records.contact(1, 5)]))
        assert [d.rule for d in s.dead_letters(final=False)] == ["orphan"]
    finally:
        s.close()


def test_a_record_the_database_refuses_is_rejected_and_the_rest_of_its_batch_lands(
    sink: Any, query: Query, records: Any
) -> None:
    accounts = [records.account(i) for i in range(10)]
    accounts[3] = records.account(3, phone="0155 not e164")
    accounts[7] = records.account(7, country="usa")
    sales = [records.sale(1, 0), records.sale(2, 0, currency="dollars")]
    batch = records.sink_records("account", accounts) + records.sink_records("sale", sales)
    result = sink.write_batch(batch)
    got = sorted((r.index, r.rule, r.field) for r in result.rejects)
    assert got == [(3, "constraint", "phone"), (7, "constraint", "country"), (11, "constraint", "currency")]
    for r in result.rejects:  # names the constraint, never the value
        assert "not e164" not in r.error and "usa" not in r.error and "dollars" not in r.error
    assert query(sink._dsn, "select count(*) from crm.accounts") == [(8,)]
    assert query(sink._dsn, "select external_id from crm.sales") == [("S0000001",)]


def test_a_value_postgres_cannot_store_is_rejected(sink: Any, query: Query, records: Any) -> None:
    batch = records.sink_records("account", [records.account(1), records.account(2, street="nul\x00byte")])
    result = sink.write_batch(batch)
    assert [(r.index, r.rule) for r in result.rejects] == [(1, "invalid_value")]
    assert "byte" not in result.rejects[0].error
    assert query(sink._dsn, "select external_id from crm.accounts") == [("C0000001",)]


def test_a_parked_record_refused_when_its_parent_arrives_is_dead_lettered(sink: Any, records: Any) -> None:
    sink.write_batch(records.sink_records("contact", [records.contact(1, 3, email="no-at-sign")]))
    sink.write_batch(records.sink_records("account", [records.account(3)]))
    dead = sink.dead_letters(final=False)
    assert [(d.entity, d.rule, d.field) for d in dead] == [("contact", "constraint", "email")]


def test_an_unreachable_database_is_a_transient_error(records: Any) -> None:
    from sinks.exceptions import SinkTransientError

    s = PostgresSink("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2", migrate=False)
    with pytest.raises(SinkTransientError):
        s.write_batch(records.sink_records("account", [records.account(1)]))
    with pytest.raises(psycopg.Error):
        psycopg.connect("host=127.0.0.1 port=1 dbname=nothing connect_timeout=2")
