"""Golden records on the real database: one account per golden id, xref for every member, cluster
merges (re-pointing children and xref, chains within a batch), parked children, idempotent re-delivery."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from sinks.base import SinkRecord
from sinks.postgres import PostgresSink
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

Query = Callable[[str, str], list[tuple[Any, ...]]]
TABLES = ("accounts", "contacts", "sales", "cases", "xref", "parked", "golden_merges")


def cid(n: int) -> str:
    return f"C{n:07d}"


def evidence(n: int, golden: int, decision: str = "merge") -> list[dict[str, Any]]:
    return [{"rule": "email_exact", "score": 1.0, "matched_id": cid(n), "golden_id": cid(golden),
             "decision": decision, "veto": None}]


def member(records: Any, n: int, golden: int, version: int = 1, merged: tuple[int, ...] = (),
           **over: Any) -> dict[str, Any]:
    """Account record of source record ``n`` in the cluster of golden id ``golden``, carrying version
    ``version`` of the golden values."""
    fields: dict[str, Any] = {
        "golden_id": cid(golden), "merged_golden_ids": [cid(m) for m in merged],
        "match_evidence": json.dumps(evidence(golden, golden)) if n != golden else None,
        "full_name": f"Gold{golden} V{version}", "last_name": f"Gold{golden}", "city": f"City{version}",
        "email": f"gold{golden}@example.com"}
    value: dict[str, Any] = records.account(n, **{**fields, **over})
    return value


def accounts(records: Any, values: list[dict[str, Any]], first_offset: int = 0) -> list[SinkRecord]:
    batch: list[SinkRecord] = records.sink_records("account", values, first_offset)
    return batch


def children(records: Any, customer: int, n: int, first_offset: int = 0) -> list[SinkRecord]:
    """One contact, sale and case (number ``n``) of source customer ``customer``."""
    batch: list[SinkRecord] = []
    for entity, value in (("contact", records.contact(n, customer)), ("sale", records.sale(n, customer)),
                          ("case", records.case(n, customer))):
        batch += records.sink_records(entity, [value], first_offset)
    return batch


def snapshot(query: Query, dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every target table (updated_at included), in a stable order."""
    return {t: query(dsn, f"select * from crm.{t} order by 1, 2") for t in TABLES}


def golden_rows(query: Query, dsn: str) -> list[tuple[Any, ...]]:
    return query(dsn, "select external_id, golden_id, full_name, city, source_position from crm.accounts "
                      "order by external_id")


def account_xref(query: Query, dsn: str) -> list[tuple[Any, ...]]:
    """(member id, external id of the row it points to, golden id, evidence) per account xref entry."""
    return query(dsn, "select x.source_id, a.external_id, x.golden_id, x.evidence from crm.xref x "
                      "left join crm.accounts a on a.id = x.target_id where x.entity = 'account' "
                      "order by x.source_id")


def child_accounts(query: Query, dsn: str) -> list[tuple[Any, ...]]:
    """(table, child id, its customer id, external id of its account row, golden id) of every child."""
    return query(dsn, " union all ".join(
        f"select '{t}', c.external_id, c.customer_id, a.external_id, c.golden_id from crm.{t} c "
        "join crm.accounts a on a.id = c.account_id" for t in ("contacts", "sales", "cases")) + " order by 1, 2")


def test_one_account_per_golden_id_with_the_latest_values_and_xref_for_every_member(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    result = sink.write_batch(accounts(records, [
        member(records, 1, 1, 1), member(records, 2, 1, 2), member(records, 3, 3, 1), member(records, 4, 1, 3)]))
    assert result.rejects == [] and result.written == 2
    assert golden_rows(query, dsn) == [
        (cid(1), cid(1), "Gold1 V3", "City3", "customers.csv:5"),  # the latest record of the cluster (C4)
        (cid(3), cid(3), "Gold3 V1", "City1", "customers.csv:4"),
    ]
    assert account_xref(query, dsn) == [
        (cid(1), cid(1), cid(1), None),
        (cid(2), cid(1), cid(1), evidence(1, 1)),
        (cid(3), cid(3), cid(3), None),
        (cid(4), cid(1), cid(1), evidence(1, 1)),
    ]
    assert query(dsn, "select distinct run_id from crm.xref") == [("run-1",)]
    # A later batch: the golden values change, the row is updated in place, members keep pointing to it.
    before = query(dsn, "select id from crm.accounts where external_id = 'C0000001'")
    sink.write_batch(accounts(records, [member(records, 5, 1, 4)], first_offset=4))
    assert query(dsn, "select id, full_name from crm.accounts where external_id = 'C0000001'") == [
        (before[0][0], "Gold1 V4")]
    assert query(dsn, "select count(*), count(distinct target_id) from crm.xref x where entity = 'account' "
                      "and golden_id = 'C0000001'") == [(4, 1)]


def test_children_find_the_golden_account_through_a_member_id(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    batch = (accounts(records, [member(records, 1, 1), member(records, 2, 1)])
             + children(records, 2, 1)
             + records.sink_records("contact", [records.contact(2, 1, golden_id="K0000009")], 1))
    result = sink.write_batch(batch)
    assert (result.rejects, result.parked) == ([], [])
    assert child_accounts(query, dsn) == [
        ("cases", "T0000001", cid(2), cid(1), cid(1)),
        ("contacts", "K0000001", cid(2), cid(1), cid(1)),
        ("contacts", "K0000002", cid(1), cid(1), "K0000009"),  # a golden id of its own is kept
        ("sales", "S0000001", cid(2), cid(1), cid(1)),
    ]
    assert query(dsn, "select entity, source_id, golden_id from crm.xref where entity <> 'account' "
                      "order by 1, 2") == [
        ("case", "T0000001", cid(1)), ("contact", "K0000001", cid(1)), ("contact", "K0000002", "K0000009"),
        ("sale", "S0000001", cid(1))]


def test_a_merge_repoints_children_and_xref_drops_the_absorbed_account_and_is_logged(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    sink.write_batch(accounts(records, [member(records, 1, 1), member(records, 2, 2), member(records, 5, 2)])
                     + children(records, 1, 1) + children(records, 2, 2) + children(records, 5, 3))
    assert [r[0] for r in golden_rows(query, dsn)] == [cid(1), cid(2)]
    absorbed_id = query(dsn, "select id from crm.accounts where external_id = 'C0000002'")[0][0]

    # C3 bridges the clusters of C1 and C2: C2 is absorbed into C1.
    bridge = member(records, 3, 1, 2, merged=(2,), match_evidence=json.dumps(evidence(2, 2)))
    result = sink.write_batch(accounts(records, [bridge], first_offset=3))
    assert result.rejects == []
    assert golden_rows(query, dsn) == [(cid(1), cid(1), "Gold1 V2", "City2", "customers.csv:4")]
    assert query(dsn, f"select count(*) from crm.accounts where id = {absorbed_id}") == [(0,)]
    assert child_accounts(query, dsn) == [
        ("cases", f"T000000{n}", cid(c), cid(1), cid(1)) for n, c in ((1, 1), (2, 2), (3, 5))
    ] + [("contacts", f"K000000{n}", cid(c), cid(1), cid(1)) for n, c in ((1, 1), (2, 2), (3, 5))
         ] + [("sales", f"S000000{n}", cid(c), cid(1), cid(1)) for n, c in ((1, 1), (2, 2), (3, 5))]
    assert [(m, a, g) for m, a, g, _ in account_xref(query, dsn)] == [
        (cid(n), cid(1), cid(1)) for n in (1, 2, 3, 5)]
    # The children's own xref entries follow their new golden id.
    assert query(dsn, "select count(*) from crm.xref where entity <> 'account' and golden_id = 'C0000001'") == [(9,)]
    assert query(dsn, "select absorbed_golden_id, survivor_golden_id, record_id, run_id, evidence "
                      "from crm.golden_merges") == [(cid(2), cid(1), cid(3), "run-1", evidence(2, 2))]
    # A child arriving after the merge, by a member id of the absorbed cluster, lands on the survivor.
    sink.write_batch(records.sink_records("contact", [records.contact(7, 5)], 9))
    assert query(dsn, "select a.external_id, c.golden_id from crm.contacts c join crm.accounts a "
                      "on a.id = c.account_id where c.external_id = 'K0000007'") == [(cid(1), cid(1))]


def test_a_chain_of_merges_in_one_batch_ends_on_the_final_survivor(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    # Earlier batch: three clusters C1, C2, C3 with children.
    sink.write_batch(accounts(records, [member(records, 1, 1), member(records, 2, 2), member(records, 3, 3)])
                     + children(records, 1, 1) + children(records, 2, 2) + children(records, 3, 3))
    # One batch: C6 founds a cluster, C4 joins C3, then C5 merges C3 into C2 and C7 merges C2 into C1;
    # the contact of C4 comes in the same batch.
    batch = accounts(records, [
        member(records, 6, 6),
        member(records, 4, 3, 2),
        member(records, 5, 2, 2, merged=(3,)),
        member(records, 7, 1, 3, merged=(2,)),
    ], first_offset=3) + records.sink_records("contact", [records.contact(4, 4)], 3)
    result = sink.write_batch(batch)
    assert (result.rejects, result.parked) == ([], [])
    assert golden_rows(query, dsn) == [
        (cid(1), cid(1), "Gold1 V3", "City3", "customers.csv:8"),
        (cid(6), cid(6), "Gold6 V1", "City1", "customers.csv:7"),
    ]
    assert [(m, a, g) for m, a, g, _ in account_xref(query, dsn)] == [
        (cid(n), cid(1), cid(1)) for n in (1, 2, 3, 4, 5)] + [(cid(6), cid(6), cid(6)), (cid(7), cid(1), cid(1))]
    assert {(a, g) for _, _, _, a, g in child_accounts(query, dsn)} == {(cid(1), cid(1))}
    assert len(child_accounts(query, dsn)) == 10
    assert query(dsn, "select absorbed_golden_id, survivor_golden_id, record_id from crm.golden_merges "
                      "order by 1") == [(cid(2), cid(1), cid(7)), (cid(3), cid(2), cid(5))]


def test_a_chain_within_one_batch_from_scratch(sink: PostgresSink, query: Query, records: Any) -> None:
    dsn = sink._dsn
    batch = accounts(records, [
        member(records, 3, 3), member(records, 2, 2), member(records, 4, 2, 2, merged=(3,)),
        member(records, 1, 1), member(records, 5, 1, 2, merged=(2,)),
    ]) + children(records, 3, 1)
    result = sink.write_batch(batch)
    assert (result.rejects, result.parked) == ([], [])
    assert golden_rows(query, dsn) == [(cid(1), cid(1), "Gold1 V2", "City2", "customers.csv:6")]
    assert {(a, g) for _, _, _, a, g in child_accounts(query, dsn)} == {(cid(1), cid(1))}
    assert [(m, a) for m, a, _, _ in account_xref(query, dsn)] == [(cid(n), cid(1)) for n in range(1, 6)]
    assert query(dsn, "select absorbed_golden_id, survivor_golden_id from crm.golden_merges order by 1") == [
        (cid(2), cid(1)), (cid(3), cid(2))]


def test_parked_children_are_released_by_a_member_id_and_follow_a_later_merge(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    first = sink.write_batch(children(records, 7, 1))
    assert sorted(first.parked) == [0, 1, 2]
    # C7 arrives as a member of the cluster of C6: the parked children are written onto C6's row.
    second = sink.write_batch(accounts(records, [member(records, 6, 6), member(records, 7, 6)]))
    assert second.parked == []
    assert sink.held() == {"contact": 0, "sale": 0, "case": 0}
    assert {(c, a, g) for _, _, c, a, g in child_accounts(query, dsn)} == {(cid(7), cid(6), cid(6))}
    # Then C8 merges C6 into C1's cluster: the released children move again.
    sink.write_batch(accounts(records, [member(records, 1, 1), member(records, 8, 1, 2, merged=(6,))], 2))
    assert {(c, a, g) for _, _, c, a, g in child_accounts(query, dsn)} == {(cid(7), cid(1), cid(1))}
    assert [r[0] for r in golden_rows(query, dsn)] == [cid(1)]
    assert sink.dead_letters(final=True) == []


def test_redelivering_batches_changes_nothing(sink: PostgresSink, query: Query, records: Any) -> None:
    dsn = sink._dsn
    first = (accounts(records, [member(records, 1, 1), member(records, 2, 2), member(records, 5, 2)])
             + children(records, 2, 1) + children(records, 5, 2)
             + records.sink_records("contact", [records.contact(9, 99)], 2))  # parked
    second = (accounts(records, [member(records, 3, 3), member(records, 4, 1, 2, merged=(2,)),
                                 member(records, 6, 1, 3, merged=(3,))], 3)
              + children(records, 3, 3, 3))
    sink.write_batch(first)
    sink.write_batch(second)
    before = snapshot(query, dsn)
    assert [r[0] for r in golden_rows(query, dsn)] == [cid(1)]
    assert len(before["golden_merges"]) == 2

    again = sink.write_batch(second)  # the offsets were not committed
    assert (again.rejects, again.written) == ([], 0)
    assert snapshot(query, dsn) == before
    both = sink.write_batch(first + second)  # re-read from further back, as one batch
    assert (both.rejects, both.written, both.parked) == ([], 0, [len(first) - 1])
    assert snapshot(query, dsn) == before
    # A prefix of the second batch (re-read in smaller batches after a crash) that ends with the latest
    # record of its cluster.
    prefix = sink.write_batch(second[:3])
    assert (prefix.rejects, prefix.written) == ([], 0)
    assert snapshot(query, dsn) == before
    # The first batch alone, after its clusters were absorbed (Kafka re-delivers the second one after it):
    # its records of C2's cluster only confirm their xref entries, no absorbed row comes back, nothing
    # moves; only the survivor's row takes the older values of C1's own record, as any older version
    # re-delivered alone does, until the rest is re-delivered.
    old = sink.write_batch(first)
    assert (old.rejects, old.written) == ([], 1)
    after = snapshot(query, dsn)
    assert {t: rows for t, rows in after.items() if t != "accounts"} == {
        t: rows for t, rows in before.items() if t != "accounts"}
    assert golden_rows(query, dsn) == [(cid(1), cid(1), "Gold1 V1", "City1", "customers.csv:2")]
    sink.write_batch(second)
    assert golden_rows(query, dsn) == [(cid(1), cid(1), "Gold1 V3", "City3", "customers.csv:7")]


def test_a_redelivered_merge_whose_rows_are_partly_gone_does_not_fail(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    """A prefix committed before a crash: the survivor exists already, the absorbed row is gone."""
    dsn = sink._dsn
    batch = accounts(records, [member(records, 1, 1), member(records, 2, 2), member(records, 3, 1, 2, merged=(2,)),
                               member(records, 4, 1, 3)]) + children(records, 2, 1)
    sink.write_batch(batch[:3])  # committed, then the sink crashed
    result = sink.write_batch(batch)  # everything again, with more
    assert result.rejects == []
    assert golden_rows(query, dsn) == [(cid(1), cid(1), "Gold1 V3", "City3", "customers.csv:5")]
    assert {(a, g) for _, _, _, a, g in child_accounts(query, dsn)} == {(cid(1), cid(1))}
    assert query(dsn, "select absorbed_golden_id, survivor_golden_id from crm.golden_merges") == [(cid(2), cid(1))]


def test_merge_log_and_counts_in_the_audit(sink: PostgresSink, query: Query, records: Any) -> None:
    dsn = sink._dsn
    sink.write_batch(accounts(records, [member(records, 1, 1), member(records, 2, 2), member(records, 3, 1, 2,
                                                                                              merged=(2,))]))
    # Three source records, one account: C2's record was staged under C1 before anything was written.
    assert query(dsn, "select entity, records, inserted, updated from crm.migration_audit") == [
        ("account", 3, 1, 0)]
    assert query(dsn, "select absorbed_golden_id, survivor_golden_id, record_id from crm.golden_merges") == [
        (cid(2), cid(1), cid(3))]


def test_dedupe_off_and_on_side_by_side(sink: PostgresSink, query: Query, records: Any) -> None:
    """Records without a golden id keep one account per customer id and an xref without golden id, in a
    batch of their own (the plain statement) and next to golden records."""
    dsn = sink._dsn
    sink.write_batch(accounts(records, [records.account(10), records.account(11)])
                     + records.sink_records("sale", [records.sale(1, 11)]))
    mixed = sink.write_batch(accounts(records, [records.account(12), member(records, 1, 1), member(records, 2, 1),
                                                records.account(10, city="Shelbyville")], 2)
                             + records.sink_records("sale", [records.sale(2, 12), records.sale(3, 2)], 1))
    assert (mixed.rejects, mixed.parked) == ([], [])
    assert golden_rows(query, dsn) == [(cid(1), cid(1), "Gold1 V1", "City1", "customers.csv:3"),
                                       (cid(10), None, "Ann Lee10", "Shelbyville", "customers.csv:11"),
                                       (cid(11), None, "Ann Lee11", "Springfield", "customers.csv:12"),
                                       (cid(12), None, "Ann Lee12", "Springfield", "customers.csv:13")]
    assert account_xref(query, dsn) == [
        (cid(1), cid(1), cid(1), None), (cid(2), cid(1), cid(1), evidence(1, 1)), (cid(10), cid(10), None, None),
        (cid(11), cid(11), None, None), (cid(12), cid(12), None, None)]
    assert child_accounts(query, dsn) == [("sales", "S0000001", cid(11), cid(11), None),
                                          ("sales", "S0000002", cid(12), cid(12), None),
                                          ("sales", "S0000003", cid(2), cid(1), cid(1))]


def test_invalid_match_evidence_is_refused_with_its_record_only(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    dsn = sink._dsn
    result = sink.write_batch(accounts(records, [member(records, 1, 1), member(records, 2, 1, 2,
                                                                               match_evidence="{not json")]))
    assert [(r.index, r.rule) for r in result.rejects] == [(1, "invalid_value")]
    assert "not json" not in result.rejects[0].error
    assert golden_rows(query, dsn) == [(cid(1), cid(1), "Gold1 V1", "City1", "customers.csv:2")]
    assert [r[0] for r in account_xref(query, dsn)] == [cid(1)]


def test_a_database_written_before_golden_records_keeps_working_after_the_migration(
    pg_dsn_factory: Callable[[], str], query: Query, records: Any
) -> None:
    """Accounts written under 0001 (xref without evidence): after the later migrations their children still find
    them, through the xref key that leads with the source id (0010)."""
    from sinks.postgres import apply_migrations, load_migrations

    dsn = pg_dsn_factory()
    first, *later = load_migrations()
    assert [m.name for m in later][:1] == ["golden_records"]
    apply_migrations(dsn, [first])
    with psycopg.connect(dsn) as conn:  # what the sink wrote before: an account and its xref entry
        conn.execute("insert into crm.accounts (external_id, full_name, run_id, source, source_position) "
                     "values ('C0000001', 'Old Row', 'run-0', 'legacy', 'customers.csv:2')")
        conn.execute("insert into crm.xref (entity, source, source_id, target_id, run_id) "
                     "select 'account', 'legacy', external_id, id, 'run-0' from crm.accounts")
    s = PostgresSink(dsn)
    s.setup()
    try:
        assert [m.version for m in apply_migrations(dsn)] == []
        result = s.write_batch(children(records, 1, 1))
        assert (result.rejects, result.parked) == ([], [])
    finally:
        s.close()
    assert child_accounts(query, dsn) == [("cases", "T0000001", cid(1), cid(1), None),
                                          ("contacts", "K0000001", cid(1), cid(1), None),
                                          ("sales", "S0000001", cid(1), cid(1), None)]
    assert query(dsn, "select indexdef from pg_indexes where tablename = 'xref' order by indexname") == [
        ("CREATE UNIQUE INDEX xref_pkey ON crm.xref USING btree (source_id, entity, source)",),
        ("CREATE INDEX xref_target_idx ON crm.xref USING btree (target_id, entity)",)]


def test_sinks_side_by_side_a_merge_waits_for_the_other_writers_batches_and_plain_batches_do_not(
    sink: PostgresSink, query: Query, records: Any
) -> None:
    """Several sinks write into one target (``migrate --sink-workers``): a batch that merges golden records waits
    until every other sink's batch in flight is committed (it re-points and removes rows another one could be
    attaching children to), while plain batches of several sinks go side by side."""
    dsn = sink._dsn
    sink.write_batch(accounts(records, [member(records, 1, 1), member(records, 2, 2)]))
    results: list[Any] = []
    with psycopg.connect(dsn) as other:  # another sink, in the middle of a batch: it holds the writers' lock
        other.execute("select pg_advisory_xact_lock_shared(hashtext('crmflow-sink:crm'))")
        assert sink.write_batch(children(records, 2, 1)).rejects == [], "a plain batch goes through meanwhile"
        bridge = member(records, 3, 1, 2, merged=(2,), match_evidence=json.dumps(evidence(2, 2)))
        merging = threading.Thread(
            target=lambda: results.append(sink.write_batch(accounts(records, [bridge], first_offset=2))))
        merging.start()
        wait_until(lambda: query(dsn, "select count(*) from pg_locks where locktype = 'advisory' and not granted")
                   == [(1,)], 30, what="the merging batch to wait for the writers' lock")
        assert not results and query(dsn, "select count(*) from crm.golden_merges") == [(0,)]
        other.commit()  # the other sink's batch is committed
        merging.join(30)
    assert len(results) == 1 and results[0].rejects == []
    assert golden_rows(query, dsn) == [(cid(1), cid(1), "Gold1 V2", "City2", "customers.csv:4")]
    assert [row[3] for row in child_accounts(query, dsn)] == [cid(1)] * 3, "the children moved to the survivor"
