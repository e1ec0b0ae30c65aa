"""The migration report: ``<run dir>/report.html``, built from the run's ``run.json`` alone.

A person sees whether the run reconciled (the verdict and why not), the big figures, the reconciliation
per entity (a table and a chart), the rejects by rule, and the throughput over time (records read,
processed and written per second, from :mod:`crmflow.pipeline.timeline`). ``crmflow runs report ID``
rebuilds it; ``crmflow migrate`` writes it at the end of every run, also a failed one.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from crmflow.pipeline.runs import RunRecord, RunStore
from crmflow.reports import Report

__all__ = ["build_run_report", "write_run_report"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
_LANDED = (("inserted", "new"), ("updated", "updated"), ("unchanged", "same"))
_COLORS = {"new": "#2e7d32", "updated": "#66bb6a", "same": "#a5d6a7", "rejected": "#c62828", "filtered": "#9e9e9e"}


def _landed(c: dict[str, Any]) -> int:
    return int(c["inserted"]) + int(c["updated"]) + int(c["unchanged"])


def _difference(c: dict[str, Any]) -> int:
    """read - (landed + rejected + filtered): 0 when the entity reconciled."""
    return int(c["read"]) - _landed(c) - int(c["rejected"]) - int(c["filtered"])


def _rates(timeline: dict[str, Any]) -> tuple[list[float], dict[str, list[float]]]:
    """Per-second rates between consecutive samples, at each interval's end."""
    cols = list(timeline.get("columns") or [])
    samples = timeline.get("samples") or []
    times: list[float] = []
    rates: dict[str, list[float]] = {c: [] for c in cols[1:]}
    for prev, cur in itertools.pairwise(samples):
        dt = float(cur[0]) - float(prev[0])
        if dt <= 0:
            continue
        times.append(float(cur[0]))
        for i, name in enumerate(cols[1:], start=1):
            rates[name].append(max(0.0, (float(cur[i]) - float(prev[i])) / dt))
    return times, rates


def _verdict(record: RunRecord, report: Report) -> None:
    summary = record.summary
    if summary is None:
        reasons = [f"the run is {record.status}"] + ([f"error: {record.error}"] if record.error else [])
        if record.status in ("failed", "interrupted"):
            reasons.append(f"resume with: crmflow migrate -c {record.config} --run-id {record.run_id}")
        report.add_verdict(False, f"No reconciliation: run {record.status}", reasons)
        return
    if summary.get("reconciled"):
        report.add_verdict(True, "Reconciled", ["read = new + updated + same + rejected + filtered, for every entity"])
        return
    reasons = [
        f"{entity}: read {c['read']:,} but landed + rejected + filtered = {c['read'] - _difference(c):,} "
        f"(difference {_difference(c):+,})"
        for entity, c in summary["entities"].items() if not c.get("reconciled")
    ]  # fmt: skip
    report.add_verdict(False, "Not reconciled", reasons)


def _reconciliation(summary: dict[str, Any], report: Report) -> None:
    entities = summary["entities"]
    rows = [
        (entity, c["read"], c["inserted"], c["updated"], c["unchanged"], c["rejected"], c["filtered"], c["merged"],
         c.get("golden"), _difference(c), "yes" if c["reconciled"] else "NO")
        for entity, c in entities.items()
    ]  # fmt: skip
    report.add_table(
        "Reconciliation per entity",
        ["entity", "read", "new", "updated", "same", "rejected", "filtered", "merged", "golden", "difference", "ok"],
        rows,
    )
    names = list(entities)
    fig = go.Figure()
    for key, label in (*_LANDED, ("rejected", "rejected"), ("filtered", "filtered")):
        fig.add_bar(name=label, x=names, y=[entities[e][key] for e in names], marker_color=_COLORS[label])
    read_marker = {"symbol": "line-ew-open", "size": 40, "line": {"width": 3, "color": "#1d232b"}}
    fig.add_scatter(name="read", x=names, y=[entities[e]["read"] for e in names], mode="markers", marker=read_marker)
    fig.update_layout(barmode="stack", yaxis_title="records", legend_orientation="h", legend_y=-0.15)
    report.add_chart("Reconciliation chart", fig)


def _rejects(summary: dict[str, Any], report: Report) -> None:
    by_rule = sorted(summary.get("rejected_by_rule", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    if not by_rule:
        report.add_text("Rejects by rule", "No record was rejected.")
        return
    fig = go.Figure(go.Bar(x=[n for _, n in by_rule][::-1], y=[r for r, _ in by_rule][::-1], orientation="h",
                           marker_color=_COLORS["rejected"], text=[n for _, n in by_rule][::-1]))  # fmt: skip
    fig.update_layout(xaxis_title="dead letters (one per source record)", height=max(260, 40 * len(by_rule) + 120))
    report.add_chart("Rejects by rule", fig)
    total = sum(n for _, n in by_rule)
    report.add_table("Rejects by rule (table)", ["rule", "records", "share"],
                     [(r, n, f"{100 * n / total:.1f}%") for r, n in by_rule])  # fmt: skip


def _peak_written(record: RunRecord) -> float | None:
    if not record.timeline or len(record.timeline.get("samples") or []) < 2:
        return None
    return max(_rates(record.timeline)[1].get("written") or [0.0])


def _throughput(record: RunRecord, report: Report) -> None:
    """The chart of records per second over the run."""
    if not record.timeline or len(record.timeline.get("samples") or []) < 2:
        report.add_text("Throughput over time", "No throughput samples were recorded for this run.")
        return
    times, rates = _rates(record.timeline)
    fig = go.Figure()
    for name, color in (("read", "#1565c0"), ("processed", "#ef6c00"), ("written", "#2e7d32")):
        if name in rates:
            fig.add_scatter(name=name, x=times, y=rates[name], mode="lines", line={"color": color, "width": 2})
    fig.update_layout(xaxis_title="seconds since the run started", yaxis_title="records per second",
                      legend_orientation="h", legend_y=-0.2)  # fmt: skip
    report.add_chart("Throughput over time", fig)


def build_run_report(record: RunRecord) -> Report:
    """The migration report of one run, from its record."""
    summary = record.summary
    report = Report(f"Migration run {record.run_id}", f"config {record.config} · target {record.target}")
    _verdict(record, report)
    peak = _peak_written(record)
    kpis: dict[str, str | int | float] = {}
    if summary is not None:
        entities = summary["entities"].values()
        kpis = {
            "records read": summary["records"],
            "landed": sum(_landed(c) for c in entities),
            "rejected": sum(int(c["rejected"]) for c in entities),
            "filtered": sum(int(c["filtered"]) for c in entities),
            "elapsed (s)": float(summary["elapsed_s"]),
            "records/s (average)": float(summary["records_per_second"]),
        }
    if peak is not None:
        kpis["written/s (peak)"] = round(peak, 1)
    if kpis:
        report.add_kpis(kpis)
    _throughput(record, report)
    if summary is None:
        return report
    _reconciliation(summary, report)
    _rejects(summary, report)
    flagged = [(e, f, n) for e, c in summary["entities"].items() for f, n in (c.get("flagged") or {}).items()]
    if flagged:
        report.add_table("Values kept with a quality flag", ["entity", "flag", "values"], flagged)
    stages = summary.get("stage_done_s") or {}
    rss = summary.get("peak_rss_bytes") or {}
    if stages or rss:
        rows = [(f"{name} done at (s)", v) for name, v in stages.items()]
        rows += [(f"peak memory of {name} (MiB)", round(v / 2**20, 1)) for name, v in rss.items()]
        report.add_table("Stages and resources", ["measure", "value"], rows)
    return report


def write_run_report(runs: RunStore, record: RunRecord) -> Path | None:
    """Write ``report.html`` into the run's directory; a failure is logged, never fails the run."""
    path = runs.dir(record.run_id) / REPORT_NAME
    try:
        return build_run_report(record).write(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("run %s: report.html not written: %s", record.run_id, exc, extra={"run_id": record.run_id})
        return None
