"""The generated files: determinism, line accounting, rejects, orphans, duplicate clusters."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from rapidfuzz.distance import Levenshtein

from crmflow.demo_data import QualityRates, generate
from crmflow.demo_data.layout import CUSTOMERS, SNAPSHOT_RULES, SOURCE_FILES, TARGET_FIELDS, TRUTH_FILE

if TYPE_CHECKING:
    from conftest import Dataset

pytestmark = pytest.mark.unit

FILES = [s.name for s in SOURCE_FILES] + [TRUTH_FILE]


def _bytes(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in FILES}


def test_same_seed_gives_same_bytes(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", 1200, seed=3, workers=1)
    second = generate(tmp_path / "b", 1200, seed=3, workers=1)
    assert first == second
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    generate(tmp_path / "c", 1200, seed=4, workers=1)
    assert _bytes(tmp_path / "a")[CUSTOMERS.name] != _bytes(tmp_path / "c")[CUSTOMERS.name]


def test_worker_processes_write_the_same_bytes_as_one_process(tmp_path: Path) -> None:
    one = generate(tmp_path / "one", 2500, seed=5, workers=1, chunk_size=700)
    three = generate(tmp_path / "three", 2500, seed=5, workers=3, chunk_size=700)
    assert one == three
    assert _bytes(tmp_path / "one") == _bytes(tmp_path / "three")
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == sorted(FILES)  # parts cleaned up


def test_zero_customers_writes_headers_only(tmp_path: Path) -> None:
    summary = generate(tmp_path, 0, seed=1, workers=1)
    assert all(f.lines == 0 for f in summary.files.values())
    assert (tmp_path / CUSTOMERS.name).read_text() == ",".join(CUSTOMERS.columns) + "\n"
    assert (tmp_path / TRUTH_FILE).read_text() == ""


def test_one_truth_line_per_data_line(dataset: Dataset) -> None:
    for source in SOURCE_FILES:
        lines = dataset.raw[source.name]
        assert sorted(dataset.truth[source.name]) == sorted(lines) == list(range(2, len(lines) + 2))
        summary = dataset.summary.files[source.name]
        assert summary.lines == len(lines)
        assert summary.ok == sum(1 for t in dataset.truth[source.name].values() if t["outcome"] == "ok")


def test_truth_names_the_line_it_describes(dataset: Dataset) -> None:
    for source in SOURCE_FILES:
        for line, t in dataset.truth[source.name].items():
            raw = dataset.raw[source.name][line].decode("utf-8", "surrogateescape")
            assert next(csv.reader([raw]))[0] == t["source_key"]
            assert t["entity"] == source.entity
            assert (t["cluster"] is not None) == (source is CUSTOMERS)
            if t["outcome"] == "ok":
                assert t["rule"] is None
                assert list(t["clean"]) == [*TARGET_FIELDS[source.entity], "quality_flags"]
                assert t["clean"]["quality_flags"] == sorted(t["clean"]["quality_flags"])
            else:
                assert t["outcome"] == "reject" and t["rule"] and t["clean"] == {}


def test_ids_are_unique_and_well_formed(dataset: Dataset) -> None:
    for source in SOURCE_FILES:
        keys = [t["source_key"] for t in dataset.truth[source.name].values()]
        assert len(keys) == len(set(keys))
        prefix = {"customers": "C", "contacts": "K", "sales": "S", "tickets": "T"}[source.table]
        assert all(k[0] == prefix and k[1:].isdigit() and len(k) == 8 for k in keys)


def test_snapshot_rejects_are_really_malformed(dataset: Dataset) -> None:
    seen: set[str] = set()
    for source in SOURCE_FILES:
        for line, t in dataset.truth[source.name].items():
            raw = dataset.raw[source.name][line]
            fields = dataset.rows[source.name][line]
            if t["rule"] == "encoding":
                with pytest.raises(UnicodeDecodeError):
                    raw.decode("utf-8")
            elif t["rule"] == "csv_malformed":
                assert fields is not None and len(fields) != len(source.columns)
            else:  # every other line is well-formed
                assert fields is not None and len(fields) == len(source.columns)
            if t["rule"] in SNAPSHOT_RULES:
                seen.add(t["rule"])
    assert seen == SNAPSHOT_RULES


def _ok_customer_ids(dataset: Dataset) -> set[str]:
    return {t["source_key"] for t in dataset.truth[CUSTOMERS.name].values() if t["outcome"] == "ok"}


def test_orphans_point_at_customers_that_never_arrive(dataset: Dataset) -> None:
    ok_ids = _ok_customer_ids(dataset)
    in_file = {t["source_key"] for t in dataset.truth[CUSTOMERS.name].values()}
    deleted = 0
    for source in SOURCE_FILES[1:]:
        for line, t in dataset.truth[source.name].items():
            fields = dataset.rows[source.name][line]
            if t["rule"] == "orphan":
                assert fields is not None
                assert fields[1] not in ok_ids
                deleted += fields[1] not in in_file
            elif t["outcome"] == "ok":
                assert t["clean"]["customer_id"] in ok_ids
    assert deleted > 0, "no orphan of a deleted customer (id absent from customers.csv)"


def _names_vary(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same initial and last names at most two edits apart, possibly with first and last swapped."""
    fa, la, fb, lb = a["first_name"], a["last_name"], b["first_name"], b["last_name"]
    pairings = (((fa, la), (fb, lb)), ((fa, la), (lb, fb)))
    return any(f1[0] == f2[0] and Levenshtein.distance(l1, l2) <= 2 for (f1, l1), (f2, l2) in pairings)


def test_duplicates_are_variations_of_one_person(dataset: Dataset) -> None:
    clusters: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t, _fields in dataset.ok(CUSTOMERS.name):
        clusters[t["cluster"]].append(t["clean"])
    multi = [records for records in clusters.values() if len(records) > 1]
    assert len(multi) >= 0.05 * len(clusters)
    kinds: dict[str, int] = defaultdict(int)
    for first, *others in multi:
        for other in others:
            assert _names_vary(first, other), (first["customer_id"], other["customer_id"])
            shared = [k for k in ("email", "phone", "street", "birth_date") if first[k] and first[k] == other[k]]
            assert shared, (first["customer_id"], other["customer_id"])
            kinds["same name" if first["full_name"] == other["full_name"] else "name varies"] += 1
    assert kinds["name varies"] > 0 and kinds["same name"] > 0


def test_children_of_a_duplicate_point_at_its_cluster(dataset: Dataset) -> None:
    cluster_of = {t["source_key"]: t["cluster"] for t in dataset.truth[CUSTOMERS.name].values()}
    sizes: dict[str, int] = defaultdict(int)
    for cluster in cluster_of.values():
        sizes[cluster] += 1
    pointing_elsewhere = 0
    for source in SOURCE_FILES[1:]:
        for t in dataset.truth[source.name].values():
            if t["outcome"] == "ok" and sizes[cluster_of[t["clean"]["customer_id"]]] > 1:
                pointing_elsewhere += 1
    assert pointing_elsewhere > 0


def test_default_rates_give_a_realistic_dataset(tmp_path: Path) -> None:
    summary = generate(tmp_path, 20_000, seed=8, rates=QualityRates(), workers=1)
    records = summary.files[CUSTOMERS.name].lines
    assert 0.07 < summary.duplicate_records / records < 0.13
    for name, f in summary.files.items():
        for rule in ("csv_malformed", "encoding"):
            assert 0.0005 < f.rejected.get(rule, 0) / f.lines < 0.005, (name, rule)
    assert 0.4 < summary.files["contacts.csv"].lines / records < 1.2
    assert 1.2 < summary.files["sales.csv"].lines / records < 2.2
