"""Generated datasets shared by the demo-data unit tests, parsed once per session."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crmflow.demo_data import QualityRates, Summary, generate
from crmflow.demo_data.layout import SOURCE_FILES

# Raised rates, so that a few thousand customers show every problem many times.
NOISY_RATES = QualityRates(
    duplicate=0.25,
    whitespace=0.3,
    name_case=0.2,
    email_case=0.2,
    email_invalid=0.1,
    phone_invalid=0.1,
    postal_code_invalid=0.1,
    country_unknown=0.08,
    field_missing=0.1,
    date_invalid=0.1,
    date_reject=0.03,
    amount_reject=0.03,
    required_missing=0.02,
    csv_malformed=0.02,
    encoding=0.02,
    orphan=0.03,
)


@dataclass
class Dataset:
    """One generated dataset: files, summary, truth by (file, line), parsed rows by (file, line).

    ``rows[file][line]`` is the list of fields, or None when the line is not valid UTF-8.
    """

    path: Path
    summary: Summary
    truth: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    rows: dict[str, dict[int, list[str] | None]] = field(default_factory=dict)
    raw: dict[str, dict[int, bytes]] = field(default_factory=dict)

    def ok(self, name: str) -> list[tuple[dict[str, Any], list[str]]]:
        """(truth, fields) of the ok lines of file ``name``."""
        out = []
        for line, t in self.truth[name].items():
            if t["outcome"] == "ok":
                fields = self.rows[name][line]
                assert fields is not None
                out.append((t, fields))
        return out


def load(path: Path, summary: Summary) -> Dataset:
    data = Dataset(path, summary)
    for source in SOURCE_FILES:
        raw_lines = (path / source.name).read_bytes().split(b"\n")
        assert raw_lines[-1] == b"", f"{source.name} does not end with a newline"
        data.raw[source.name] = {}
        data.rows[source.name] = {}
        for number, raw in enumerate(raw_lines[:-1], start=1):
            if number == 1:
                assert raw.decode() == ",".join(source.columns)
                continue
            data.raw[source.name][number] = raw
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                data.rows[source.name][number] = None
                continue
            data.rows[source.name][number] = next(csv.reader([text]))
        data.truth[source.name] = {}
    with (path / "truth.jsonl").open(encoding="utf-8") as f:
        for text in f:
            record = json.loads(text)
            by_line = data.truth[record["source_file"]]
            assert record["line"] not in by_line, f"two truth lines for {record['source_file']}:{record['line']}"
            by_line[record["line"]] = record
    return data


@pytest.fixture(scope="session", params=["default", "noisy"])
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    rates = NOISY_RATES if request.param == "noisy" else QualityRates()
    customers = 3000 if request.param == "noisy" else 4000
    path = tmp_path_factory.mktemp(f"demo-{request.param}")
    summary = generate(path, customers, seed=11, rates=rates, workers=1, chunk_size=1500)
    return load(path, summary)
