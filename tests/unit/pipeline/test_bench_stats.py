"""The figures of ``crmflow bench --cdc``: exact percentiles, landings from the sink's commit log, lag growth."""

from __future__ import annotations

import json

import pytest

from crmflow.pipeline.bench_stats import Landing, lag_growth, landings, percentile, percentiles

pytestmark = pytest.mark.unit


def test_nearest_rank_percentiles_of_exact_latencies() -> None:
    values = [i / 100 for i in range(1, 101)]  # 0.01 .. 1.00
    assert percentile(values, 50) == 0.5
    assert percentile(values, 95) == 0.95
    assert percentile(values, 99) == 0.99
    assert percentiles(reversed(values)) == {"p50_s": 0.5, "p95_s": 0.95, "p99_s": 0.99, "max_s": 1.0}
    assert percentiles([0.2]) == {"p50_s": 0.2, "p95_s": 0.2, "p99_s": 0.2, "max_s": 0.2}
    assert percentiles([]) == {}
    with pytest.raises(ValueError):
        percentile([], 50)


def _line(t: float, *rows: list[object]) -> str:
    return json.dumps({"t": t, "r": list(rows)})


def test_landings_first_commit_wins_parked_children_land_with_their_parent_refusals_counted() -> None:
    lines = [
        _line(10.5, ["account", "C1", 100, 10_000, "w", None, False],
              ["contact", "K1", 101, 10_000, "p", "C2", False],  # parked until account C2 lands
              ["case", "T9", 102, 10_100, "x", None, False]),
        _line(11.0, ["account", "C1", 100, 10_000, "w", None, False]),  # re-delivered: lands once, at 10.5
        _line(12.0, ["account", "C2", 103, 11_000, "w", None, False],
              ["sale", "S1", 104, 11_500, "w", None, True]),
        _line(13.0, ["contact", "K7", 105, 12_000, "p", "C404", False],  # its parent never comes
              ["case", "T1", 106, 12_000, "p", "C405", False]),  # parked, then deleted: superseded
        _line(14.0, ["case", "T1", 107, 13_000, "w", None, True]),
    ]
    landed, refused, parked = landings(lines)
    assert landed[("account", "C1", 100)].landed_s == 10.5
    assert landed[("account", "C1", 100)].latency_s == pytest.approx(0.5)
    assert landed[("contact", "K1", 101)].landed_s == 12.0  # with C2's transaction
    assert landed[("contact", "K1", 101)].latency_s == pytest.approx(2.0)
    assert landed[("contact", "K1", 101)].parked and not landed[("account", "C2", 103)].parked
    assert landed[("sale", "S1", 104)].deleted
    assert landed[("case", "T1", 106)].landed_s == 14.0 and landed[("case", "T1", 106)].parked
    assert set(landed) == {("account", "C1", 100), ("contact", "K1", 101), ("account", "C2", 103),
                           ("sale", "S1", 104), ("case", "T1", 106), ("case", "T1", 107)}
    assert (refused, parked) == (1, 1)


def _changes(latencies: list[float]) -> list[Landing]:
    return [Landing("account", f"C{i}", i, False, 1000.0 + i, 1000.0 + i + lat) for i, lat in enumerate(latencies)]


def test_lag_growth_compares_the_last_tenth_with_the_first() -> None:
    steady = lag_growth(_changes([0.2, 0.3] * 50))
    assert steady["growing"] is False
    assert steady["first_tenth_p50_s"] == 0.2 and steady["ratio"] == 1.0
    growing = lag_growth(_changes([0.2 + i * 0.05 for i in range(100)]))  # 0.2 s → 5.15 s
    assert growing["growing"] is True
    assert growing["first_tenth_p50_s"] == pytest.approx(0.4) and growing["last_tenth_p50_s"] == pytest.approx(4.9)
    assert growing["ratio"] == pytest.approx(12.25)
    # tripled, but by 20 ms: noise, not growth
    assert lag_growth(_changes([0.01] * 50 + [0.03] * 50))["growing"] is False
    # order is by source commit, not by the list's order
    assert lag_growth(list(reversed(_changes([0.2 + i * 0.05 for i in range(100)]))))["growing"] is True
    assert lag_growth(_changes([0.1] * 5)) == {"first_tenth_p50_s": None, "last_tenth_p50_s": None, "ratio": None,
                                               "growing": False}
