"""`crmflow bench --dedupe-cost N`: pairs of whole runs, plain then with dedupe, read against each other."""

from __future__ import annotations

import pytest

from crmflow.pipeline.bench import run_dedupe_cost
from crmflow.stack import Endpoints

pytestmark = pytest.mark.e2e


def test_a_pair_is_a_plain_run_and_a_dedupe_run_of_the_same_data_and_its_cost_is_read_from_both(
    endpoints: Endpoints,
) -> None:
    cost = run_dedupe_cost(endpoints, 120, 1, workers=1)

    [(plain, dedupe)] = cost.pairs
    assert plain.summary.reconciled and dedupe.summary.reconciled
    assert plain.summary.records == dedupe.summary.records > 120, "the same generated data both times"
    assert plain.dedupe is None, "the plain run does not deduplicate"
    assert dedupe.dedupe is not None and dedupe.dedupe["clusters"] <= dedupe.dedupe["true_clusters"] + 5
    p, d = plain.summary.records_per_second, dedupe.summary.records_per_second
    assert p > 0 and d > 0
    figures = cost.to_json()
    assert figures["plain_records_per_second"] == [p] and figures["dedupe_records_per_second"] == [d]
    assert figures["cost_percent"] == {"mean_of_rates": round(100 * (1 - d / p), 1),
                                       "per_pair": [round(100 * (1 - d / p), 1)],
                                       "median_pair": round(100 * (1 - d / p), 1)}
    assert figures["pairs"][1 - 1]["dedupe"]["dedupe"] == dedupe.dedupe
