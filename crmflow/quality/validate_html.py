"""validate.html: the verdict, the KPIs, completeness per entity, the discrepancy table and the per-rule chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from crmflow.reports import Report


def write_validate_html(data: dict[str, Any], path: Path) -> Path:
    """Render the JSON of a :class:`~crmflow.quality.validate.ValidationReport` as ``path``."""
    report = Report("Validation", f"run {data.get('run_id') or '(all sources)'} — {data.get('target', '')}")
    headline = "PASS: the target matches the sources" if data["ok"] else "FAIL: the target differs from the sources"
    report.add_verdict(bool(data["ok"]), headline, data.get("reasons") or ())
    kpis: dict[str, str | int | float] = {}
    k = data["kpis"]
    kpis["Data accuracy rate"] = f"{k['data_accuracy_rate']:.2%}"
    kpis["Data completeness rate"] = f"{k['data_completeness_rate']:.2%}"
    speed = k.get("processing_speed_records_per_s")
    kpis["Processing speed"] = f"{speed:,.0f} rec/s" if isinstance(speed, int | float) else "n/a"
    kpis["Source records"] = k["volume_source_records"]
    kpis["Target rows"] = k["volume_target_rows"]
    report.add_kpis(kpis)
    if data.get("confidence"):
        report.add_text("Sample", data["confidence"]["statement"])
    rules = [r for r in data["rules"] if r["touched"]]
    worst = sorted(rules, key=lambda r: (-r["wrong"], r["rule"]))
    worst = [r for r in worst if r["wrong"]][:40] or worst[:25]
    wrong = go.Figure(go.Bar(y=[r["rule"] for r in worst][::-1], x=[r["wrong"] for r in worst][::-1],
                             orientation="h", marker_color="#c0392b",
                             customdata=[r["touched"] for r in worst][::-1],
                             hovertemplate="%{y}: %{x} wrong of %{customdata} touched<extra></extra>"))
    wrong.update_layout(height=max(260, 22 * len(worst) + 100), margin={"l": 360}, xaxis_title="wrong records")
    report.add_chart("Wrong records per mapping rule", wrong)
    fig = go.Figure()
    names = [r["rule"] for r in rules]
    fig.add_bar(name="right", y=names, x=[r["touched"] - r["wrong"] for r in rules], orientation="h")
    fig.add_bar(name="wrong", y=names, x=[r["wrong"] for r in rules], orientation="h")
    fig.update_layout(barmode="stack", height=max(300, 22 * len(rules) + 120), margin={"l": 360})
    report.add_chart("Records per mapping rule", fig)
    report.add_table(
        "Completeness per entity",
        ["entity", "source", "landed", "merged", "rejected", "filtered", "in flight", "missing", "extra",
         "compared", "accurate"],
        [[e, c["source"], c["landed"], c["merged"], c["rejected"], c["filtered"], c["in_flight"], c["missing"],
          c["extra"], c["compared"], c["accurate"]] for e, c in data["entities"].items()],
    )  # fmt: skip
    report.add_table(
        "Discrepancies",
        ["check", "entity", "id", "field", "expected", "found", "rule"],
        [[d["check"], d["entity"], d["id"], d["field"], d["expected"], d["found"], d["rule"]]
         for d in data["discrepancies"]],
        limit=500,
    )
    if data.get("cdc"):
        report.add_text("Change data capture", data["cdc"])
    return report.write(path)
