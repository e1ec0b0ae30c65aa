"""Golden ids, golden records and clusters are a function of the data, not of the arrival order.

The records of one dedupe shard come from several raw partitions, so two runs of the same data can hand
them to the deduper in different orders (issue 14, item 6). Property-style: the same records in many
seeded shuffles give the same clusters, the same golden id per record (the smallest member id) and the
same golden records.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from crmflow.demo_data import generate
from crmflow.evaluation.dedupe_eval import load_demo_records
from processors.dedupe import DedupeConfig, Deduper

pytestmark = pytest.mark.unit

BARE = {"birth_date": None, "street": None, "city": None, "postal_code": None}  # only names, e-mail, phone


def resolve(
    records: list[dict[str, Any]], config: DedupeConfig | None = None
) -> tuple[dict[str, str], dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """(record id → golden id, golden id → golden record, every merge reported) after one run."""
    deduper = Deduper(config or DedupeConfig())
    merges = [m for record in records for m in deduper.process(record).cluster_merges]
    golden_of = dict(deduper.state.clusters)
    goldens = {gid: deduper.golden(gid) or {} for gid in deduper.state.goldens}
    return golden_of, goldens, merges


def members(golden_of: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for rid, gid in golden_of.items():
        out[gid].add(rid)
    return out


@pytest.fixture(scope="module")
def demo_accounts(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory: Path = tmp_path_factory.mktemp("determinism")
    generate(directory, 800, seed=13, workers=1)
    return load_demo_records(directory).accounts


def test_shuffled_arrivals_give_the_same_clusters_golden_ids_and_golden_records(
    demo_accounts: list[dict[str, Any]],
) -> None:
    expected_of, expected_goldens, _ = resolve(demo_accounts)
    clusters = members(expected_of)
    assert sum(1 for m in clusters.values() if len(m) > 1) > 20, "the sample holds duplicates"
    assert all(gid == min(m) for gid, m in clusters.items()), "a golden id is its cluster's smallest member id"
    orders = {"reversed": demo_accounts[::-1]}
    for seed in range(6):
        shuffled = list(demo_accounts)
        random.Random(seed).shuffle(shuffled)
        orders[f"seed {seed}"] = shuffled
    for name, records in orders.items():
        golden_of, goldens, _ = resolve(records)
        differing = sorted(rid for rid in expected_of if golden_of.get(rid) != expected_of[rid])
        assert not differing, f"{name}: {len(differing)} records got another golden id, first {differing[:5]}"
        assert goldens == expected_goldens, f"{name}: golden records differ"


def test_fellegi_sunter_without_deterministic_rules_is_order_independent_too(
    demo_accounts: list[dict[str, Any]],
) -> None:
    # Every blocking pass (phonetic, postcode + year, sorted neighbourhood) is a function of the record alone.
    config = DedupeConfig(scoring="fellegi_sunter", deterministic_rules=())
    expected_of, expected_goldens, _ = resolve(demo_accounts, config)
    assert sum(1 for m in members(expected_of).values() if len(m) > 1) > 20
    for seed in range(3):
        shuffled = list(demo_accounts)
        random.Random(100 + seed).shuffle(shuffled)
        golden_of, goldens, _ = resolve(shuffled, config)
        assert golden_of == expected_of and goldens == expected_goldens, f"seed {seed}"


def test_a_smaller_id_arriving_late_takes_over_and_absorbs_the_cluster(account: Any) -> None:
    records = [
        account(customer_id="C5", phone=None, **BARE),
        account(customer_id="C3", email=None, phone="+14146519999", **BARE),
        account(customer_id="C8", phone="+14146519999", **BARE),  # bridges C5 (e-mail) and C3 (phone)
        account(customer_id="C1", first_name="J.", email=None, phone="+14146519999", **BARE),  # smallest id
    ]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]):
        golden_of, goldens, merges = resolve([records[i] for i in order])
        assert set(golden_of.values()) == {"C1"} and list(goldens) == ["C1"], order
        assert goldens["C1"]["member_count"] == 4 and goldens["C1"]["first_name"] == "John", order
        assert all(absorbed > survivor for absorbed, survivor in merges), "always absorbed into a smaller id"
        assert len({absorbed for absorbed, _ in merges}) == len(merges), "a golden id is absorbed once"


def test_survivorship_ties_are_broken_by_record_id_in_any_order(account: Any) -> None:
    # Equal on every criterion but the e-mail: the record id decides, whichever arrived first.
    twins = [account(customer_id=f"C{i}", email=f"j{i}@example.com", phone="+14146519999") for i in (4, 2, 7)]
    picks = {resolve([twins[i] for i in order])[1]["C2"]["email"] for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2])}
    assert len(picks) == 1
