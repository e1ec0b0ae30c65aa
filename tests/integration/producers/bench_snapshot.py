"""Throughput of the snapshot producer (not a test): customers.csv -> Kafka as Avro, on the running stack.

    .venv/bin/python tests/integration/producers/bench_snapshot.py [--customers 100000] [--profile]
        [--data DIR]   # an existing demo-data directory instead of generating one
        [--set linger.ms=5 ...]   # librdkafka settings to try instead of the defaults

Generates the demo data (``crmflow.demo_data``) unless ``--data`` is given, snapshots ``customers.csv``
to a fresh topic prefix (6 partitions) and prints records/s, measured from the first read to the last
acknowledgement. ``--profile`` runs it under cProfile and prints where the time goes. The topics are
deleted at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from crmflow.config import load_config
from crmflow.stack import get_stack
from producers.snapshot import run_snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="producer setting")
    args = parser.parse_args()

    ep = get_stack().endpoints()
    work = Path(tempfile.mkdtemp(prefix="bench-snapshot-"))
    data = args.data
    if data is None:
        from crmflow.demo_data import generate

        data = work / "data"
        started = time.perf_counter()
        generate(data, args.customers, seed=1)
        print(f"generated {args.customers} customers in {time.perf_counter() - started:.1f}s")
    csv_path = data / "customers.csv"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    cfg_path = work / "crmflow.yaml"
    cfg_path.write_text(
        f"run: {{name: bench}}\nkafka: {{topic_prefix: {prefix}, partitions: 6}}\n"
        f"sources:\n  customers: {{kind: csv, path: {csv_path}, entity: account, key: Customer_ID}}\n"
        "entities:\n  account:\n    fields:\n      - {source: Customer_ID, target: customer_id}\n"
    )
    cfg = load_config(cfg_path)
    registry = ep.registry.client()
    profiler = cProfile.Profile() if args.profile else None
    try:
        if profiler:
            profiler.enable()
        overrides = dict(item.split("=", 1) for item in args.set)
        stats = run_snapshot(cfg, kafka=ep.kafka, registry_client=registry,
                             state_dir=work / "state", producer_config=overrides)  # fmt: skip
        if profiler:
            profiler.disable()
    finally:
        admin = AdminClient(ep.kafka.client_config())
        mine = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix + ".")]
        for fut in admin.delete_topics(mine).values() if mine else []:
            fut.result(timeout=30)
    s = stats.sources["customers"]
    size_mb = csv_path.stat().st_size / 1e6
    print(f"customers.csv: {size_mb:.1f} MB, read {s.read}, produced {s.produced}, rejected {s.rejected}")
    print(f"{s.read / s.elapsed_s:,.0f} records/s ({size_mb / s.elapsed_s:.1f} MB/s) over {s.elapsed_s:.2f}s")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue())


if __name__ == "__main__":
    main()
