"""Loading the demo data into the legacy database on the stack's real PostgreSQL."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from crmflow.demo_data import generate
from crmflow.demo_data.layout import CUSTOMERS, SNAPSHOT_RULES, SOURCE_FILES, TRUTH_FILE
from crmflow.demo_data.legacy_db import legacy_columns, legacy_table, load_legacy_db

pytestmark = pytest.mark.integration


def _expected_rows(out: Path) -> Counter[str]:
    """Per table: the truth's lines that are not snapshot rejects (those never reach the database)."""
    tables = {s.name: s.table for s in SOURCE_FILES}
    expected: Counter[str] = Counter()
    with (out / TRUTH_FILE).open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["rule"] not in SNAPSHOT_RULES:
                expected[tables[record["source_file"]]] += 1
    return expected


def _count(dsn: str) -> dict[str, int]:
    counts = {}
    with psycopg.connect(dsn) as conn:
        for s in SOURCE_FILES:
            row = conn.execute(sql.SQL("select count(*) from {}").format(legacy_table(s))).fetchone()
            assert row is not None
            counts[s.table] = int(row[0])
    return counts


def test_load_matches_the_truth_and_round_trips(tmp_path: Path, pg_dsn_factory: Callable[[], str]) -> None:
    dsn = pg_dsn_factory()
    generate(tmp_path, 2000, seed=21, workers=1)
    expected = _expected_rows(tmp_path)

    loaded = load_legacy_db(dsn, tmp_path, batch_lines=500)
    assert loaded == dict(expected)
    assert _count(dsn) == dict(expected)

    rows = list(csv.reader((tmp_path / CUSTOMERS.name).read_text(encoding="utf-8", errors="replace").splitlines()))
    sample = [r for r in rows[1:] if len(r) == len(CUSTOMERS.columns) and "\ufffd" not in "".join(r)][::97]
    with psycopg.connect(dsn) as conn:
        for row in sample:
            db = conn.execute(
                sql.SQL("select {} from {} where customer_id = %s").format(
                    sql.SQL(", ").join(map(sql.Identifier, legacy_columns(CUSTOMERS))), legacy_table(CUSTOMERS)
                ),
                (row[0],),
            ).fetchone()
            assert db is not None
            assert list(db) == [v if v != "" else None for v in row]  # empty CSV field = NULL, spaces kept
        padded = conn.execute("select count(*) from legacy.customers where first_name <> btrim(first_name)").fetchone()
        assert padded is not None and padded[0] > 0


def test_reload_is_idempotent(tmp_path: Path, pg_dsn_factory: Callable[[], str]) -> None:
    dsn = pg_dsn_factory()
    generate(tmp_path, 300, seed=22, workers=1)
    first = load_legacy_db(dsn, tmp_path)
    second = load_legacy_db(dsn, tmp_path)
    assert first == second == _count(dsn)
