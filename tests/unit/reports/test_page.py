"""The report page: sections in order with stable ids, autoescaping, plotly.js inlined once, no CDN."""

from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go
import pytest

from crmflow.reports import Report, format_cell, slugify
from crmflow.reports.browser import find_chromium
from crmflow.reports.exceptions import BrowserMissingError, DuplicateVerdictError

pytestmark = pytest.mark.unit


def _bar() -> go.Figure:
    return go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))


def test_sections_keep_their_order_and_get_unique_stable_ids() -> None:
    report = Report("Run 1", "demo")
    report.add_verdict(True, "Reconciled")
    report.add_kpis({"read": 10})
    report.add_chart("Rejects by rule", _bar())
    report.add_table("Rejects by rule", ["rule", "count"], [("email", 3)])
    report.add_text("Notes", "one")
    assert report.section_ids == ["verdict", "kpis", "rejects-by-rule", "rejects-by-rule-2", "notes"]
    html = report.render()
    found = re.findall(r'data-section="([^"]+)"', html)
    assert found == report.section_ids
    assert 'data-verdict="pass"' in html and ">PASS<" in html


def test_a_failed_verdict_says_fail_or_its_label_and_a_page_has_only_one() -> None:
    report = Report("Cutover")
    report.add_verdict(False, "Lag too high", ["cdc lag 120 s > 30 s"], label="NO-GO")
    html = report.render()
    assert 'data-verdict="fail"' in html and "NO-GO" in html and "cdc lag 120 s &gt; 30 s" in html
    with pytest.raises(DuplicateVerdictError):
        report.add_verdict(True, "again")


def test_text_and_cells_are_escaped() -> None:
    report = Report("<script>alert(1)</script>")
    report.add_table("t", ["<b>col</b>"], [["<img src=x onerror=alert(1)>"]])
    report.add_text("n", "a & b")
    html = report.render()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x" not in html and "<b>col</b>" not in html and "a &amp; b" in html


def test_plotly_js_is_inlined_once_whatever_the_number_of_charts_and_no_cdn() -> None:
    report = Report("charts")
    for i in range(3):
        report.add_chart(f"c{i}", _bar())
    html = report.render()
    assert html.count("plotly.js v") <= 2  # the bundle's banner, once (it names its version twice at most)
    assert html.count("Plotly.newPlot(") == 3
    assert not re.search(r"<script[^>]+src=", html)  # nothing loaded from elsewhere: plotly.js is inline
    assert len(html) < len(Report("x").render()) + 6_000_000  # one bundle (~4.7 MB), not three


def test_a_page_without_charts_carries_no_plotly() -> None:
    report = Report("plain")
    report.add_kpis({"a": 1})
    assert "Plotly" not in report.render()


def test_a_table_limit_shows_the_first_rows_and_counts_them_all() -> None:
    report = Report("t")
    report.add_table("Missing ids", ["id"], ([i] for i in range(10)), limit=3)
    html = report.render()
    assert 'data-rows="10"' in html and "Showing 3 of 10 rows." in html
    assert html.count("<tr>") == 4  # header + 3 rows
    empty = Report("e")
    empty.add_table("Nothing", ["id"], [])
    assert "None." in empty.render()


def test_the_callers_figure_is_not_changed() -> None:
    fig = _bar()
    Report("r").add_chart("c", fig)
    assert fig.layout.margin.t is None


def test_write_creates_the_parents(tmp_path: Path) -> None:
    out = Report("w").write(tmp_path / "a" / "b" / "report.html")
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, ""), (True, "yes"), (1234567, "1,234,567"), (0.5, "0.50"), (12345.0, "12,345"), ("x", "x")],
)
def test_format_cell(value: object, shown: str) -> None:
    assert format_cell(value) == shown


def test_slugify() -> None:
    assert slugify("Rejects by rule (top 20)") == "rejects-by-rule-top-20"
    assert slugify("!!!") == "section"


def test_a_missing_chromium_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CRMFLOW_CHROMIUM", raising=False)
    with pytest.raises(BrowserMissingError, match=r"apt-get install .*chromium"):
        find_chromium()
