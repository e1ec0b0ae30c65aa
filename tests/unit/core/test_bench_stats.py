"""The figures of ``crmflow bench --cdc``: landings from the sink's commit log, percentiles, lag growth."""

from __future__ import annotations

import json

import pytest

from crmflow.pipeline.bench_stats import Landing, lag_growth, landings, percentile, percentiles, stage_split

pytestmark = pytest.mark.unit


def _batch(t: float, *rows: list[object]) -> str:
    return json.dumps({"t": t, "r": rows})


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 1) == 1.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_percentiles_are_ordered_and_exact() -> None:
    latencies = [0.010] * 90 + [0.200] * 8 + [1.500, 3.0]  # shuffled order must not matter
    p = percentiles(reversed(latencies))
    assert p == {"p50_s": 0.01, "p95_s": 0.2, "p99_s": 1.5, "max_s": 3.0}
    assert p["p50_s"] <= p["p95_s"] <= p["p99_s"] <= p["max_s"]
    assert percentiles([]) == {}


def _changes(latencies: list[float]) -> list[Landing]:
    """Changes committed one per second at the source, each landing ``latency`` later."""
    return [Landing("account", f"C{i}", i, False, 1000.0 + i, 1000.0 + i + lat) for i, lat in enumerate(latencies)]


def test_steady_latency_is_no_lag_growth() -> None:
    growth = lag_growth(_changes([0.1, 0.12, 0.09, 0.11] * 25))
    assert growth["growing"] is False
    assert growth["first_tenth_p50_s"] == pytest.approx(0.1, abs=0.02)
    assert 0.5 < growth["ratio"] < 2


def test_latency_climbing_through_the_run_is_lag_growth() -> None:
    growth = lag_growth(_changes([0.1 + 0.05 * i for i in range(100)]))  # 0.1 s → 5.05 s
    assert growth["growing"] is True
    assert growth["last_tenth_p50_s"] > growth["first_tenth_p50_s"]
    assert growth["ratio"] > 10


def test_a_few_milliseconds_more_on_a_tiny_latency_is_not_growth() -> None:
    growth = lag_growth(_changes([0.005] * 50 + [0.020] * 50))  # 4x, but 15 ms
    assert growth["ratio"] == 4.0
    assert growth["growing"] is False


def test_lag_growth_orders_by_source_commit_not_by_landing() -> None:
    # landed out of order: the last source commits land first, with the same latency as the first ones
    changes = list(reversed(_changes([0.3] * 100)))
    assert lag_growth(changes)["growing"] is False


def test_too_few_changes_for_tenths() -> None:
    assert lag_growth(_changes([0.1] * 9)) == {"first_tenth_p50_s": None, "last_tenth_p50_s": None, "ratio": None,
                                               "growing": False}


def test_landings_first_commit_wins_and_parked_children_land_with_their_parent() -> None:
    log = [
        _batch(10.5, ["account", "C1", 100, 10_000, "w", None, False],
               ["contact", "K1", 101, 10_000, "p", "C9", False],  # parked: its account C9 is not there yet
               ["sale", "S1", 102, 10_100, "x", None, False]),  # refused by the target
        "",
        _batch(11.0, ["account", "C1", 100, 10_000, "w", None, False],  # redelivered after a restart: lands once
               ["account", "C9", 103, 10_900, "w", None, False]),
        _batch(12.0, ["account", "C2", 104, 11_000, "w", None, True],  # a delete of C2
               ["case", "T1", 105, 11_500, "p", "C7", False]),  # still parked at the end
    ]
    landed, refused, parked = landings(log)
    assert landed[("account", "C1", 100)].landed_s == 10.5
    assert landed[("account", "C1", 100)].latency_s == pytest.approx(0.5)
    assert landed[("contact", "K1", 101)].landed_s == 11.0  # with the transaction that wrote C9
    assert landed[("contact", "K1", 101)].latency_s == pytest.approx(1.0)
    assert landed[("account", "C2", 104)].deleted is True
    assert ("sale", "S1", 102) not in landed and refused == 1
    assert ("case", "T1", 105) not in landed and parked == 1
    assert len(landed) == 4


def test_a_clock_a_little_behind_never_makes_a_negative_latency() -> None:
    assert Landing("account", "C1", 1, False, 10.002, 10.0).latency_s == 0.0


def _line(t: float, *rows: list[object]) -> str:
    return json.dumps({"t": t, "r": list(rows)})


def test_landings_parked_superseded_and_refused() -> None:
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


def test_stage_split_cuts_each_latency_at_its_event_and_its_mapped_record() -> None:
    a = Landing("account", "C1", 10, False, source_s=100.0, landed_s=100.9)
    b = Landing("case", "T1", 11, False, source_s=101.0, landed_s=102.5)
    parked = Landing("contact", "K1", 12, False, source_s=101.0, landed_s=103.0, parked=True)
    unseen = Landing("sale", "S1", 13, False, source_s=101.0, landed_s=101.4)  # no mapped record read
    events = {("account", "C1", 100_000): 100_100, ("case", "T1", 101_000): 101_200,
              ("contact", "K1", 101_000): 101_100, ("sale", "S1", 101_000): 101_050}
    mapped = {("account", "C1", 100_000): 100_400, ("case", "T1", 101_000): 102_000,
              ("contact", "K1", 101_000): 101_300}
    split = stage_split([a, b, parked, unseen], events, mapped)
    assert split["joined"] == 2
    assert split["commit_to_event"]["max_s"] == pytest.approx(0.2)
    assert split["event_to_mapped"]["p50_s"] == pytest.approx(0.3) and split["event_to_mapped"]["max_s"] == 0.8
    assert split["mapped_to_target"]["p50_s"] == pytest.approx(0.5) and split["mapped_to_target"]["max_s"] == 0.5
    # the three legs add up to each change's latency
    assert a.latency_s == pytest.approx(0.1 + 0.3 + 0.5) and b.latency_s == pytest.approx(0.2 + 0.8 + 0.5)


def test_the_dedupe_cost_is_read_per_pair_and_mean_rate_against_mean_rate() -> None:
    from crmflow.pipeline.bench import BenchResult, DedupeCost
    from crmflow.pipeline.migrate import EntityCounts, MigrationSummary

    def run(records: int, seconds: float, dedupe: bool) -> BenchResult:
        summary = MigrationSummary("r", {"account": EntityCounts(read=records, inserted=records)}, seconds)
        return BenchResult(10, 0.1, summary, {"precision": 1.0} if dedupe else None)

    # 10,000 and 12,000 rec/s plain; 8,000 and 7,800 with dedupe: 20% and 35% per pair, 1 - 7,900/11,000 overall.
    cost = DedupeCost([(run(10_000, 1.0, False), run(8_000, 1.0, True)),
                       (run(12_000, 1.0, False), run(7_800, 1.0, True))]).to_json()
    assert cost["plain_records_per_second"] == [10_000.0, 12_000.0]
    assert cost["dedupe_records_per_second"] == [8_000.0, 7_800.0]
    assert cost["cost_percent"] == {"mean_of_rates": 28.2, "per_pair": [20.0, 35.0], "median_pair": 27.5}
    assert cost["dedupe"] == [{"precision": 1.0}, {"precision": 1.0}]
    assert [p["plain"]["records_per_second"] for p in cost["pairs"]] == [10_000.0, 12_000.0]
