"""`crmflow bench --stage sink`: the sink timed alone on mapped topics filled once (never a speed assertion)."""

from __future__ import annotations

import re

import pytest

from crmflow.pipeline.bench_sink import run_sink_bench
from crmflow.stack import Endpoints

pytestmark = pytest.mark.e2e


def test_each_run_is_a_fresh_sink_that_writes_every_mapped_record_into_its_own_database(endpoints: Endpoints) -> None:
    with endpoints.postgres.connect(autocommit=True) as conn:
        before = {r[0] for r in conn.execute("select datname from pg_database where datname like 'bench\\_%'")}

    rows = run_sink_bench(endpoints, 30, runs=2, batch_size=200)

    assert len(rows) == 2
    # A run that reused the group or the database of the one before would find nothing left to write.
    assert rows[0].records > 30
    assert rows[1].records == rows[0].records
    for r in rows:
        assert r.elapsed_s > 0 and r.cpu_s > 0 and r.peak_rss_bytes > 0
        assert r.to_json()["records_per_second"] > 0
    with endpoints.postgres.connect(autocommit=True) as conn:
        after = {r[0] for r in conn.execute("select datname from pg_database where datname like 'bench\\_%'")}
    # bench_<tag>_<run> are this bench's (other tests' benches run alongside, e.g. bench_legacy_<tag> of --cdc)
    ours = {d for d in after - before if re.fullmatch(r"bench_[0-9a-f]+_\d+", d)}
    assert not ours, "the bench's target databases were dropped"
