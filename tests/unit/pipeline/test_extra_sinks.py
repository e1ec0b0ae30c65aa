"""How many sinks join the first one for the mapped backlog once the processors are done."""

from __future__ import annotations

import pytest

from crmflow.pipeline.migrate import extra_sinks


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
