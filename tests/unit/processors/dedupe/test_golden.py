"""Survivorship: which member's values the golden record keeps, per field group, in any order."""

from __future__ import annotations

from datetime import date
from itertools import permutations
from typing import Any

import pytest

from processors.dedupe import DedupeConfig
from processors.dedupe.features import extract
from processors.dedupe.golden import Survivor, golden_record

pytestmark = pytest.mark.unit


def golden(records: list[dict[str, Any]], config: DedupeConfig | None = None) -> dict[str, Any]:
    survivor = Survivor(config or DedupeConfig())
    value = survivor.rebuild((r["customer_id"], extract(r, "account")) for r in records)
    return golden_record(min(r["customer_id"] for r in records), value)


def test_a_full_first_name_beats_an_initial_even_when_older(account: Any) -> None:
    old = account(customer_id="C1", customer_since=date(2010, 1, 1))
    new = account(customer_id="C2", first_name="J.", customer_since=date(2024, 1, 1))
    g = golden([old, new])
    assert (g["first_name"], g["last_name"], g["full_name"]) == ("John", "Doe", "John Doe")


def test_names_are_picked_as_a_whole(account: Any) -> None:
    swapped = account(customer_id="C1", first_name="Doe", last_name="John", customer_since=date(2024, 1, 1))
    g = golden([account(customer_id="C2", customer_since=date(2010, 1, 1)), swapped])
    assert (g["first_name"], g["last_name"]) in {("John", "Doe"), ("Doe", "John")}  # never "John John"
    assert g["full_name"] == f"{g['first_name']} {g['last_name']}"


def test_most_recent_member_gives_email_and_phone(account: Any) -> None:
    old = account(customer_id="C1", email="old@example.com", customer_since=date(2010, 1, 1))
    new = account(customer_id="C2", email="new@example.com", phone=None, customer_since=date(2024, 1, 1))
    g = golden([old, new])
    assert g["email"] == "new@example.com"
    assert g["phone"] == "+14146510904"  # a value beats null, however recent the null is


def test_source_priority_beats_recency(account: Any) -> None:
    config = DedupeConfig(source_priority=("erp", "customers.csv"))
    trusted = account(customer_id="C1", email="erp@example.com", source="erp", customer_since=date(2010, 1, 1))
    newer = account(customer_id="C2", email="new@example.com", customer_since=date(2024, 1, 1))
    assert golden([trusted, newer], config)["email"] == "erp@example.com"
    assert golden([trusted, newer])["email"] == "new@example.com"


def test_customer_since_is_the_earliest(account: Any) -> None:
    a = account(customer_id="C1", customer_since=date(2015, 5, 5))
    b = account(customer_id="C2", customer_since=date(2011, 1, 1))
    c = account(customer_id="C3", customer_since=None)
    assert golden([a, b, c])["customer_since"] == "2011-01-01"


def test_the_address_comes_from_one_member(account: Any) -> None:
    full = account(customer_id="C1", customer_since=date(2010, 1, 1))
    partial = account(customer_id="C2", street=None, postal_code=None, city="Springfield",
                      customer_since=date(2024, 1, 1))  # fmt: skip
    g = golden([full, partial])
    assert (g["street"], g["city"], g["postal_code"]) == ("4395 Cameron Avenue", "New Lauriehaven", "01236")


def test_any_order_of_members_gives_the_same_golden_record(account: Any) -> None:
    members = [
        account(customer_id="C1", first_name="J.", email=None, customer_since=date(2012, 1, 1)),
        account(customer_id="C2", phone="+14146519999", customer_since=date(2018, 1, 1)),
        account(customer_id="C3", street=None, birth_date=None, customer_since=None),
    ]
    results = [golden(list(p)) for p in permutations(members)]
    assert all(r == results[0] for r in results)
    assert results[0]["member_count"] == 3 and results[0]["golden_id"] == "C1"


def test_merging_two_goldens_equals_building_from_all_members(account: Any) -> None:
    survivor = Survivor(DedupeConfig())
    a = [account(customer_id="C1", customer_since=date(2012, 1, 1)), account(customer_id="C2", first_name="J.")]
    b = [account(customer_id="C3", email="x@example.com", customer_since=date(2020, 1, 1))]

    def build(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return survivor.rebuild((r["customer_id"], extract(r, "account")) for r in rs)

    feats = {r["customer_id"]: extract(r, "account") for r in a + b}
    assert "picks" not in build(b)  # a one-member cluster's picks are derived when it merges
    assert survivor.merge(build(a), build(b), feats.__getitem__) == build(a + b)
    assert survivor.merge(build(b), build(a), feats.__getitem__) == build(a + b)


def test_a_one_member_cluster_merges_on_its_members_ranks(account: Any) -> None:
    # Stored without picks, it merges as if they were stored: the member's ranks decide each group.
    survivor = Survivor(DedupeConfig())
    old = account(customer_id="C1", email="old@example.com", customer_since=date(2012, 1, 1))
    new = account(customer_id="C2", email="new@example.com", customer_since=date(2020, 1, 1))
    feats = {r["customer_id"]: extract(r, "account") for r in (old, new)}
    one, other = survivor.single("C1", feats["C1"]), survivor.single("C2", feats["C2"])
    stored = {**one, "picks": survivor.ranks("C1", feats["C1"])}
    merged = survivor.merge(one, other, feats.__getitem__)
    assert merged == survivor.merge(stored, other, feats.__getitem__)
    assert merged["picks"] == {g: max(survivor.ranks("C1", feats["C1"])[g], survivor.ranks("C2", feats["C2"])[g])
                               for g in merged["picks"]}
    with pytest.raises(ValueError, match="2 members has no picks"):
        survivor.picks({**merged, "picks": None}, feats.__getitem__)
