"""Quality on generated demo data, the pairwise metrics, and the evaluation command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crmflow.demo_data import generate
from crmflow.evaluation.dedupe_eval import DemoRecords, dedupe, load_demo_records, main
from processors.dedupe import DedupeConfig
from processors.dedupe.quality import error_analysis, pairwise_scores, variation

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRecords:
    directory = tmp_path_factory.mktemp("dedupe-demo")
    generate(directory, 2000, seed=11, workers=1)
    return load_demo_records(directory)


def test_generated_duplicates_are_found_with_high_precision(demo: DemoRecords) -> None:
    assignment, _, counters = dedupe(demo.accounts, DedupeConfig())
    scores = pairwise_scores(assignment, demo.clusters)
    assert scores.true_pairs > 150  # the dataset does hold duplicates
    assert scores.precision >= 0.98, error_analysis(assignment, demo.clusters, {})
    assert scores.f1 >= 0.95
    assert counters["largest_cluster"] <= DedupeConfig().max_cluster_size


def test_generated_contacts_are_all_distinct(demo: DemoRecords) -> None:
    assignment, _, _ = dedupe(demo.contacts, DedupeConfig(entity="contact"))
    assert len(set(assignment.values())) == len(demo.contacts)


def test_the_same_order_gives_the_same_clusters(demo: DemoRecords) -> None:
    assert dedupe(demo.accounts, DedupeConfig())[0] == dedupe(demo.accounts, DedupeConfig())[0]


def test_pairwise_scores_count_pairs() -> None:
    truth = {"a": "P1", "b": "P1", "c": "P1", "d": "P2", "e": "P2"}
    predicted = {"a": "G1", "b": "G1", "c": "G2", "d": "G2", "e": "G3"}
    s = pairwise_scores(predicted, truth)
    assert (s.true_pairs, s.predicted_pairs, s.correct_pairs) == (4, 2, 1)
    assert (s.precision, s.recall) == (0.5, 0.25) and s.f1 == pytest.approx(1 / 3)
    assert (s.true_clusters, s.predicted_clusters) == (2, 3)
    perfect = pairwise_scores(truth, truth)
    assert perfect.precision == perfect.recall == perfect.f1 == 1.0


def test_error_analysis_names_the_variation() -> None:
    records: dict[str, dict[str, Any]] = {
        "a": {"first_name": "John", "last_name": "Doe", "email": "x@example.com", "birth_date": "1970-01-01"},
        "b": {"first_name": "J.", "last_name": "Doe", "email": "x@example.com", "birth_date": None},
        "c": {"first_name": "Doe", "last_name": "John", "phone": "+1", "birth_date": "1970-01-01"},
    }
    assert variation(records["a"], records["b"]) == "initial/email+birth_date_missing"
    assert variation(records["a"], records["c"]) == "swap/none"
    report = error_analysis({"a": "G1", "b": "G2", "c": "G1"}, {"a": "P1", "b": "P1", "c": "P2"}, records)
    assert report == {"missed": {"initial/email+birth_date_missing": 1}, "wrongly_merged": {"swap/none": 1}}


def test_the_command_prints_a_json_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--customers", "300", "--seed", "3", "--workers", "1", "--shards", "2", "--json",
                 "--keep", str(tmp_path)]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == 2 and report["accounts"] > 250
    assert {"precision", "recall", "f1", "records_per_second", "errors", "state_sizes"} <= set(report)
    assert (tmp_path / "truth.jsonl").exists()
