"""A batch's merge reads the target rows it touches through their index, never by a scan of the whole table.

The merge statement reads stored rows in several places (the upsert's current row, the ownership check, the
row's previous version, the xref's target). Joined straight to the table, the planner hashed the whole table
for each of them whenever it took the table for small (statistics lag behind a migration that fills it), so a
batch cost grew with the target. Checked on PostgreSQL's own plan of the sink's statement, on a table filled
by earlier batches, with and without fresh statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sinks.postgres import PostgresSink
from sinks.postgres.tables import EntityTable

pytestmark = pytest.mark.integration

FILLED = 20_000


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _plan(sink: PostgresSink, entity: str, batch: list[Any]) -> list[dict[str, Any]]:
    """PostgreSQL's plan of the merge statement the sink would run for ``batch`` (staged, then rolled back)."""
    table: EntityTable = sink._tables[entity]
    conn = sink._connection()
    indexes = list(range(len(batch)))
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        plan = sink._plan_goldens(cur, table, batch, indexes)
        cur.execute(f"truncate {table.stage}".encode())
        sink._batch_loader(table, batch, plan)(cur, indexes)
        row = cur.execute(f"explain (format json) {table.plain_merge_sql}".encode(), {"system": sink.system}).fetchone()
    assert row is not None
    return list(_nodes(row[0][0]["Plan"]))


@pytest.mark.parametrize("analyzed", [True, False])
def test_a_batch_reads_the_rows_it_touches_through_the_index(sink: PostgresSink, records: Any, analyzed: bool) -> None:
    for start in range(0, FILLED, 5000):
        accounts = [records.account(i) for i in range(start, start + 5000)]
        sales = [records.sale(i, i) for i in range(start, start + 5000)]
        result = sink.write_batch(records.sink_records("account", accounts) + records.sink_records("sale", sales))
        assert result.written == 10_000
    if analyzed:
        with psycopg.connect(sink._dsn, autocommit=True) as conn:
            conn.execute(b"analyze crm.accounts, crm.sales")
    # The next batch: half of it updates stored rows, half is new.
    half = FILLED - 50
    cases = {
        "account": (records.sink_records("account", [records.account(i, city="Shelbyville")
                                                      for i in range(half, half + 100)]), "accounts"),
        "sale": (records.sink_records("sale", [records.sale(i, i, product="Gadget")
                                               for i in range(half, half + 100)]), "sales"),
    }
    for entity, (batch, table) in cases.items():
        nodes = _plan(sink, entity, batch)
        reads = [n["Node Type"] for n in nodes if n.get("Relation Name") == table and n["Node Type"] != "ModifyTable"]
        assert reads, f"the plan of {entity} does not read {table}"
        assert "Seq Scan" not in reads, f"{entity}: the batch scans all of {table}: {reads}"
    # And the statement still writes what it should.
    result = sink.write_batch(cases["account"][0] + cases["sale"][0])
    assert result.written == 200 and result.rejects == []
    with psycopg.connect(sink._dsn) as conn:
        rows = conn.execute(b"select count(*) filter (where city = 'Shelbyville'), count(*) "
                            b"from crm.accounts").fetchone()
    assert rows == (100, FILLED + 50)
