"""Golden contacts on the real database (contact dedupe): one contact row per golden contact id on the golden
record's parent account, an xref entry for every source contact with its evidence, merges of golden contacts
(re-pointed xref entries, the absorbed row dropped, the merge logged), parked golden contacts, and idempotent
re-delivery."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sinks.base import SinkRecord
from sinks.postgres import PostgresSink

pytestmark = pytest.mark.integration

Query = Callable[[str, str], list[tuple[Any, ...]]]
TABLES = ("accounts", "contacts", "xref", "parked", "golden_merges")


def kid(n: int) -> str:
    return f"K{n:07d}"


def cid(n: int) -> str:
    return f"C{n:07d}"


def evidence(matched: int, golden: int) -> list[dict[str, Any]]:
    return [{"rule": "email", "score": None, "matched_id": kid(matched), "golden_id": kid(golden),
             "decision": "merged", "veto": None}]


def golden_contact(records: Any, n: int, golden: int, parent: int, version: int = 1,
                   merged: tuple[int, ...] = ()) -> dict[str, Any]:
    """Contact record of source contact ``n`` in the cluster of golden contact ``golden`` (whose parent is the
    account ``parent``), carrying version ``version`` of the golden values."""
    value: dict[str, Any] = records.contact(
        n, parent, contact_golden_id=kid(golden), merged_contact_golden_ids=[kid(m) for m in merged],
        match_evidence=json.dumps(evidence(golden, golden)) if n != golden else None,
        full_name=f"Gold{golden} V{version}", job_title=f"Title{version}")
    return value


def batch(records: Any, entity: str, values: list[dict[str, Any]], first_offset: int = 0) -> list[SinkRecord]:
    out: list[SinkRecord] = records.sink_records(entity, values, first_offset)
    return out


def contact_rows(query: Query, dsn: str) -> list[tuple[Any, ...]]:
    """(external id, golden contact id, parent account's golden id, name, account row's external id)."""
    return query(dsn, "select c.external_id, c.contact_golden_id, c.golden_id, c.full_name, a.external_id "
                      "from crm.contacts c join crm.accounts a on a.id = c.account_id order by 1")


def contact_xref(query: Query, dsn: str) -> list[tuple[Any, ...]]:
    """(source contact, external id of its row, xref golden id, evidence) per contact xref entry."""
    return query(dsn, "select x.source_id, c.external_id, x.golden_id, x.evidence from crm.xref x "
                      "left join crm.contacts c on c.id = x.target_id where x.entity = 'contact' order by 1")


def snapshot(query: Query, dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    return {t: query(dsn, f"select * from crm.{t} order by 1, 2") for t in TABLES}


def _accounts(records: Any, *ns: int) -> list[SinkRecord]:
    return batch(records, "account", [records.account(n, golden_id=cid(n)) for n in ns])


def test_one_contact_row_per_golden_contact_and_xref_for_every_member(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    sink.write_batch(_accounts(records, 1, 2))
    values = [golden_contact(records, 1, 1, 1), golden_contact(records, 2, 1, 1, 2),
              golden_contact(records, 3, 3, 2), golden_contact(records, 4, 1, 2, 3)]
    result = sink.write_batch(batch(records, "contact", values))
    assert result.rejects == [] and result.parked == []
    # The latest record of the cluster writes the row, on the golden record's parent (K4 carries C2).
    assert contact_rows(query, dsn) == [(kid(1), kid(1), cid(2), "Gold1 V3", cid(2)),
                                        (kid(3), kid(3), cid(2), "Gold3 V1", cid(2))]
    assert contact_xref(query, dsn) == [(kid(1), kid(1), kid(1), None), (kid(2), kid(1), kid(1), evidence(1, 1)),
                                        (kid(3), kid(3), kid(3), None), (kid(4), kid(1), kid(1), evidence(1, 1))]
    before = snapshot(query, dsn)
    again = sink.write_batch(batch(records, "contact", values))
    assert again.written == 0 and snapshot(query, dsn) == before, "a re-delivery changes nothing"


def test_a_bridging_contact_merges_the_absorbed_golden_contact_into_its_survivor(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    sink.write_batch(_accounts(records, 1))
    sink.write_batch(batch(records, "contact", [golden_contact(records, 2, 2, 1), golden_contact(records, 3, 2, 1)]))
    bridged = [golden_contact(records, 1, 1, 1, 2, merged=(2,))]
    sink.write_batch(batch(records, "contact", bridged, first_offset=2))
    assert contact_rows(query, dsn) == [(kid(1), kid(1), cid(1), "Gold1 V2", cid(1))]
    assert [(s, row, g) for s, row, g, _ in contact_xref(query, dsn)] == [
        (kid(1), kid(1), kid(1)), (kid(2), kid(1), kid(1)), (kid(3), kid(1), kid(1))]
    assert query(dsn, "select entity, absorbed_golden_id, survivor_golden_id, record_id from crm.golden_merges") == [
        ("contact", kid(2), kid(1), kid(1))]
    before = snapshot(query, dsn)
    # Re-delivered, with a stale member of the absorbed cluster: it only confirms its xref entry.
    sink.write_batch(batch(records, "contact", [golden_contact(records, 3, 2, 1), *bridged], first_offset=2))
    assert snapshot(query, dsn) == before


def test_an_account_merge_keeps_the_golden_contact_ids_of_contact_xref_entries(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    sink.write_batch(_accounts(records, 1, 2))
    sink.write_batch(batch(records, "contact", [golden_contact(records, 5, 5, 2), golden_contact(records, 6, 5, 2)]))
    sink.write_batch(batch(records, "account", [records.account(2, golden_id=cid(1), merged_golden_ids=[cid(2)])]))
    assert contact_rows(query, dsn) == [(kid(5), kid(5), cid(1), "Gold5 V1", cid(1))], "moved to the survivor"
    assert [g for _, _, g, _ in contact_xref(query, dsn)] == [kid(5), kid(5)]


def test_parked_golden_contacts_land_on_the_survivor_of_a_merge_made_while_they_waited(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    # The cluster K2 waits for account C9; K1 (on C1, there) then absorbs it.
    parked = sink.write_batch(batch(records, "contact", [golden_contact(records, 2, 2, 9),
                                                         golden_contact(records, 3, 2, 9)]))
    assert len(parked.parked) == 2 and contact_rows(query, dsn) == []
    sink.write_batch(_accounts(records, 1))
    sink.write_batch(batch(records, "contact", [golden_contact(records, 1, 1, 1, 2, merged=(2,))], first_offset=2))
    sink.write_batch(_accounts(records, 9))
    assert query(dsn, "select count(*) from crm.parked") == [(0,)]
    assert contact_rows(query, dsn) == [(kid(1), kid(1), cid(1), "Gold1 V2", cid(1))], "one row, the survivor's"
    assert [(s, row, g) for s, row, g, _ in contact_xref(query, dsn)] == [
        (kid(1), kid(1), kid(1)), (kid(2), kid(1), kid(1)), (kid(3), kid(1), kid(1))]


def test_a_merge_into_a_survivor_without_a_row_renames_the_absorbed_row(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    sink.write_batch(_accounts(records, 1))
    sink.write_batch(batch(records, "contact", [golden_contact(records, 2, 2, 1)]))
    # K1 bridges K2's cluster but waits for its own parent C9: the cluster keeps one row, now K1's.
    out = sink.write_batch(batch(records, "contact", [golden_contact(records, 1, 1, 9, merged=(2,))], first_offset=1))
    assert len(out.parked) == 1
    assert contact_rows(query, dsn) == [(kid(1), kid(1), cid(1), "Gold2 V1", cid(1))]
    sink.write_batch(_accounts(records, 9))
    assert contact_rows(query, dsn) == [(kid(1), kid(1), cid(9), "Gold1 V1", cid(9))]
    assert [(s, row, g) for s, row, g, _ in contact_xref(query, dsn)] == [(kid(1), kid(1), kid(1)),
                                                                        (kid(2), kid(1), kid(1))]


def test_a_deleted_source_contact_leaves_its_golden_contact_which_goes_with_its_last_member(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    """K1 and K2 are one golden contact (K1). Deleting K1, the golden id itself, keeps the row for K2; deleting
    K2 then removes it. Before, the first delete took the golden row with K2 in it."""
    dsn = sink._dsn
    sink.write_batch(_accounts(records, 1))
    sink.write_batch(batch(records, "contact", [golden_contact(records, 1, 1, 1), golden_contact(records, 2, 1, 1)]))
    sink.write_batch(batch(records, "contact", [records.contact(1, 1, deleted=True, source_lsn=100)], first_offset=2))
    assert contact_rows(query, dsn) == [(kid(1), kid(1), cid(1), "Gold1 V1", cid(1))]
    assert [(src, row) for src, row, _, _ in contact_xref(query, dsn)] == [(kid(2), kid(1))]
    sink.write_batch(batch(records, "contact", [records.contact(2, 1, deleted=True, source_lsn=200)], first_offset=3))
    assert contact_rows(query, dsn) == [] and contact_xref(query, dsn) == []


def test_a_deleted_source_account_leaves_its_golden_account_and_its_children_stay(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    """C1 and C2 are one golden account (C1) with a contact. Deleting C1 keeps the account and its contact for
    C2; a replayed older delete of C2 is stale while C2 is the row's last member; C2's delete then takes both."""
    dsn = sink._dsn
    sink.write_batch(batch(records, "account", [records.account(1, golden_id=cid(1), source_lsn=10),
                                                records.account(2, golden_id=cid(1), source_lsn=20)]))
    sink.write_batch(batch(records, "contact", [records.contact(1, 2, source_lsn=30)], first_offset=2))
    assert query(dsn, "select external_id from crm.accounts") == [(cid(1),)]
    sink.write_batch(batch(records, "account", [records.account(1, deleted=True, source_lsn=40)], first_offset=3))
    assert query(dsn, "select external_id from crm.accounts") == [(cid(1),)]
    assert query(dsn, "select source_id from crm.xref where entity = 'account'") == [(cid(2),)]
    assert query(dsn, "select external_id from crm.contacts") == [(kid(1),)]
    sink.write_batch(batch(records, "account", [records.account(2, deleted=True, source_lsn=5)], first_offset=4))
    assert query(dsn, "select external_id from crm.accounts") == [(cid(1),)], "older than the row: stale"
    sink.write_batch(batch(records, "account", [records.account(2, deleted=True, source_lsn=50)], first_offset=5))
    assert query(dsn, "select count(*) from crm.accounts") == [(0,)]
    assert query(dsn, "select count(*) from crm.contacts") == [(0,)]
    assert query(dsn, "select count(*) from crm.xref") == [(0,)]


def test_a_stale_member_writes_its_survivors_row_while_the_survivors_own_records_wait(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    # K2 waits for C9; K1 absorbs K2's cluster and waits for C8: the merge is logged, neither has a row.
    sink.write_batch(batch(records, "contact", [golden_contact(records, 2, 2, 9)]))
    sink.write_batch(batch(records, "contact", [golden_contact(records, 1, 1, 8, 2, merged=(2,))], first_offset=1))
    assert query(dsn, "select count(*) from crm.parked") == [(2,)]
    sink.write_batch(_accounts(records, 9))  # K2 lands, on its survivor's row (no row of K1 yet)
    assert contact_rows(query, dsn) == [(kid(1), kid(1), cid(9), "Gold2 V1", cid(9))]
    sink.write_batch(_accounts(records, 8))  # K1 lands and takes its row over
    assert contact_rows(query, dsn) == [(kid(1), kid(1), cid(8), "Gold1 V2", cid(8))]
    assert [(s, row, g) for s, row, g, _ in contact_xref(query, dsn)] == [(kid(1), kid(1), kid(1)),
                                                                        (kid(2), kid(1), kid(1))]
    assert query(dsn, "select count(*) from crm.parked") == [(0,)]
