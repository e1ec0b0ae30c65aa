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


@pytest.mark.parametrize("deletes", ["hard", "soft"])
def test_a_delete_and_an_insert_of_the_same_id_in_one_transaction_leave_the_row(
    make_sink: Any, records: Any, query: Any, deletes: Literal["hard", "soft"]
) -> None:
    """A change's LSN is its transaction's commit LSN, so a delete and a re-insert of one id in one transaction
    share it: the insert, after the delete in the stream, brings the row back, in the same batch or the next."""
    sink = make_sink(deletes)
    acc = records.account(1)
    sink.write_batch(_change(records, "account", acc, 100))
    sink.write_batch(_change(records, "account", acc, 200, deleted=True))
    sink.write_batch(_change(records, "account", {**acc, "city": "Again"}, 200))
    dsn = sink._dsn
    live = "select city, source_lsn from crm.accounts where deleted_at is null"
    assert query(dsn, live) == [("Again", 200)]
    sink.write_batch(_change(records, "account", acc, 300, deleted=True)
                     + _change(records, "account", {**acc, "city": "Once more"}, 300))  # fmt: skip
    assert query(dsn, live) == [("Once more", 300)]
    sink.write_batch(_change(records, "account", acc, 250))  # an older event, replayed: still stale
    assert query(dsn, live) == [("Once more", 300)]


@pytest.mark.parametrize("account_with_the_update", [False, True])
def test_a_change_leaving_fields_unchanged_takes_them_from_its_parked_insert(
    make_sink: Any, records: Any, query: Any, account_with_the_update: bool
) -> None:
    """A child inserted before its account arrived is parked; a change of it that left a (TOASTed) field unchanged
    has no row to keep the value from: it takes it from the parked insert, whether it is parked too (the account
    still missing) or written (the account in its batch)."""
    sink = make_sink("hard")
    case = records.case(1, 1, priority="Urgent", status="Open")
    sink.write_batch(_change(records, "case", case, 100))  # no account yet: parked
    update = _change(records, "case", {**case, "priority": None, "status": "Closed"}, 200,
                     unchanged_fields=["priority"])  # fmt: skip
    account = _change(records, "account", records.account(1), 50)
    if account_with_the_update:
        sink.write_batch(account + update)
    else:
        sink.write_batch(update)  # parked over the insert
        sink.write_batch(account)
    assert query(sink._dsn, "select priority, status, source_lsn from crm.cases") == [("Urgent", "Closed", 200)]
