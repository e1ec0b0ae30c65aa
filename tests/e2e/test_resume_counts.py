"""A resumed migration reports the whole run: `migrate --run-id ID` after a finished or a `--limit` run reads
what the run read in all its starts, and reconciles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Run, target_rows
from tests.e2e.test_source_files import PEOPLE, csv_text, migrate, tiny_run

pytestmark = pytest.mark.e2e


def write_customers(data: Path) -> None:
    """Five records and a malformed line (line 4); line 6 repeats line 2's key: 6 read, 2 rejected."""
    p = PEOPLE
    text = csv_text([("COL-1001", p["COL-1001"]), ("COL-1002", p["COL-1002"]), ("COL-1003", p["COL-1003"]),
                     ("COL-1001", p["COL-2001"]), ("COL-2001", p["COL-2001"])])  # fmt: skip
    lines = text.splitlines(keepends=True)
    lines.insert(3, "BROKEN,only,three\n")  # line 4
    (data / "customers.csv").write_text("".join(lines))


def test_rerun_of_a_finished_run_reports_the_whole_run(tmp_path: Path, run_factory: Callable[..., Run]) -> None:
    write_customers(tmp_path)
    run = tiny_run(run_factory, tmp_path, {"customers": {"path": "customers.csv"}})
    first = migrate(run)
    account = first["entities"]["account"]
    assert (account["read"], account["rejected"], first["reconciled"]) == (6, 2, True)

    # The checkpoint says the snapshot is done: nothing is read again, and the summary is the run's.
    again = migrate(run, "--run-id", first["run_id"])
    account = again["entities"]["account"]
    assert again["reconciled"] is True, again
    assert (account["read"], account["rejected"]) == (6, 2)
    assert account["inserted"] + account["updated"] + account["unchanged"] == 4
    assert again["rejected_by_rule"] == {"csv_malformed": 1, "duplicate_key": 1}


def test_resume_after_a_limited_run_reports_the_whole_run(tmp_path: Path, run_factory: Callable[..., Run]) -> None:
    write_customers(tmp_path)
    run = tiny_run(run_factory, tmp_path, {"customers": {"path": "customers.csv"}})
    first = migrate(run, "--limit", "2")
    assert first["entities"]["account"]["read"] == 2 and first["reconciled"] is True

    rest = migrate(run, "--run-id", first["run_id"])
    account = rest["entities"]["account"]
    assert rest["reconciled"] is True, rest
    assert (account["read"], account["rejected"]) == (6, 2)
    # The duplicate of line 2's key (line 6) is known although line 2 was read by the first start.
    assert set(target_rows(run.target_dsn, "account", ["first_name"])) == {"COL-1001", "COL-1002", "COL-1003",
                                                                           "COL-2001"}  # fmt: skip
    assert target_rows(run.target_dsn, "account", ["first_name"])["COL-1001"] == {"first_name": "Anna"}
