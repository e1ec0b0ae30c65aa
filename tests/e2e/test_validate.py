"""crmflow validate on the real stack: a clean migration passes at 100%; injected discrepancies are each named
(entity, id, field, expected, found, PII masked) and fail the gate; validate.html shows them in Chromium."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from crmflow.reports.browser import dump_dom
from tests.e2e.conftest import Migrated, Run

pytestmark = pytest.mark.e2e


def _validate(run: Run, out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    res = run.cli("validate", "-c", str(run.config), "--out", str(out), "--json", *args)
    assert res.returncode in (0, 1), res.stderr[-2000:]
    return res.returncode, json.loads(res.stdout)


def _first(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_validate_clean_then_injected(small_migration: Migrated, target_copy: Callable[[Run], Run],
                                     tmp_path: Path) -> None:
    run = target_copy(small_migration.run)  # the session's migration, its target copied: this test changes rows

    code, clean = _validate(run, tmp_path / "clean")
    assert code == 0, clean["reasons"]
    assert clean["kpis"]["data_accuracy_rate"] == 1.0
    assert clean["kpis"]["data_completeness_rate"] == 1.0
    assert clean["discrepancies"] == []
    assert clean["entities"]["account"]["compared"] == clean["entities"]["account"]["landed"] > 0
    assert clean["kpis"]["processing_speed_records_per_s"] > 0

    dsn = run.target_dsn
    deleted = _first(dsn, "select external_id from crm.cases order by external_id limit 1")
    altered = _first(dsn, "select external_id from crm.accounts where email is not null order by external_id limit 1")
    city = _first(dsn, "select external_id from crm.accounts where city is not null order by external_id desc limit 1")
    wrong = _first(dsn, "select external_id from crm.sales where original_currency <> 'USD' "
                        "order by external_id limit 1")
    orphan = _first(dsn, "select external_id from crm.contacts order by external_id limit 1")
    moving = _first(dsn, "select external_id from crm.contacts order by external_id desc limit 1")
    broken = _first(dsn, "select external_id from crm.sales order by external_id desc limit 1")
    with psycopg.connect(dsn) as conn:
        conn.execute("delete from crm.cases where external_id = %s", (deleted,))
        conn.execute("update crm.accounts set email = 'someone.else@example.org' where external_id = %s", (altered,))
        conn.execute("update crm.accounts set city = 'Nowhere' where external_id = %s", (city,))
        # A wrong transformation: the amount kept in its original currency instead of converted.
        conn.execute("update crm.sales set total_sales = original_amount where external_id = %s", (wrong,))
        conn.execute("update crm.contacts set customer_id = 'NO-SUCH-CUSTOMER' where external_id = %s", (orphan,))
        # A change in flight: the row comes from another version (position) of its source record.
        conn.execute("update crm.contacts set job_title = 'Changed', source_position = 'contacts.csv:999999' "
                     "where external_id = %s", (moving,))
        conn.execute(
            "insert into crm.accounts (external_id, full_name, run_id, source, source_position, system) "
            "select 'EXTRA-1', 'Extra Row', run_id, source, source_position, system from crm.accounts limit 1")
        # A broken golden link: the sale hangs off another account than its customer's.
        conn.execute("update crm.sales s set account_id = (select min(id) from crm.accounts a "
                     "where a.id <> s.account_id and a.external_id <> 'EXTRA-1') where external_id = %s", (broken,))

    code, bad = _validate(run, tmp_path / "bad")
    assert code == 1 and not bad["ok"]
    found = {(d["check"], d["entity"], d["id"], d["field"]): d for d in bad["discrepancies"]}
    assert ("completeness", "case", deleted, None) in found
    assert deleted in bad["entities"]["case"]["missing_ids"]
    email = found[("accuracy", "account", altered, "email")]
    assert email["found"] == "s***@example.org" and "***" in email["expected"]  # PII masked
    assert found[("accuracy", "account", city, "city")]["found"] == "Nowhere"
    assert "convert_currency" in found[("accuracy", "sale", wrong, "total_sales")]["rule"]
    assert found[("integrity", "contact", orphan, "customer_id")]["found"].startswith("orphan")
    assert ("completeness", "account", "EXTRA-1", None) in found
    assert "EXTRA-1" in bad["entities"]["account"]["extra_ids"]
    assert ("integrity", "sale", broken, "account_id") in found
    assert bad["entities"]["contact"]["in_flight"] == 1
    assert not [d for d in bad["discrepancies"] if d["id"] == moving]
    rules = {(r["entity"], r["field"]): r for r in bad["rules"]}
    assert rules[("sale", "total_sales")]["wrong"] == 1 and rules[("account", "city")]["wrong"] == 1
    assert bad["kpis"]["data_accuracy_rate"] < 1.0 and bad["kpis"]["data_completeness_rate"] < 1.0

    dom = dump_dom(tmp_path / "bad" / "validate.html")
    assert 'data-verdict="fail"' in dom
    assert "Nowhere" in dom and "NO-SUCH-CUSTOMER" in dom and "EXTRA-1" in dom
    assert "someone.else@example.org" not in dom
    assert "Records per mapping rule" in dom and "Wrong records per mapping rule" in dom
    assert dom.count('class="main-svg"') >= 2  # both charts drawn by plotly.js

    code, sampled = _validate(run, tmp_path / "sample", "--sample", "200", "--seed", "7")
    assert code == 1
    assert 0 < sampled["confidence"]["sampled"] < clean["entities"]["account"]["compared"] * 2
    assert 0 < sampled["confidence"]["error_rate_upper_bound"] < 1


def test_validate_golden_records(dedupe_migration: Run, target_copy: Callable[[Run], Run], tmp_path: Path) -> None:
    """Dedupe on: merged sources are checked against their golden record through the xref."""
    run = target_copy(dedupe_migration)  # the session's migration, its target copied: this test changes rows
    code, clean = _validate(run, tmp_path / "clean")
    assert code == 0, (clean["reasons"], clean["discrepancies"][:5])
    accounts = clean["entities"]["account"]
    assert accounts["merged"] > 0 and accounts["missing"] == 0 and accounts["compared"] > 0

    dsn = run.target_dsn
    golden = _first(dsn, "select a.external_id from crm.accounts a join crm.xref x on x.target_id = a.id "
                         "and x.entity = 'account' group by a.external_id having count(*) > 1 "
                         "order by a.external_id limit 1")
    member = _first(dsn, "select x.source_id from crm.xref x join crm.accounts a on a.id = x.target_id "
                         f"where x.entity = 'account' and a.external_id = '{golden}' order by x.source_id limit 1")
    with psycopg.connect(dsn) as conn:
        conn.execute("update crm.accounts set city = 'Nowhere' where external_id = %s", (golden,))
        conn.execute("update crm.xref set golden_id = 'G-BROKEN' where entity = 'account' and source_id = %s",
                     (member,))
    code, bad = _validate(run, tmp_path / "bad")
    assert code == 1
    found = {(d["check"], d["entity"], d["id"], d["field"]): d for d in bad["discrepancies"]}
    assert found[("golden", "account", golden, "city")]["found"] == "Nowhere"
    assert found[("integrity", "account", member, "xref.golden_id")]["expected"] == "G-BROKEN"
