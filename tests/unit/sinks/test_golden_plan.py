"""Resolving a batch's golden ids to their final survivors before the sink writes it."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.postgres.golden import GoldenMerge, golden_ids, plan_goldens

pytestmark = pytest.mark.unit


def rec(cid: str, golden: str | None, *merged: str, evidence: str | None = None) -> dict[str, Any]:
    return {"customer_id": cid, "golden_id": golden, "merged_golden_ids": list(merged), "run_id": "r1",
            "match_evidence": evidence}


def test_dedupe_off_needs_nothing() -> None:
    values = [rec("C1", None), rec("C2", None)]
    assert golden_ids(values) == []
    plan = plan_goldens(enumerate(values), {})
    assert (plan.dedupe, plan.golden, plan.stale, plan.merges) == (False, {}, set(), [])


def test_golden_ids_lists_own_and_merged_ids() -> None:
    assert golden_ids([rec("C3", "G2", "G5", "G1"), rec("C4", "G2"), rec("C9", None, "G7")]) == ["G1", "G2", "G5"]


def test_a_chain_in_one_batch_rewrites_to_the_final_survivor() -> None:
    values = [rec("A1", "A"), rec("S1", "S"), rec("X", "S", "A", evidence='[{"rule": "email"}]'),
              rec("R1", "R"), rec("Y", "R", "S"), rec("Z", "R")]
    plan = plan_goldens(enumerate(values), {})
    assert plan.dedupe
    assert plan.golden == {0: "R", 1: "R", 2: "R"}
    assert plan.stale == set()
    assert plan.merges == [
        GoldenMerge(2, "A", "S", "R", "X", "r1", '[{"rule": "email"}]'),
        GoldenMerge(4, "S", "R", "R", "Y", "r1", None),
    ]
    assert plan.params()["final"] == ["R", "R"]


def test_ids_absorbed_by_earlier_batches_are_followed_and_their_records_are_stale() -> None:
    # The database knows A -> R (A into S, then S into R); the batch re-delivers a record of A and the
    # record that merged A into S.
    values = [rec("A1", "A"), rec("X", "S", "A"), rec("R2", "R")]
    plan = plan_goldens(enumerate(values), {"A": "R", "S": "R"})
    assert plan.golden == {0: "R", 1: "R"}
    assert plan.stale == {0, 1}
    assert [(m.absorbed, m.survivor, m.final) for m in plan.merges] == [("A", "S", "R")]


def test_an_id_absorbed_twice_keeps_its_first_survivor_and_self_merges_are_ignored() -> None:
    plan = plan_goldens(enumerate([rec("X", "S", "A", "S"), rec("Y", "T", "A")]), {})
    assert [(m.absorbed, m.survivor) for m in plan.merges] == [("A", "S")]


def test_a_cycle_in_corrupt_input_terminates() -> None:
    plan = plan_goldens(enumerate([rec("X", "A", "B"), rec("Y", "B", "A")]), {})
    assert set(plan.golden.values()) <= {"A", "B"}


def test_evidence_that_is_not_json_is_not_logged() -> None:
    plan = plan_goldens(enumerate([rec("X", "S", "A", evidence="{oops")]), {})
    assert plan.merges[0].evidence is None
