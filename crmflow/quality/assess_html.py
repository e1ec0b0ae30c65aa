"""``assess.html``: the assessment as a page a person reads, built from ``assess.json`` alone."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from crmflow.reports import Report

__all__ = ["assess_report"]

_OUTCOME_COLORS = {"rejected": "#c62828", "flagged": "#ef6c00", "changed": "#1565c0"}


def _examples(examples: list[dict[str, Any]]) -> str:
    parts = []
    for ex in examples:
        text = ex["at"]
        if "value" in ex:
            text += f" {ex['value']!s}"
        if "to" in ex:
            text += f" → {ex['to']!s}"
        parts.append(text)
    return "; ".join(parts)


def _null_rates(data: dict[str, Any], report: Report) -> None:
    names, nulls, blanks = [], [], []
    for source, s in data["sources"].items():
        for column, f in s["fields"].items():
            names.append(f"{source}.{column}")
            nulls.append(100 * f["null_rate"])
            blanks.append(100 * f["blank_rate"])
    fig = go.Figure()
    fig.add_bar(name="null", y=names, x=nulls, orientation="h", marker_color="#616161")
    fig.add_bar(name="blank", y=names, x=blanks, orientation="h", marker_color="#bdbdbd")
    fig.update_layout(barmode="stack", xaxis_title="% of records", height=max(300, 18 * len(names) + 120),
                      yaxis={"autorange": "reversed"}, legend_orientation="h", legend_y=1.02)  # fmt: skip
    report.add_chart("Null and blank rates", fig)


def _rule_hits(data: dict[str, Any], report: Report) -> None:
    fig = go.Figure()
    for outcome, color in _OUTCOME_COLORS.items():
        rows = [r for r in data["rules"] if r["outcome"] == outcome]
        labels = [f"{r['source']}: {r['rule']}" + (f" ({r['field']})" if r["field"] and outcome != "flagged" else "")
                  for r in rows]  # fmt: skip
        fig.add_bar(name=outcome, y=labels, x=[r["count"] for r in rows], orientation="h", marker_color=color)
    n = len(data["rules"])
    fig.update_layout(xaxis_title="records", xaxis_type="log", height=max(300, 18 * n + 120),
                      yaxis={"autorange": "reversed"}, legend_orientation="h", legend_y=1.02)  # fmt: skip
    report.add_chart("Rule hits", fig)
    report.add_table(
        "Rule hits by field", ["source", "field", "rule", "outcome", "records", "examples (masked, file:line)"],
        ((r["source"], r["field"] or "(record)", r["rule"], r["outcome"], r["count"], _examples(r["examples"]))
         for r in data["rules"]),
    )  # fmt: skip


def _outlier_row(o: dict[str, Any]) -> tuple[object, ...]:
    out_of_range = o.get("out_of_range") or {}
    fences = f"{o['low_fence']} .. {o['high_fence']}" if o["low_fence"] is not None else ""
    outliers = f"≥{o['outliers']:,}" if o["count_is_lower_bound"] else o["outliers"]
    examples = _examples(o["examples"] + out_of_range.get("examples", []))
    return (o["entity"], o["field"], o["kind"], o["values"], o["min"], o["max"], fences, outliers,
            out_of_range.get("count", ""), examples)  # fmt: skip


def _duplicates(dup: dict[str, Any], report: Report) -> None:
    if not dup.get("enabled"):
        report.add_text("Duplicate candidates", "Deduplication is off in this config: no duplicate search.")
        return
    sizes = dup["cluster_sizes"]
    fig = go.Figure(go.Bar(x=[f"{k} records" for k in sizes], y=list(sizes.values()), marker_color="#6a1b9a",
                           text=list(sizes.values())))  # fmt: skip
    fig.update_layout(xaxis_title="expected cluster size", yaxis_title="clusters", yaxis_type="log")
    report.add_chart("Expected cluster sizes", fig)
    scope = "all accounts" if dup["complete"] else f"the first {dup['accounts']:,} accounts (--dedupe-limit)"
    report.add_table(
        "Duplicate candidates", ["record", "matched", "rule", "score"],
        ((e["record"], e.get("matched"), e.get("rule"), e.get("score")) for e in dup["examples"]),
    )  # fmt: skip
    report.add_text("Duplicate search scope", f"The dedupe rules of the config were run over {scope}.")


def assess_report(data: dict[str, Any]) -> Report:
    """The page of one assessment (``data`` is ``assess.json``)."""
    report = Report("Source assessment", f"config {data['config']} · {data['generated_at']}")
    records = sum(s["records"] for s in data["sources"].values())
    mapped = sum(s["mapped"] for s in data["sources"].values())
    rejected = sum(s["rejected"] for s in data["sources"].values())
    dup = data["duplicates"]
    report.add_kpis({
        "source records": records,
        "would land": mapped,
        "would be rejected": rejected,
        "orphans": sum(o["count"] for o in data["orphans"].values()),
        "duplicate records": dup.get("duplicate_records", "off"),
        "outliers": sum(o["outliers"] + o.get("out_of_range", {}).get("count", 0) for o in data["outliers"]),
    })  # fmt: skip
    report.add_table(
        "Sources", ["source", "entity", "file", "records", "would land", "rejected", "filtered"],
        ((n, s["entity"], s["file"], s["records"], s["mapped"], s["rejected"], s["filtered"])
         for n, s in data["sources"].items()),
    )  # fmt: skip
    by_rule = sorted(data["rejects_by_rule"].items(), key=lambda kv: -kv[1])
    report.add_table("Rejects by rule", ["rule", "records"], by_rule)
    _rule_hits(data, report)
    _null_rates(data, report)
    report.add_table(
        "Field profiles", ["source", "field", "null %", "blank %", "distinct", "top values"],
        ((source, column, round(100 * f["null_rate"], 2), round(100 * f["blank_rate"], 2),
          f"~{f['distinct']:,}" if f["distinct_approximate"] else f["distinct"],
          ", ".join(f"{v['value']} ({v['count']:,})" for v in f["top_values"][:5]) + (" (masked)" if f["pii"] else ""))
         for source, s in data["sources"].items() for column, f in s["fields"].items()),
    )  # fmt: skip
    report.add_table(
        "Orphans", ["source", "parent", "field", "records", "examples (parent id, file:line)"],
        ((n, o["parent"], o["field"], o["count"], _examples(o["examples"])) for n, o in data["orphans"].items()),
    )  # fmt: skip
    report.add_table("Outliers", ["entity", "field", "kind", "values", "min", "max", "fences", "outliers",
                                  "out of range", "examples"], map(_outlier_row, data["outliers"]))  # fmt: skip
    _duplicates(dup, report)
    report.add_text("How to read this", "\n\n".join(data["notes"]))
    return report
