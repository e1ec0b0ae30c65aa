"""The PostgreSQL sink applying changes (records with ``source_lsn``, ``deleted``, ``unchanged_fields``) on a real
database: stale and replayed events change nothing, hard and soft deletes with their children, unchanged
fields keep the stored value (from the table, or from an earlier record of the same id in the batch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest

from sinks.postgres import PostgresSink

pytestmark = pytest.mark.integration


@pytest.fixture
def make_sink(pg_dsn_factory: Callable[[], str]) -> Iterator[Callable[[Literal["hard", "soft"]], PostgresSink]]:
    sinks: list[PostgresSink] = []

    def make(deletes: Literal["hard", "soft"]) -> PostgresSink:
        s = PostgresSink(pg_dsn_factory(), deletes=deletes)
        s.setup()
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.close()


def _change(records: Any, entity: str, value: dict[str, Any], lsn: int, **extra: Any) -> Any:
    return records.sink_records(entity, [{**value, "source_lsn": lsn, **extra}])


def test_a_stale_or_replayed_change_never_overwrites_a_newer_row(make_sink: Any, records: Any, query: Any) -> None:
    sink = make_sink("hard")
    old = records.account(1)
    sink.write_batch(_change(records, "account", {**old, "city": "Boston"}, 200))
    result = sink.write_batch(_change(records, "account", {**old, "city": "Stale"}, 100))  # older LSN
    assert result.written == 0
    sink.write_batch(_change(records, "account", {**old, "city": "Boston"}, 200))  # replayed: same LSN, same values
    assert query(sink._dsn, "select city, source_lsn from crm.accounts") == [("Boston", 200)]
    # Equal values at a newer LSN: the position is recorded, so the event between stays stale.
    sink.write_batch(_change(records, "account", {**old, "city": "Boston"}, 300))
    sink.write_batch(_change(records, "account", {**old, "city": "Between"}, 250))
    assert query(sink._dsn, "select city, source_lsn from crm.accounts") == [("Boston", 300)]
    # In one batch, a replayed older event after the newer one: the newer one stays.
    sink.write_batch(_change(records, "account", {**old, "city": "Newer"}, 500)
                     + _change(records, "account", {**old, "city": "Older"}, 400))  # fmt: skip
    assert query(sink._dsn, "select city, source_lsn from crm.accounts") == [("Newer", 500)]


def test_unchanged_fields_keep_the_stored_value_or_the_batch_s_earlier_one(make_sink: Any, records: Any,
                                                                           query: Any) -> None:  # fmt: skip
    sink = make_sink("hard")
    acc = records.account(1)
    sink.write_batch(_change(records, "account", {**acc, "street": "1 Long Road", "city": "Boston"}, 100))
    sink.write_batch(_change(records, "account", {**acc, "street": None, "city": "Austin"}, 200,
                             unchanged_fields=["street"]))  # fmt: skip
    assert query(sink._dsn, "select street, city from crm.accounts") == [("1 Long Road", "Austin")]
    # In one batch: a change of the street, then a change leaving it unchanged: the first one's street.
    batch = (_change(records, "account", {**acc, "street": "2 New Street", "city": "Austin"}, 300)
             + _change(records, "account", {**acc, "street": None, "city": "Dallas"}, 400,
                       unchanged_fields=["street"]))  # fmt: skip
    sink.write_batch(batch)
    assert query(sink._dsn, "select street, city, source_lsn from crm.accounts") == [("2 New Street", "Dallas", 400)]


def test_a_hard_delete_takes_the_children_and_a_stale_event_does_not_bring_the_row_back(
    make_sink: Any, records: Any, query: Any
) -> None:
    sink = make_sink("hard")
    acc, kept = records.account(1), records.account(2)
    sink.write_batch(_change(records, "account", acc, 100) + _change(records, "account", kept, 101)
                     + _change(records, "contact", records.contact(1, 1), 102)
                     + _change(records, "contact", records.contact(2, 2), 103))  # fmt: skip
    sink.write_batch(_change(records, "account", acc, 150, deleted=True))
    dsn = sink._dsn
    assert query(dsn, "select external_id from crm.accounts") == [("C0000002",)]
    assert query(dsn, "select external_id from crm.contacts") == [("K0000002",)]
    assert query(dsn, "select entity, source_id from crm.xref order by 1, 2") == [("account", "C0000002"),
                                                                                  ("contact", "K0000002")]
    sink.write_batch(_change(records, "account", acc, 100))  # the insert, replayed: older than the delete
    assert query(dsn, "select count(*) from crm.accounts where external_id = 'C0000001'") == [(0,)]
    sink.write_batch(_change(records, "account", acc, 300))  # inserted again at the source, later
    assert query(dsn, "select count(*) from crm.accounts where external_id = 'C0000001'") == [(1,)]
    # A stale delete (older than the row) changes nothing.
    sink.write_batch(_change(records, "account", kept, 50, deleted=True))
    assert query(dsn, "select count(*) from crm.accounts where external_id = 'C0000002'") == [(1,)]


def test_a_soft_delete_marks_the_row_and_its_children_and_a_newer_insert_brings_it_back(
    make_sink: Any, records: Any, query: Any
) -> None:
    sink = make_sink("soft")
    acc = records.account(1)
    sink.write_batch(_change(records, "account", acc, 100) + _change(records, "contact", records.contact(1, 1), 101))
    # Insert then delete in one batch: the delete wins.
    sink.write_batch(_change(records, "account", {**acc, "city": "X"}, 140)
                     + _change(records, "account", acc, 150, deleted=True))  # fmt: skip
    dsn = sink._dsn
    assert query(dsn, "select deleted_at is not null, source_lsn, city from crm.accounts") == [
        (True, 150, acc.get("city"))
    ]
    assert query(dsn, "select deleted_at is not null from crm.contacts") == [(True,)]
    sink.write_batch(_change(records, "account", acc, 120))  # stale
    assert query(dsn, "select deleted_at is not null from crm.accounts") == [(True,)]
    sink.write_batch(_change(records, "account", acc, 200))
    assert query(dsn, "select deleted_at is null, source_lsn from crm.accounts") == [(True, 200)]
