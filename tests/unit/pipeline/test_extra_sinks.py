"""How many sinks join the first one for the mapped backlog once the processors are done."""

from __future__ import annotations

import pytest

from crmflow.pipeline.migrate import DrainForecast, extra_sinks


@pytest.mark.parametrize(("backlog", "batch", "workers", "extra"), [
    (0, 5000, 2, 0),  # nothing left: the first sink is done
    (9_999, 5000, 2, 0),  # under two batches: the first sink writes it sooner than a new one starts
    (10_000, 5000, 2, 1),
    (300_000, 5000, 2, 1),  # never more than asked for
    (300_000, 5000, 4, 3),
    (25_000, 5000, 8, 2),  # one per two batches
    (300_000, 5000, 1, 0),  # one sink asked for: no other joins
    (None, 5000, 3, 2),  # backlog unknown (Kafka away for a moment): all of them
])
def test_one_more_sink_per_two_batches_of_backlog_up_to_the_workers_asked_for(
    backlog: int | None, batch: int, workers: int, extra: int
) -> None:
    assert extra_sinks(backlog, batch, workers) == extra


def _feed(forecast: DrainForecast, lags: list[int], every_s: float = 0.5) -> list[bool]:
    return [forecast.due(lag, i * every_s) for i, lag in enumerate(lags)]


def test_the_other_sinks_are_due_a_sink_start_up_before_the_processors_are_done() -> None:
    # 10,000 records/s of fall: 120,000 left is 12 s away, 50,000 is 5 s away (due), then it stays due.
    lags = [200_000 - 5_000 * i for i in range(40)]
    due = _feed(DrainForecast(lead_s=5.0, window_s=3.0), lags)
    first = due.index(True)
    assert lags[first] == 50_000 and all(due[first:])


def test_nothing_is_due_before_the_window_has_readings_or_while_the_lag_does_not_fall() -> None:
    assert _feed(DrainForecast(lead_s=5.0, window_s=3.0), [1_000, 900]) == [False, False], "one reading's fall"
    assert not any(_feed(DrainForecast(), [50_000] * 20)), "a lag that stays (processors stalled) is never due"
    assert not any(_feed(DrainForecast(), [50_000 + 1_000 * i for i in range(20)])), "a growing lag neither"
    assert _feed(DrainForecast(), [0]) == [True], "a drained group is due at once"
