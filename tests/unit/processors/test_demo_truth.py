"""The demo config against the demo-data generator's ground truth (docs/data-contract.md).

The generator predicts, for every source line, what the pipeline with ``deploy/demo/crmflow.yaml`` must
produce. Here a small, very noisy dataset is generated and every line is mapped: clean values, quality
flags and reject rules must be exactly the truth's. (``orphan`` is the sink's rule and
``csv_malformed``/``encoding`` the snapshot's: such lines are skipped or mapped normally here.)
"""

from __future__ import annotations

import csv
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crmflow.config import load_config
from crmflow.demo_data.rates import QualityRates
from crmflow.demo_data.run import generate
from processors.exceptions import RecordRejected
from processors.mapping import build_mappers

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"
FILES = {"customers.csv": "account", "contacts.csv": "contact", "sales.csv": "sale", "tickets.csv": "case"}
NOISY = QualityRates(
    whitespace=0.5, name_case=0.5, street_abbreviation=0.8, phone_format=0.9, date_format=0.9,
    country_spelling=0.9, email_case=0.5, email_missing=0.1, email_invalid=0.2, phone_missing=0.1,
    phone_invalid=0.2, postal_code_invalid=0.2, country_unknown=0.1, field_missing=0.2, date_invalid=0.2,
    date_reject=0.05, amount_reject=0.05, required_missing=0.05, duplicate=0.3,
)  # fmt: skip


def _as_truth(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, date):
        return value.isoformat()
    return value


def test_mapping_reproduces_the_generators_truth(tmp_path: Path) -> None:
    generate(tmp_path, 300, seed=11, rates=NOISY, workers=1)
    truth = {}
    for line in (tmp_path / "truth.jsonl").read_text(encoding="utf-8").splitlines():
        t = json.loads(line)
        truth[(t["source_file"], t["line"])] = t
    mappers = build_mappers(load_config(DEMO))
    checked = rejected = 0
    for name, entity in FILES.items():
        lines = (tmp_path / name).read_bytes().split(b"\n")
        header = next(csv.reader([lines[0].decode()]))
        for number, data in enumerate(lines[1:], start=2):
            if not data:
                continue
            expected = truth[(name, number)]
            if expected["rule"] in ("csv_malformed", "encoding"):
                continue
            raw = dict(zip(header, next(csv.reader([data.decode("utf-8")])), strict=True))
            where = f"{name}:{number}"
            meta = {"run_id": "t", "source": name, "source_position": where}
            try:
                got = mappers[entity](raw, meta)
            except RecordRejected as rej:
                assert expected["outcome"] == "reject" and expected["rule"] == rej.rule, where
                rejected += 1
                continue
            if expected["rule"] == "orphan":
                continue
            assert expected["outcome"] == "ok", where
            assert {k: _as_truth(got[k]) for k in expected["clean"]} == expected["clean"], where
            checked += 1
    assert checked > 800 and rejected > 30
