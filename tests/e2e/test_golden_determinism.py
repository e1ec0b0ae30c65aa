"""Golden ids are a function of the data, not of the order its records reach the deduper (issue 14, item 6).

A dedupe shard receives the accounts of several raw partitions, so two clean runs of the same data can
feed one shard in different orders; with golden ids chosen by arrival (the first record of a cluster),
an occasional cluster got another golden id in the second run. Waiting for such a race makes a slow,
flaky test, so the second run makes the difference certain: the same records, the customers file in
reverse order (every duplicate now arrives before the record it duplicates). Both runs are
``migrate --workers 2`` on the real stack (the forward one is the session's ``dedupe_migration``); the targets
must cross-reference every source account to the same golden id, which is the smallest source id of its cluster.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Dataset, Run
from tests.e2e.test_dedupe import assert_golden_target, golden_of, partition

pytestmark = pytest.mark.e2e


def reversed_customers(dataset: Dataset, directory: Path) -> Dataset:
    """The same files, with the data rows of customers.csv in reverse order (header first)."""
    shutil.copytree(dataset.dir, directory)
    path = directory / "customers.csv"
    header, *rows = path.read_bytes().rstrip(b"\n").split(b"\n")
    path.write_bytes(b"\n".join([header, *reversed(rows)]) + b"\n")
    return Dataset(directory, dataset.truth)


def migrate(run: Run) -> None:
    done = run.cli("migrate", "-c", str(run.config), "--workers", "2", "--json")
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_runs_in_different_arrival_orders_give_every_account_the_same_golden_id(
    small_dataset: Dataset, run_factory: Callable[..., Run], tmp_path: Path, dedupe_migration: Run,
) -> None:
    forward = dedupe_migration  # the files in their own order, migrated once for the session
    backward = run_factory(reversed_customers(small_dataset, tmp_path / "reversed"), dedupe=True, suffix="-backward")
    migrate(backward)
    first, second = golden_of(forward.target_dsn), golden_of(backward.target_dsn)
    assert set(first) == set(second) == {t["source_key"] for t in small_dataset.ok("account")}
    assert partition(first) == partition(second), "the same clusters"
    differing = sorted(s for s in first if first[s] != second[s])
    assert not differing, f"{len(differing)} source accounts got another golden id, first {differing[:5]}"
    clusters = partition(first)
    assert len(clusters) < len(first), "the data has duplicates to merge"
    not_smallest = sorted(first[min(c)] for c in clusters if first[min(c)] != min(c))
    assert not not_smallest, f"golden ids that are not their cluster's smallest source id: {not_smallest[:5]}"
    # Reversed, most clusters were absorbed into a later, smaller id: the target still holds one account
    # per golden id with every child on its customer's golden account.
    assert_golden_target(backward.target_dsn, small_dataset)
