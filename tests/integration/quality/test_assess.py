"""`crmflow assess` on generated demo data: its findings match the generator's truth, no personal data
is shown in the clear, and the page draws its charts offline in headless Chromium.

Set CRMFLOW_SCREENSHOTS=docs/img to refresh the README's screenshot (assess.png)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from crmflow.demo_data.run import generate
from crmflow.reports.browser import dump_dom, screenshot

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
DEMO_CONFIG = REPO / "deploy" / "demo" / "crmflow.yaml"


@pytest.fixture(scope="module")
def assessed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """(data dir, out dir, assess.json) of one `crmflow assess` over 2,500 generated customers."""
    root = tmp_path_factory.mktemp("assess")
    data = root / "data"
    generate(data, 2500, 23, workers=1)
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    for src in raw["sources"].values():
        src["path"] = str(data / Path(src["path"]).name)
    config = root / "crmflow.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = root / "out"
    res = subprocess.run([sys.executable, "-m", "crmflow", "assess", "-c", str(config), "--out", str(out), "--json",
                          "--no-progress"], capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout)
    assert json.loads((out / "assess.json").read_text()) == result
    return data, out, result


def _truth(data: Path) -> list[dict[str, Any]]:
    with (data / "truth.jsonl").open() as fh:
        return [json.loads(line) for line in fh]


def test_rejects_per_rule_and_landing_records_match_the_truth(assessed: tuple[Path, Path, dict[str, Any]]) -> None:
    data, _, result = assessed
    truth = _truth(data)
    expected = Counter(t["rule"] for t in truth if t["outcome"] == "reject")
    assert result["rejects_by_rule"] == dict(expected)
    ok = Counter(t["source_file"] for t in truth if t["outcome"] == "ok")
    for source in result["sources"].values():
        assert source["mapped"] == ok[source["file"]], source["file"]


def test_orphans_are_found_with_their_file_and_line(assessed: tuple[Path, Path, dict[str, Any]]) -> None:
    data, _, result = assessed
    truth = _truth(data)
    orphan_lines = {(t["source_file"], t["line"]) for t in truth if t["rule"] == "orphan"}
    assert orphan_lines
    found = sum(o["count"] for o in result["orphans"].values())
    assert found == len(orphan_lines)
    for o in result["orphans"].values():
        for ex in o["examples"]:
            file, line = ex["at"].rsplit(":", 1)
            assert (file, int(line)) in orphan_lines


def test_profiles_rules_duplicates_and_outliers_are_reported(assessed: tuple[Path, Path, dict[str, Any]]) -> None:
    _, _, result = assessed
    email = result["sources"]["customers"]["fields"]["Contact_Email"]
    assert email["pii"] and 0 < email["blank_rate"] < 0.2 and email["distinct"] > 1000
    region = result["sources"]["customers"]["fields"]["Region"]
    assert not region["pii"] and {v["value"] for v in region["top_values"]} & {"EU", "NA"}
    changed = {(r["source"], r["field"]) for r in result["rules"] if r["outcome"] == "changed"}
    assert ("customers", "phone") in changed and ("sales", "total_sales") in changed
    dup = result["duplicates"]
    assert dup["enabled"] and dup["duplicate_records"] > 0 and dup["cluster_sizes"]["1"] > 0
    fields = {(o["entity"], o["field"]) for o in result["outliers"]}
    assert ("sale", "total_sales") in fields and ("account", "birth_date") in fields


def _pii_values(data: Path) -> set[str]:
    values: set[str] = set()
    with (data / "customers.csv").open(encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            for column in ("Contact_Email", "Phone", "Street_Address"):
                value = (row.get(column) or "").strip()
                if len(value) >= 8:
                    values.add(value)
            first, last = (row.get("First_Name") or "").strip(), (row.get("Last_Name") or "").strip()
            if first and last:
                values.add(f"{first} {last}")
    return values


def test_no_personal_data_in_the_clear(assessed: tuple[Path, Path, dict[str, Any]]) -> None:
    data, out, _ = assessed
    values = _pii_values(data)
    assert len(values) > 5000
    text = (out / "assess.json").read_text()
    html = (out / "assess.html").read_text()
    page = re.sub(r"<script>.*?</script>", "", html, count=1, flags=re.S)  # plotly.js itself: no data in it
    for value in values:
        assert value not in text, "a source value in the clear in assess.json"
        assert value not in page, "a source value in the clear in assess.html"


def _section(dom: str, sid: str) -> str:
    found = re.search(rf'<section[^>]*data-section="{sid}"[^>]*>(.*?)</section>', dom, re.S)
    assert found, f"no section {sid} in the rendered page"
    return found.group(0)


def test_the_page_draws_its_charts_offline(assessed: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    _, out, result = assessed
    dom = dump_dom(out / "assess.html")
    for chart in ("rule-hits", "null-and-blank-rates", "expected-cluster-sizes"):
        assert 'class="main-svg"' in _section(dom, chart), f"{chart} was not drawn"
    kpis = _section(dom, "kpis")
    records = sum(s["records"] for s in result["sources"].values())
    assert f"{records:,}" in kpis
    rejects = _section(dom, "rejects-by-rule")
    for rule, n in result["rejects_by_rule"].items():
        assert f'<td>{rule}</td><td class="num">{n:,}</td>' in rejects
    orphans = _section(dom, "orphans")
    assert "contacts" in orphans and "sales" in orphans
    png = screenshot(out / "assess.html", tmp_path / "assess.png", height=2400)
    assert png.stat().st_size > 20_000
    if os.environ.get("CRMFLOW_SCREENSHOTS"):
        shutil.copy(png, Path(os.environ["CRMFLOW_SCREENSHOTS"]) / "assess.png")
