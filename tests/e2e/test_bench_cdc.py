"""``crmflow bench --cdc`` on the real stack, small: cdc, process and sink as services under a change workload.

Asserts the report's shape and consistency only — never a speed (the machine is shared; speed is measured by
running the bench, not in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_bench_cdc_reports_exact_latencies_every_change_landed_and_the_sink_observed_them() -> None:
    done = subprocess.run([sys.executable, "-m", "crmflow", "bench", "--cdc", "--rate", "100", "--seconds", "8",
                           "--customers", "500", "--json"], env=os.environ.copy(), capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    run = report["run"]
    assert run["source"]["changes"] > 0
    assert run["all_landed"] and run["changes_missing"] == 0, done.stderr[-3000:]
    assert run["changes_landed"] >= run["source"]["changes"]
    assert run["refused"] == 0 and run["still_parked"] == 0
    lat = run["latency"]
    assert 0 < lat["p50_s"] <= lat["p95_s"] <= lat["p99_s"] <= lat["max_s"]
    assert run["source"]["rate"] > 0 and run["crmflow_rate"] > 0
    assert set(run["lag_growth"]) == {"first_tenth_p50_s", "last_tenth_p50_s", "ratio", "growing"}
    assert {name for name, rss in report["peak_rss_bytes"].items() if rss > 0} == {"cdc", "process", "sink"}
    stages = run["stages"]  # each change's latency cut at its change event and its mapped record
    assert stages["joined"] >= 0.95 * (run["changes_landed"] - run["landed_after_parking"]) > 0, stages
    assert all(stages[leg]["p50_s"] <= stages[leg]["max_s"] for leg in ("commit_to_event", "event_to_mapped",
                                                                       "mapped_to_target"))
    cores = run["cpu_cores"]  # where the CPU went: every service worked, and the stack's parts are counted
    assert all(cores[name] > 0 for name in ("cdc", "process", "sink", "workload")), cores
    assert cores["total"] == pytest.approx(sum(v for k, v in cores.items() if k != "total"), abs=0.05)
    if os.environ.get("CRMFLOW_STACK", "local") == "local":
        assert cores["postgres"] > 0 and cores["kafka"] > 0, cores
    assert report["reconcile"]["equal"], report["reconcile"]
    # The sink's histogram, scraped from its /metrics: one observation per change record it wrote. A child parked
    # until its parent arrived is not observed; a batch re-delivered after an aborted Kafka transaction is observed
    # again, hence "at least".
    assert report["latency_metric_count"] >= run["changes_landed"] - run["landed_after_parking"] > 0
