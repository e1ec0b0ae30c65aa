"""``crmflow demo-data --noise hard``: duplicates that names, address, birth date and an id must link."""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from crmflow.config import load_config
from crmflow.demo_data import generate
from crmflow.demo_data.hard import (
    NICKNAMES,
    birth_typo,
    first_letter_typo,
    id_typo,
    national_id,
    vary_name,
)
from crmflow.evaluation.labelled import load_records

pytestmark = pytest.mark.unit

HARD_CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow-hard.yaml"


@pytest.fixture(scope="session")
def hard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hard")
    generate(out, 4000, 11, workers=1, noise_profile="hard")
    return out


@pytest.fixture(scope="session")
def truth(hard_dir: Path) -> list[dict[str, Any]]:
    with (hard_dir / "truth.jsonl").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def _clusters(truth: list[dict[str, Any]], entity: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in truth:
        if t["entity"] == entity and t["outcome"] == "ok" and t["cluster"]:
            out[t["cluster"]].append(t["clean"])
    return out


def test_most_duplicates_have_neither_email_nor_phone(truth: list[dict[str, Any]]) -> None:
    duplicates = [c for members in _clusters(truth, "account").values() for c in members[1:]]
    assert len(duplicates) > 200
    bare = sum(1 for c in duplicates if c["email"] is None and c["phone"] is None)
    assert bare / len(duplicates) > 0.6, f"{bare} of {len(duplicates)} duplicates without e-mail and phone"


def test_duplicates_vary_their_names_birth_dates_and_ids(truth: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    short_forms = {s for forms in NICKNAMES.values() for s in forms}
    for members in _clusters(truth, "account").values():
        first = members[0]
        for other in members[1:]:
            if other["first_name"] is None or other["last_name"] is None:
                seen.add("missing part")
            elif (other["first_name"], other["last_name"]) == (first["last_name"], first["first_name"]):
                seen.add("swap")
            elif other["first_name"] in short_forms and first["first_name"] in NICKNAMES:
                seen.add("nickname")
            elif first["first_name"] and other["first_name"][:1] != first["first_name"][:1]:
                seen.add("first letter")
            if first["birth_date"] and other["birth_date"] and first["birth_date"] != other["birth_date"]:
                seen.add("birth date")
            if first["national_id"] and other["national_id"] and first["national_id"] != other["national_id"]:
                seen.add("id typo")
    assert seen == {"missing part", "swap", "nickname", "first letter", "birth date", "id typo"}


def test_the_truth_is_what_the_hard_config_maps(hard_dir: Path, truth: list[dict[str, Any]]) -> None:
    """The hard config's mapper (National_ID → national_id) makes of every kept line the truth's clean values."""
    config = load_config(HARD_CONFIG)
    mapped = {r["customer_id"]: r for r in load_records(config, "account", [hard_dir]).records}
    clean = {t["clean"]["customer_id"]: t["clean"] for t in truth if t["entity"] == "account" and t["outcome"] == "ok"}
    assert mapped.keys() == clean.keys()
    fields = ("full_name", "first_name", "last_name", "email", "phone", "birth_date", "postal_code", "national_id")
    for cid, record in mapped.items():
        got = {f: record[f].isoformat() if isinstance(record[f], date) else record[f] for f in fields}
        assert got == {f: clean[cid][f] for f in fields}, cid


def test_customers_csv_has_the_national_id_column_only_in_the_hard_profile(hard_dir: Path, tmp_path: Path) -> None:
    with (hard_dir / "customers.csv").open(encoding="utf-8", errors="replace") as f:
        assert next(csv.reader(f))[-1] == "National_ID"
    generate(tmp_path, 50, 11, workers=1)
    with (tmp_path / "customers.csv").open(encoding="utf-8", errors="replace") as f:
        assert next(csv.reader(f))[-1] == "Customer_Since"


def test_contacts_have_duplicates_within_and_across_accounts(truth: list[dict[str, Any]]) -> None:
    clusters = [m for m in _clusters(truth, "contact").values() if len(m) > 1]
    assert len(clusters) > 20
    same = sum(1 for m in clusters if len({c["customer_id"] for c in m}) == 1)
    across = len(clusters) - same
    assert same > 5 and across > 5


def test_contact_duplicates_on_another_account_keep_an_email_or_a_phone(truth: list[dict[str, Any]]) -> None:
    """A name alone on two unrelated accounts is a namesake as much as a duplicate: a duplicate entered on
    another account keeps one channel at least; on its own account most have neither."""
    contacts = [t for t in truth if t["entity"] == "contact" and t["outcome"] == "ok"]
    originals = {t["cluster"]: t["clean"] for t in contacts if t["source_key"] == t["cluster"]}
    same: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    for t in contacts:
        first = originals.get(t["cluster"])
        if first is None or t["source_key"] == t["cluster"]:
            continue
        (same if t["clean"]["customer_id"] == first["customer_id"] else other).append(t["clean"])
    assert len(same) > 50 and len(other) > 50
    assert all(c["email"] is not None or c["phone"] is not None for c in other)
    assert sum(1 for c in other if c["email"] is not None and c["phone"] is not None) < len(other) / 2
    bare = sum(1 for c in same if c["email"] is None and c["phone"] is None)
    assert bare / len(same) > 0.6, f"{bare} of {len(same)} duplicates on their own account without e-mail and phone"


def test_contact_clusters_are_unique_per_record_and_persons_keep_their_cluster(truth: list[dict[str, Any]]) -> None:
    contacts = [t for t in truth if t["entity"] == "contact" and t["outcome"] == "ok"]
    assert all(t["cluster"] for t in contacts)
    assert len({t["source_key"] for t in contacts}) == len(contacts)
    for members in _clusters(truth, "contact").values():
        names = {n for c in members for n in (c["first_name"], c["last_name"]) if n}
        assert names, "a contact duplicate keeps at least one name part"


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    generate(tmp_path / "a", 600, 3, workers=1, noise_profile="hard", chunk_size=200)
    generate(tmp_path / "b", 600, 3, workers=2, noise_profile="hard", chunk_size=200)
    for name in ("customers.csv", "contacts.csv", "truth.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# ------------------------------------------------------------------------------------------ noise functions


def test_birth_typo_is_another_valid_date_close_in_its_digits() -> None:
    rng = random.Random(1)
    day = date(1971, 4, 8).toordinal()
    for _ in range(200):
        other = birth_typo(day, rng)
        a, b = date.fromordinal(day).isoformat(), date.fromordinal(other).isoformat()
        assert other != day
        swapped = a[:4] == b[:4] and a[5:7] == b[8:10] and a[8:10] == b[5:7]
        assert swapped or sum(x != y for x, y in zip(a, b, strict=True)) <= 2


def test_name_variations_never_lose_both_parts_and_nicknames_are_real() -> None:
    rng = random.Random(2)
    for _ in range(500):
        first, last, kinds = vary_name("William", "Smith", rng)
        assert first or last
        if kinds == ["nickname"]:
            assert first in ("Will", "Bill")
    assert first_letter_typo("Catherine", random.Random(0))[1:] == "atherine"
    assert first_letter_typo("Catherine", random.Random(0))[0] != "C"


def test_id_typo_changes_one_digit_or_swaps_two() -> None:
    rng = random.Random(3)
    for _ in range(200):
        nid = national_id(rng)
        other = id_typo(nid, rng)
        assert len(nid) == len(other) == 9 and other != nid
        assert sum(x != y for x, y in zip(nid, other, strict=True)) <= 2


def test_households_share_surname_and_address_but_are_other_people(truth: list[dict[str, Any]]) -> None:
    firsts = {members[0]["customer_id"]: c for c, members in _clusters(truth, "account").items()}
    homes: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for t in truth:
        c = t["clean"]
        kept = t["entity"] == "account" and t["outcome"] == "ok" and c["customer_id"] in firsts
        if kept and c["last_name"] and c["street"] and c["postal_code"]:
            homes[(c["last_name"], c["street"], c["postal_code"])].add(t["cluster"])
    assert sum(1 for clusters in homes.values() if len(clusters) > 1) > 20
