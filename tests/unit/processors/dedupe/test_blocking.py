"""Block keys: what each variation of a person still shares, hashing, closed blocks, the shard key."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from processors.dedupe import BlockKeyer, DedupeConfig, Deduper, raw_block_keys, shard_key
from processors.dedupe.blocking import block_passes, pass_key
from processors.dedupe.features import extract, initials_pair

pytestmark = pytest.mark.unit


def keys(record: dict[str, Any], entity: str = "account") -> set[str]:
    return set(raw_block_keys(extract(record, entity), entity))  # type: ignore[arg-type]


def test_raw_keys_of_a_full_account(account: Any) -> None:
    assert keys(account()) == {
        "e|john.doe1@example.com",
        "p|+14146510904",
        "b|1971-04-28|dj",
        "z|US|01236|dj",
        "s|4395|C565|dj",
        "c|new lauriehaven|D000j",
    }


@pytest.mark.parametrize(
    "variant",
    [
        {"first_name": "J."},
        {"first_name": "John D."},
        {"first_name": "Doe", "last_name": "John"},
        {"first_name": "Jonh"},
        {"last_name": "Deo"},
    ],
)
def test_name_variations_share_the_birth_date_key_without_email_or_phone(account: Any, variant: dict[str, Any]) -> None:
    other = account(customer_id="C2", email=None, phone=None, **variant)
    assert "b|1971-04-28|dj" in keys(account()) & keys(other)


def test_without_birth_date_postal_street_and_city_keys_remain(account: Any) -> None:
    shared = keys(account()) & keys(account(customer_id="C2", email=None, phone=None, birth_date=None))
    assert {k[0] for k in shared} == {"z", "s", "c"}


def test_records_without_names_or_values_get_only_the_keys_they_can(account: Any) -> None:
    bare = account(first_name=None, last_name=None, street=None, city=None, postal_code=None, birth_date=None)
    assert keys(bare) == {"e|john.doe1@example.com", "p|+14146510904"}


def test_contact_keys(contact: Any) -> None:
    assert keys(contact(), "contact") == {
        "e|salazar.judith.c1@us.example.net",
        "p|+19316295484",
        "a|C0000001|js",
    }


def test_hashed_keys_hide_the_values_and_depend_on_the_secret(account: Any) -> None:
    feats = extract(account(), "account")
    hashed = BlockKeyer(DedupeConfig(blocking=())).keys(feats)
    assert len(hashed) == 6 and all(len(k) == 2 + 24 and k[1] == ":" for k in hashed)
    assert not any("example" in k or "1971" in k for k in hashed)
    peppered = BlockKeyer(DedupeConfig(blocking=(), block_key_secret=SecretStr("pepper"))).keys(feats)
    assert {k[0] for k in peppered} == {k[0] for k in hashed} and set(peppered).isdisjoint(hashed)
    assert BlockKeyer(DedupeConfig(blocking=(), hash_block_keys=False)).keys(feats) == sorted(keys(account()))
    # With the default passes too: one hashed key per clear-text key, each named by its pass.
    clear = BlockKeyer(DedupeConfig(hash_block_keys=False)).keys(feats)
    every = BlockKeyer(DedupeConfig()).keys(feats)
    assert len(every) == len(clear) > 6
    assert {k.partition(":")[0] for k in every} == {k.partition("|")[0] for k in clear}


def test_a_full_block_is_closed_for_joining_and_comparing(account: Any) -> None:
    # Five people share a placeholder e-mail; with max_block_size 3 the block closes after the third.
    config = DedupeConfig(max_block_size=3, hash_block_keys=False)
    deduper = Deduper(config)
    names = ["Anna", "Bert", "Carl", "Dora", "Emil"]
    results = [
        deduper.process(account(customer_id=f"C{i}", first_name=n, last_name=f"X{n}", email="none@example.com",
                                phone=None, birth_date=None, street=None, city=None, postal_code=None))
        for i, n in enumerate(names)
    ]  # fmt: skip
    assert deduper.state.blocks["e|none@example.com"] == ["C0", "C1", "C2"]
    assert [r.closed_blocks for r in results] == [0, 0, 0, 1, 1]
    assert all(r.merged_into is None for r in results)  # different names: the shared e-mail was vetoed
    assert [e["decision"] for e in results[2].evidence] == ["vetoed", "vetoed"]
    assert results[3].evidence == []  # not compared at all


def test_shard_key_keeps_variations_of_a_person_together(account: Any) -> None:
    variants = [account(), account(first_name="J."), account(first_name="Doe", last_name="John"),
                account(first_name="John K.", email=None), account(last_name="Deo")]  # fmt: skip
    assert {shard_key(v) for v in variants} == {"dj"}
    assert shard_key(account(first_name=None)) == "_"


@pytest.mark.parametrize("names", [("John", "Doe"), ("", "Doe"), ("John", ""), (None, None), ("Émile", "Ölz"),
                                   ("  j.", "d"), ("..", "Doe"), ("Doe", "John")])  # fmt: skip
def test_shard_key_is_the_sorted_initials_of_the_features(account: Any, contact: Any, names: tuple[Any, Any]) -> None:
    """Read from the record itself: the same key as the features' initials pair, for both entities."""
    first, last = names
    for record, entity in ((account(first_name=first, last_name=last), "account"),
                           (contact(first_name=first, last_name=last), "contact")):  # fmt: skip
        assert shard_key(record, entity) == (initials_pair(extract(record, entity)) or "_")  # type: ignore[arg-type]


@pytest.mark.parametrize("entity", ["account", "contact"])
def test_the_compiled_keyer_gives_each_pass_its_own_key(account: Any, contact: Any, entity: str) -> None:
    # The keyer reduces each distinct part once for all passes; every pass must still get the key it gets alone,
    # whatever is missing or reduces to nothing (a name of punctuation, a birth date without a year).
    config = DedupeConfig() if entity == "account" else DedupeConfig().for_contacts()
    make = account if entity == "account" else contact
    variants: list[dict[str, Any]] = [
        {}, {"first_name": None}, {"last_name": "--"}, {"first_name": "Jo", "last_name": "Do"},
        {"birth_date": None}, {"postal_code": None, "street": None}, {"first_name": "Smith", "last_name": "John"},
        {"first_name": "A", "last_name": "B"}, {"job_title": None}, {"customer_id": None},
    ]  # fmt: skip
    keyer = BlockKeyer(config, hashed=False)
    for variant in variants:
        record = make(**{k: v for k, v in variant.items() if k in make()})
        feats = extract(record, entity)  # type: ignore[arg-type]
        alone = {key for spec in block_passes(config) if (key := pass_key(feats, spec, entity)) is not None}  # type: ignore[arg-type]
        expected = sorted(alone | set(raw_block_keys(feats, entity)))  # type: ignore[arg-type]
        assert keyer.raw_keys(feats) == expected, variant
        assert sorted(keyer.key_set(feats)) == expected
