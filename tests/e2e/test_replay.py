"""Bad input ends in the DLQ with its reason and the counts reconcile; after the config is fixed, ONE
`crmflow dlq replay` carries the letters through to the target: the fixed records land exactly once and
their letters are resolved (hidden from `dlq list`), the rest fail again with their true rule; and a
re-run of the migration adds no second copy of any letter to what `dlq list` shows."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Dataset, Run, assert_target_matches_truth, target_rows

pytestmark = pytest.mark.e2e

TOO_LONG = "T9999999"


def _eu_customers(data: Dataset, n: int = 2) -> tuple[list[dict[str, Any]], list[bytes]]:
    """``n`` ok customers whose line has non-ASCII letters that Windows-1252 can write and that have
    children: their truth entries and their lines (UTF-8, without the line end)."""
    parents = {t["clean"].get("customer_id") for t in data.truth if t["entity"] != "account"}
    lines = (data.dir / "customers.csv").read_bytes().split(b"\n")
    picked: list[tuple[dict[str, Any], bytes]] = []
    for t in data.ok("account"):
        line = lines[t["line"] - 1].rstrip(b"\r")
        text = line.decode("utf-8")
        if t["source_key"] in parents and not text.isascii() and _cp1252(text):
            picked.append((t, line))
        if len(picked) == n:
            break
    assert len(picked) == n, "the dataset has no such customers"
    return [t for t, _ in picked], [line for _, line in picked]


def _cp1252(text: str) -> bool:
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def _cli_json(run: Run, *args: str) -> dict[str, Any]:
    res = run.cli(*args, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def test_one_replay_after_a_config_fix_lands_the_fixed_records_and_resolves_their_letters(
    small_dataset: Dataset, run_factory: Callable[..., Run], tmp_path: Path,
) -> None:
    # The generated data has malformed lines, bad encodings, unparseable dates and amounts. Add a ticket
    # whose subject breaks the entity model, and move two customers (who have children) to a second
    # export written in Windows-1252.
    data = tmp_path / "data"
    shutil.copytree(small_dataset.dir, data)
    with (data / "tickets.csv").open("a", encoding="utf-8") as fh:
        fh.write(f'{TOO_LONG},C0000001,2024-01-02,{"x" * 600},Open,Low\n')
    dataset = Dataset(data, small_dataset.truth)
    eu_truth, eu_lines = _eu_customers(dataset)
    customers = (data / "customers.csv").read_bytes()
    header = customers.split(b"\n", 1)[0]
    for line in eu_lines:  # a blank line holds no record and keeps the other lines' numbers
        customers = customers.replace(line + b"\n", b"\n", 1)
    (data / "customers.csv").write_bytes(customers)
    eu_file = data / "customers_eu.csv"
    eu_file.write_bytes(b"\n".join([header, *(ln.decode("utf-8").encode("cp1252") for ln in eu_lines)]) + b"\n")

    def broken_config(raw: dict[str, Any]) -> None:
        # Two mistakes: ticket dates accepted only in ISO form (MM/DD/YYYY and DD.MM.YYYY rejected), and the
        # Windows export declared as UTF-8.
        for f in raw["entities"]["case"]["fields"]:
            if f.get("source") == "Support_Ticket_Date":
                f["transform"] = {"parse_date": {"formats": ["%Y-%m-%d"]}}
        raw["sources"]["customers_eu"] = {**raw["sources"]["customers"], "path": str(eu_file), "encoding": "utf-8"}

    broken = run_factory(dataset, broken_config)
    summary = _cli_json(broken, "migrate", "-c", str(broken.config))
    assert summary["reconciled"] is True
    for rule in ("csv_malformed", "encoding", "currency_format", "schema", "orphan", "date_format"):
        assert summary["rejected_by_rule"].get(rule, 0) > 0, rule
    before = _cli_json(broken, "dlq", "list", "-c", str(broken.config), "--limit", "100000")
    letters = before["letters"]
    assert before["total"] == before["shown"] == len(letters) == sum(summary["rejected_by_rule"].values())
    assert len({(lt["entity"], lt["origin"], lt["rule"]) for lt in letters}) == len(letters)
    schema = [lt for lt in letters if lt["rule"] == "schema"]
    assert [(lt["stage"], lt["field"], lt["entity"]) for lt in schema] == [("process", "subject", "case")]
    assert "x" * 20 not in json.dumps(letters)
    eu_letters = [lt for lt in letters if lt["origin"].startswith("customers_eu.csv:")]
    assert [(lt["stage"], lt["rule"]) for lt in eu_letters] == [("snapshot", "encoding")] * len(eu_lines)
    limited = _cli_json(broken, "dlq", "list", "-c", str(broken.config), "--limit", "3")
    assert (limited["shown"], len(limited["letters"]), limited["total"]) == (3, 3, before["total"])

    # Fix the config (same topics, groups and target) and replay every open letter, in one command.
    fixed_raw = yaml.safe_load(broken.config.read_text())
    for f in fixed_raw["entities"]["case"]["fields"]:
        if f.get("source") == "Support_Ticket_Date":
            f["transform"] = "parse_date"
    fixed_raw["sources"]["customers_eu"]["encoding"] = "cp1252"
    fixed = broken.config.with_name("fixed.yaml")
    fixed.write_text(yaml.safe_dump(fixed_raw, sort_keys=False))
    res = broken.cli("dlq", "replay", "-c", str(fixed), "--json")
    assert res.returncode == 1, res.stderr[-3000:]  # the true rejects fail again
    report = json.loads(res.stdout)
    outcomes = {o["id"]: o for o in report["letters"]}
    assert set(outcomes) == {lt["id"] for lt in letters}

    # Each replayed record meets its true fate: what the fix makes valid landed (the re-encoded customers,
    # their children that were orphans, the tickets with local dates); the rest failed again with the rule
    # the ground truth gives it (an unparseable date stays date_format, a ticket of an unknown customer
    # becomes an orphan, which the date rule had hidden).
    truth_at = {f'{t["source_file"]}:{t["line"]}': t for t in dataset.truth}
    eu_keys = {t["source_key"] for t in eu_truth}
    eu_children = {f'{t["source_file"]}:{t["line"]}' for t in dataset.truth
                   if t["entity"] != "account" and t["outcome"] == "ok" and t["clean"].get("customer_id") in eu_keys}
    for lt in letters:
        o = outcomes[lt["id"]]
        truth = truth_at.get(lt["origin"])
        if lt["origin"].startswith("customers_eu.csv:") or lt["origin"] in eu_children:
            assert o["outcome"] == "landed", o
        elif lt["rule"] == "duplicate_key":
            assert o["outcome"] == "skipped", o
        elif lt["rule"] == "schema":
            assert (o["outcome"], o["new_rule"]) == ("failed", "schema"), o
        else:
            assert truth is not None, lt
            if truth["outcome"] == "ok":
                assert o["outcome"] == "landed", (o, truth)
            else:
                assert (o["outcome"], o["new_rule"]) == ("failed", truth["rule"]), (o, truth)
    assert report["landed"] >= len(eu_lines) + len(eu_children) + 1
    assert report["failed"] > 0

    # The target is now exactly the truth: the two customers of the Windows export are there with their
    # letters decoded right, and every other record is as an error-free run leaves it.
    assert_target_matches_truth(broken.target_dsn, dataset)
    accounts = target_rows(broken.target_dsn, "account", ["full_name"])
    assert {k: accounts[k]["full_name"] for k in eu_keys} == {t["source_key"]: t["clean"]["full_name"]
                                                              for t in eu_truth}

    # Landed letters are resolved and hidden; what failed again is listed once, with its attempt.
    after = _cli_json(broken, "dlq", "list", "-c", str(fixed), "--limit", "100000")
    landed = {i for i, o in outcomes.items() if o["outcome"] == "landed"}
    assert not landed & {lt["id"] for lt in after["letters"]}
    assert after["total"] == report["failed"] + report["skipped"]
    assert len({(lt["entity"], lt["origin"]) for lt in after["letters"]}) == after["total"]
    retried = {lt["origin"]: lt["attempt"] for lt in after["letters"] if lt["stage"] != "snapshot" or
               lt["rule"] != "duplicate_key"}
    assert set(retried.values()) == {2}
    everything = _cli_json(broken, "dlq", "list", "-c", str(fixed), "--all", "--limit", "100000")
    status = {lt["id"]: lt["status"] for lt in everything["letters"]}
    assert all(status[i] == "resolved" for i in landed)

    # A re-run of the migration rejects the same records again: `dlq list` still shows each of them once.
    rerun = _cli_json(broken, "migrate", "-c", str(fixed))
    assert rerun["reconciled"] is True
    again = _cli_json(broken, "dlq", "list", "-c", str(fixed), "--limit", "100000")
    assert {lt["id"] for lt in again["letters"]} == {lt["id"] for lt in after["letters"]}
    assert all(lt["copies"] >= 2 and rerun["run_id"] in lt["run_ids"] for lt in again["letters"]
               if lt["rule"] != "duplicate_key")
    assert_target_matches_truth(broken.target_dsn, dataset)
