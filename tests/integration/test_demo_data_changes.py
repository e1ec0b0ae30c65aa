"""`crmflow demo-data --changes RATE`: a steady change workload on a real legacy database, with its commit log."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from crmflow.stack import Endpoints

pytestmark = pytest.mark.integration

RATE, SECONDS = 150, 4


def test_change_workload_runs_at_its_rate_and_logs_every_committed_change(
    endpoints: Endpoints, pg_dsn_factory: Callable[[], str], tmp_path: Path
) -> None:
    dsn = pg_dsn_factory()
    cli = subprocess.run([sys.executable, "-m", "crmflow", "demo-data", "--changes", str(RATE), "--seconds",
                          str(SECONDS), "--dsn", dsn, "--out", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    summary = json.loads(cli.stdout)
    assert 0.7 * RATE <= summary["rate"] <= 1.1 * RATE, summary
    ops = Counter(key.split()[1] for key in summary["by_table_op"] for _ in range(summary["by_table_op"][key]))
    assert ops["c"] and ops["u"] and ops["d"], summary["by_table_op"]
    log = [json.loads(line) for line in (tmp_path / "changes.jsonl").read_text().splitlines()]
    assert len(log) == summary["changes"]
    per_txn = Counter(c["txid"] for c in log)
    assert max(per_txn.values()) >= 4 and len(per_txn) == summary["transactions"]  # multi-statement transactions
    assert all(abs(c["committed_at"] - log[0]["committed_at"]) < SECONDS + 5 for c in log)
    # the log is what the database holds: the last op of each key says whether the row exists
    last = {(c["table"], c["id"]): c["op"] for c in log}
    with psycopg.connect(dsn) as conn:
        present = {(f"legacy.{t}", r[0]) for t, key in (("customers", "customer_id"), ("contacts", "contact_id"),
                                                         ("sales", "sale_id"), ("tickets", "ticket_id"))
                   for r in conn.execute(f"select {key} from legacy.{t}")}  # fmt: skip
        large = conn.execute("select count(*) from legacy.tickets where length(subject) > 8000").fetchone()
        children = conn.execute("select count(*) from legacy.contacts c where not exists "
                                "(select 1 from legacy.customers p where p.customer_id = c.customer_id)").fetchone()
    assert {k for k, op in last.items() if op != "d"} == present
    assert large is not None and large[0] > 0  # TOASTed text
    assert children == (0,)  # a deleted customer took its children with it
