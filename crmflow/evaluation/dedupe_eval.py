"""Evaluate the deduper on generated demo data against the generator's truth clusters.

    python -m crmflow.evaluation.dedupe_eval --customers 10000 --seed 7 [--json] [--shards N] [--keep DIR]

Generates ``--customers`` customer records (``crmflow.demo_data``) into a temporary directory, maps them
with the demo config's Mapper (``deploy/demo/crmflow.yaml`` with ``CRMFLOW_DEMO_DATA`` pointing at the
directory), feeds the clean accounts in file order through a :class:`Deduper` and scores the clusters
pairwise against the truth's ``cluster`` ids. Lines the snapshot would drop (bad UTF-8, wrong field
count) and records the Mapper rejects are skipped, as in the pipeline. Records/s is the dedupe step
alone (generation and mapping are timed separately). Contacts are deduplicated too, with their parent's
golden id: the generator makes no duplicate contacts, so every contact pair merged is a wrong merge.

``--shards N`` routes records by ``crc32(shard_key) % N`` to N independent dedupers, as N partitions
would, to show what partitioning loses.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from crmflow.config import load_config
from crmflow.demo_data import QualityRates, generate, parse_rate_overrides
from crmflow.exceptions import CrmflowError
from processors.dedupe.blocking import shard_key
from processors.dedupe.config import DedupeConfig
from processors.dedupe.deduper import Deduper
from processors.dedupe.quality import error_analysis, pairwise_scores
from processors.dedupe.state import DedupeState
from processors.exceptions import RecordRejected
from processors.mapping import MapFn, build_mappers

DEMO_CONFIG: Final = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "crmflow.yaml"


@dataclass(slots=True)
class DemoRecords:
    """Clean accounts and contacts in file order, and the true cluster of every account."""

    accounts: list[dict[str, Any]]
    contacts: list[dict[str, Any]]
    clusters: dict[str, str]


@contextlib.contextmanager
def _demo_data_env(directory: Path) -> Iterator[None]:
    before = os.environ.get("CRMFLOW_DEMO_DATA")
    os.environ["CRMFLOW_DEMO_DATA"] = str(directory)
    try:
        yield
    finally:
        if before is None:
            del os.environ["CRMFLOW_DEMO_DATA"]
        else:
            os.environ["CRMFLOW_DEMO_DATA"] = before


def _mapped(path: Path, mapper: MapFn) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, clean record) of every line the snapshot keeps and the mapper accepts."""
    lines = path.read_bytes().split(b"\n")
    header = next(csv.reader([lines[0].decode()]))
    for number, data in enumerate(lines[1:], start=2):
        if not data:
            continue
        try:
            row = next(csv.reader([data.decode("utf-8")]))
        except UnicodeDecodeError:
            continue
        if len(row) != len(header):
            continue
        meta = {"run_id": "dedupe-eval", "source": path.name, "source_position": f"{path.name}:{number}"}
        try:
            yield number, mapper(dict(zip(header, row, strict=True)), meta)
        except RecordRejected:
            continue


def load_demo_records(directory: Path) -> DemoRecords:
    """Map the demo data in ``directory`` with the demo config and read the truth's clusters."""
    with _demo_data_env(directory):
        config = load_config(DEMO_CONFIG)
    mappers = build_mappers(config, ["account", "contact"])
    customers, contacts = config.sources["customers"].path, config.sources["contacts"].path
    if customers is None or contacts is None:
        raise ValueError("the demo config's customers and contacts sources must be files")
    truth: dict[int, str] = {}
    with (directory / "truth.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            if '"customers.csv"' in line:
                t = json.loads(line)
                truth[t["line"]] = t["cluster"]
    accounts, clusters = [], {}
    for number, account in _mapped(customers, mappers["account"]):
        accounts.append(account)
        clusters[account["customer_id"]] = truth[number]
    return DemoRecords(accounts, [c for _, c in _mapped(contacts, mappers["contact"])], clusters)


def dedupe(
    records: Sequence[dict[str, Any]],
    config: DedupeConfig,
    shards: int = 1,
    parents: dict[str, str] | None = None,
) -> tuple[dict[str, str], float, dict[str, Any]]:
    """Run records through ``shards`` dedupers: (record id → cluster, seconds, counters)."""
    dedupers = [Deduper(config, DedupeState()) for _ in range(shards)]
    merges = closed = refused = 0
    entity = config.entity
    # The input records live through the whole run: keep the cyclic GC from re-scanning them on every
    # collection, which would charge the dedupe step for the size of the test harness's data.
    gc.collect()
    gc.freeze()
    start, cpu_start = time.perf_counter(), time.process_time()
    for record in records:
        d = dedupers[zlib.crc32(shard_key(record, entity).encode()) % shards] if shards > 1 else dedupers[0]
        parent = parents.get(record["customer_id"]) if parents is not None and entity == "contact" else None
        result = d.process(record, parent_golden_id=parent)
        merges += len(result.cluster_merges)
        closed += result.closed_blocks
        refused += sum(1 for e in result.evidence if e.get("decision") == "refused")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    gc.unfreeze()
    assignment = {rid: f"{i}:{gid}" for i, d in enumerate(dedupers) for rid, gid in d.state.clusters.items()}
    blocks = [len(ids) for d in dedupers for ids in d.state.blocks.values()]
    counters: dict[str, Any] = {
        "cpu_seconds": cpu_seconds,
        "cluster_merges": merges,
        "closed_block_hits": closed,
        "refused_merges": refused,
        "largest_block": max(blocks, default=0),
        "closed_blocks": sum(1 for n in blocks if n >= config.max_block_size),
        "largest_cluster": max((len(g["members"]) for d in dedupers for g in d.state.goldens.values()), default=0),
        "state": dedupers[0].state.sizes(),
    }
    return assignment, seconds, counters


def evaluate(customers: int, seed: int, config: DedupeConfig | None = None, *, shards: int = 1,
             rates: QualityRates | None = None, keep: Path | None = None,
             workers: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Generate, map, deduplicate and score; returns the report as a JSON-ready dict."""
    config = config or DedupeConfig()
    with tempfile.TemporaryDirectory(prefix="crmflow-dedupe-eval-") as tmp:
        directory = keep or Path(tmp)
        t0 = time.perf_counter()
        generate(directory, customers, seed, rates, workers=workers)
        t1 = time.perf_counter()
        data = load_demo_records(directory)
        t2 = time.perf_counter()
    assignment, seconds, counters = dedupe(data.accounts, config, shards)
    cpu_seconds = counters.pop("cpu_seconds")
    scores = pairwise_scores(assignment, data.clusters)
    by_id = {a["customer_id"]: a for a in data.accounts}
    parents = {rid: gid.partition(":")[2] for rid, gid in assignment.items()}
    contact_config = config.for_contacts()
    contact_assignment, contact_seconds, _ = dedupe(data.contacts, contact_config, shards, parents)
    contact_scores = pairwise_scores(contact_assignment, {c["contact_id"]: c["contact_id"] for c in data.contacts})
    return {
        "customers": customers,
        "seed": seed,
        "shards": shards,
        "deterministic_rules": list(config.deterministic_rules),
        "accounts": len(data.accounts),
        **scores.as_dict(),
        "dedupe_seconds": round(seconds, 3),
        "records_per_second": round(len(data.accounts) / seconds) if seconds else None,
        "records_per_cpu_second": round(len(data.accounts) / cpu_seconds) if cpu_seconds else None,
        "generate_seconds": round(t1 - t0, 3),
        "map_seconds": round(t2 - t1, 3),
        **{k: v for k, v in counters.items() if k != "state"},
        "errors": error_analysis(assignment, data.clusters, by_id),
        "state_sizes": counters["state"],
        "contacts": {
            "records": len(data.contacts),
            "wrongly_merged_pairs": contact_scores.predicted_pairs,
            "dedupe_seconds": round(contact_seconds, 3),
        },
    }


def _text(report: dict[str, Any]) -> str:
    r = report
    lines = [
        f"{r['accounts']:,} accounts from {r['customers']:,} customers (seed {r['seed']}, {r['shards']} shard(s), "
        f"deterministic rules: {', '.join(r['deterministic_rules']) or 'none'})",
        f"precision {r['precision']:.4f}  recall {r['recall']:.4f}  F1 {r['f1']:.4f}",
        f"pairs: true {r['true_pairs']:,}, predicted {r['predicted_pairs']:,}, correct {r['correct_pairs']:,}",
        f"clusters: true {r['true_clusters']:,}, predicted {r['predicted_clusters']:,}; "
        f"cluster merges {r['cluster_merges']}, refused merges {r['refused_merges']}, "
        f"closed-block hits {r['closed_block_hits']}; largest cluster {r['largest_cluster']}, "
        f"largest block {r['largest_block']}, closed blocks {r['closed_blocks']}",
        f"dedupe {r['dedupe_seconds']:.2f}s = {r['records_per_second']:,} records/s "
        f"({r['records_per_cpu_second']:,} per CPU second) "
        f"(generate {r['generate_seconds']:.1f}s, map {r['map_seconds']:.1f}s)",
        f"contacts: {r['contacts']['records']:,}, wrongly merged pairs {r['contacts']['wrongly_merged_pairs']}",
        "missed pairs by variation: " + json.dumps(r["errors"]["missed"]),
        "wrongly merged pairs by variation: " + json.dumps(r["errors"]["wrongly_merged"]),
        "state (entries, mean bytes): "
        + ", ".join(f"{k} {v['entries']:,} x {v['mean_bytes']:.0f} B" for k, v in r["state_sizes"].items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crmflow.evaluation.dedupe_eval", description="Evaluate the deduper on generated demo data."
    )
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shards", type=int, default=1, help="simulate N partitions keyed by shard_key")
    parser.add_argument("--workers", type=int, default=None, help="generator processes (default: one per CPU)")
    parser.add_argument("--keep", type=Path, default=None, help="generate into this directory and keep it")
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="generator quality rate override, repeatable (crmflow demo-data --rate)",
    )
    parser.add_argument(
        "--deterministic",
        default="email,phone",
        metavar="RULES",
        help="deterministic rules, comma-separated (empty: fuzzy scoring only)",
    )
    parser.add_argument("--scoring", choices=("points", "fellegi_sunter"), default="fellegi_sunter")
    parser.add_argument("--model", type=Path, default=None, help="model file (crmflow.evaluation.dedupe_train)")
    parser.add_argument("--legacy-blocking", action="store_true", help="the built-in keys only (before issue 13)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.customers < 1 or args.shards < 1:
        parser.error("--customers and --shards must be >= 1")
    try:
        rates = parse_rate_overrides(args.rate)
        extra: dict[str, Any] = {"blocking": ()} if args.legacy_blocking else {}
        config = DedupeConfig(deterministic_rules=tuple(r for r in args.deterministic.split(",") if r),
                              scoring=args.scoring, model_file=args.model, **extra)  # fmt: skip
    except (CrmflowError, ValidationError) as exc:
        parser.error(str(exc))
    started = time.perf_counter()
    report = evaluate(args.customers, args.seed, config, shards=args.shards, rates=rates, keep=args.keep,
                      workers=args.workers)  # fmt: skip
    report["total_seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(report, indent=2) if args.json else _text(report) + f"\ntotal {report['total_seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
