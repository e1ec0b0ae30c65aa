"""Train the Fellegi-Sunter weights of the dedupe stage and write a model file (see :mod:`processors.dedupe.train`).

    python -m crmflow.evaluation.dedupe_train --out model.json [--demo-customers 20000 | --febrl 3 | --jsonl FILE]
    python -m crmflow.evaluation.dedupe_train --out model.json --config crmflow.yaml --data DIR

``--data`` reads the accounts of the config's sources from DIR (files of the same names) and maps them with the
config, as ``crmflow dedupe evaluate`` does; without it, the records are generated demo data.

An evaluation tool, above the stages: it generates demo data and reads a crmflow config's ``dedupe:`` section.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crmflow.config import load_config
from crmflow.demo_data import generate
from crmflow.evaluation.dedupe_eval import load_demo_records
from crmflow.evaluation.labelled import load_records
from processors.dedupe.config import DedupeConfig
from processors.dedupe.train import train


def _load_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.data is not None:
        return load_records(load_config(args.config), "account", [args.data]).records
    if args.jsonl is not None:
        with Path(args.jsonl).open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]
    if args.febrl is not None:
        from processors.dedupe.benchmark import load_febrl  # the benchmark needs the `eval` extra

        return load_febrl(args.febrl).accounts
    with tempfile.TemporaryDirectory(prefix="crmflow-dedupe-train-") as tmp:
        generate(Path(tmp), args.demo_customers, args.seed, workers=1)
        return load_demo_records(Path(tmp)).accounts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crmflow.evaluation.dedupe_train", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--jsonl", type=Path, default=None, help="clean account records, one JSON object a line")
    source.add_argument("--febrl", type=int, choices=(3, 4), default=None, help="a FEBRL data set (eval extra)")
    source.add_argument("--data", type=Path, default=None, help="a directory with the config's source files")
    source.add_argument("--demo-customers", type=int, default=20_000, help="generate this many demo customers")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--config", type=Path, default=None, help="a crmflow config whose dedupe section to use")
    parser.add_argument("--identifier", action="append", default=[], help="an identifier field (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="the model file to write")
    args = parser.parse_args(argv)
    if args.data is not None and args.config is None:
        parser.error("--data needs --config (the sources and mapping to read it with)")
    if args.config is not None:
        section = load_config(args.config).dedupe
        if section is None:
            parser.error(f"{args.config} has no dedupe section")
        config = section.matcher()
    else:
        config = DedupeConfig(scoring="fellegi_sunter", identifier_fields=tuple(args.identifier))
    model = train(_load_records(args), config)
    args.out.write_text(model.to_json(config.entity) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: prior {model.prior:.4f}, " + json.dumps(model.trained_on))
    for c in model.comparisons:
        print(f"  {c.spec.field:<14} {c.spec.comparator:<13} bits " + " ".join(f"{w:+.1f}" for w in c.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
