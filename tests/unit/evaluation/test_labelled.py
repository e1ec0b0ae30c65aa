"""``crmflow dedupe evaluate``: any labelled CSV of true pairs, scored through the config's own matcher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crmflow.cli.main import app
from crmflow.demo_data import generate
from crmflow.evaluation.labelled import TruthFileError, read_truth, true_clusters

pytestmark = pytest.mark.unit

HARD_CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow-hard.yaml"

# A member list of another system: semicolons, its own column names, no e-mail or phone at all.
PEOPLE = """MemberNo;GivenName;FamilyName;DOB;Zip;Addr;SSN
M1;Margaret;Okonkwo;1961-03-14;10115;12 Linden Street;501234567
M2;Peggy;Okonkwo;1961-03-14;10115;12 Linden Street;501234567
M3;Margaret;Okonkwo;1961-14-03;10115;12 Linden St;
M4;Tomasz;Brzezinski;1988-07-02;80331;3 Isar Road;702345678
M5;Tomasz;Brzezinksi;1988-07-02;80331;3 Isar Road;702345687
M6;Anna;Schmidt;1990-01-01;20095;7 Elbe Road;
M7;Anna;Schmidt;1979-05-05;20095;9 Alster Road;
"""
CONFIG = """version: 1
run: {name: members}
sources:
  members: {kind: csv, path: people.csv, entity: account, key: MemberNo, delimiter: ";"}
entities:
  account:
    fields:
      - {source: MemberNo, target: customer_id}
      - {target: full_name, transform: {join: [first_name, last_name]}}
      - {source: GivenName, target: first_name, transform: name_case}
      - {source: FamilyName, target: last_name, transform: name_case}
      - {source: DOB, target: birth_date, transform: parse_date}
      - {source: Zip, target: postal_code, transform: trim}
      - {source: Addr, target: street, transform: street}
      - {source: SSN, target: national_id, transform: trim}
dedupe:
  identifier_fields: [national_id]
  scoring: fellegi_sunter
  match_probability: 0.999
  vetoes: []        # M2 is a nickname of M1 (Peggy, Margaret): the default first-name veto would refuse it
"""
# Pairs labelled by hand, under column names of their own, with a label column (M6/M7: two people).
PAIRS = """left_member,right_member,is_match
M1,M2,yes
M2,M3,yes
M4,M5,1
M6,M7,no
"""


@pytest.fixture
def members(tmp_path: Path) -> Path:
    (tmp_path / "people.csv").write_text(PEOPLE, encoding="utf-8")
    (tmp_path / "crmflow.yaml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "pairs.csv").write_text(PAIRS, encoding="utf-8")
    return tmp_path


def _evaluate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["dedupe", "evaluate", *args])
    return result.exit_code, result.output


def test_a_hand_labelled_csv_with_its_own_columns(members: Path) -> None:
    code, out = _evaluate("-c", str(members / "crmflow.yaml"), "--truth", str(members / "pairs.csv"), "--json")
    assert code == 0, out
    r = json.loads(out)
    assert (r["records"], r["labelled_pairs"], r["true_pairs"]) == (7, 3, 4)  # M1-M2-M3 closes to 3 pairs
    assert r["precision"] == 1.0 and r["recall"] == 1.0, r
    assert r["pair_completeness"] == 1.0 and 0.0 < r["reduction_ratio"] < 1.0


def test_misses_and_false_merges_show_masked_evidence(members: Path) -> None:
    # Label M6/M7 a match: the matcher (rightly) keeps them apart, so it is a miss, with its evidence.
    (members / "pairs.csv").write_text(PAIRS.replace("M6,M7,no", "M6,M7,yes"), encoding="utf-8")
    code, out = _evaluate("-c", str(members / "crmflow.yaml"), "--truth", str(members / "pairs.csv"), "--json")
    assert code == 0, out
    r = json.loads(out)
    assert r["recall"] < 1.0
    miss = r["misses"][0]
    assert (miss["a"], miss["b"], miss["matched"]) == ("M6", "M7", False)
    fields = {f["field"]: f for f in miss["fields"]}
    assert fields["first_name"]["a"] == "A***" and fields["birth_date"]["a"] == "1990-**-**"
    for clear in ("Schmidt", "Anna", "Alster", "1990-01-01", "20095"):
        assert clear not in out
    code, text = _evaluate("-c", str(members / "crmflow.yaml"), "--truth", str(members / "pairs.csv"))
    assert code == 0 and "worst misses:" in text and "M6 ~ M7" in text and "Schmidt" not in text


def test_id_columns_by_name_and_bad_truth_files(members: Path) -> None:
    swapped = "note,b,a\nx,M2,M1\n"
    (members / "named.csv").write_text(swapped, encoding="utf-8")
    assert read_truth(members / "named.csv", id_columns=("a", "b")) == {("M1", "M2")}
    with pytest.raises(TruthFileError, match=r"named\.csv:1: --id-columns"):
        read_truth(members / "named.csv", id_columns=("a", "c"))
    code, out = _evaluate("-c", str(members / "crmflow.yaml"), "--truth", str(members / "named.csv"),
                          "--id-columns", "a,zz")  # fmt: skip
    assert code == 2 and "named.csv:1" in out and "Traceback" not in out


def test_a_config_without_dedupe_section_is_a_clear_error(members: Path) -> None:
    text = CONFIG[: CONFIG.index("dedupe:")]
    (members / "plain.yaml").write_text(text, encoding="utf-8")
    code, out = _evaluate("-c", str(members / "plain.yaml"), "--truth", str(members / "pairs.csv"))
    assert code == 2 and "no dedupe section" in out


def test_true_clusters_are_the_connected_components() -> None:
    clusters = true_clusters(["a", "b", "c", "d", "e"], [("b", "c"), ("a", "b"), ("d", "x")])
    assert clusters == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e"}


def test_the_demo_truth_of_a_small_hard_set(tmp_path: Path) -> None:
    """The demo's truth.jsonl is accepted as it is; the hard config with its defaults finds most pairs."""
    generate(tmp_path, 2500, 5, workers=1, noise_profile="hard")
    code, out = _evaluate("-c", str(HARD_CONFIG), "--data", str(tmp_path), "--truth", str(tmp_path / "truth.jsonl"),
                          "--json", "--worst", "3")  # fmt: skip
    assert code == 0, out
    r = json.loads(out)
    assert r["true_pairs"] > 150 and r["labelled_pairs_unknown_ids"] == 0
    assert r["precision"] >= 0.99 and r["pair_completeness"] >= 0.98
    assert len(r["misses"]) == 3
    code, out = _evaluate("-c", str(HARD_CONFIG), "--data", str(tmp_path), "--truth", str(tmp_path / "truth.jsonl"),
                          "--entity", "contact", "--json", "--worst", "0")  # fmt: skip
    assert code == 0, out
    contacts = json.loads(out)
    assert contacts["entity"] == "contact" and contacts["true_pairs"] > 20


def test_records_the_demo_truth_rejects_take_part_but_are_not_scored(tmp_path: Path) -> None:
    """An orphan contact (its customer was rejected) has no entity in the truth: it is matched, since the stream
    matches it too, but a merge with it is neither a false merge nor a hit."""
    from crmflow.evaluation.labelled import evaluate_records, read_unscored
    from processors.dedupe.config import DedupeConfig

    truth = tmp_path / "truth.jsonl"
    rows = [{"entity": "contact", "source_key": "K1", "cluster": "K1", "outcome": "ok", "clean": {"contact_id": "K1"}},
            {"entity": "contact", "source_key": "K2", "cluster": None, "outcome": "reject", "rule": "orphan",
             "clean": {}},
            {"entity": "contact", "source_key": "K3", "cluster": "K3", "outcome": "ok", "clean": {"contact_id": "K3"}}]
    truth.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_unscored(truth, "contact") == {"K2"} and read_unscored(truth, "account") == set()
    person: dict[str, Any] = {"customer_id": "C1", "first_name": "Abram", "last_name": "Wilms",
                              "email": "a.wilms@example.com", "job_title": "Surveyor"}
    records: list[dict[str, Any]] = [{**person, "contact_id": "K1"}, {**person, "contact_id": "K2"},
               {**person, "contact_id": "K3", "first_name": "Carla", "email": None}]
    config = DedupeConfig().for_contacts()
    counted = evaluate_records(records, read_truth(truth, "contact"), config)
    assert counted["predicted_pairs"] == 1 and counted["precision"] == 0.0, "without the rejects: a false merge"
    report = evaluate_records(records, read_truth(truth, "contact"), config, unscored=read_unscored(truth, "contact"))
    assert report["records"] == 2 and report["unscored_records"] == 1
    assert report["predicted_pairs"] == 0 and report["false_merges"] == []
