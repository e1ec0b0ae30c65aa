"""The hand-unrolled truth formatters write exactly what json.dumps writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crmflow.demo_data.layout import SOURCE_FILES, TARGET_FIELDS
from crmflow.demo_data.truth import TruthWriter

pytestmark = pytest.mark.unit

VALUES = ["plain", None, 'quote " and \\ back', "tab\tand\nnewline", "Zoë Straße €", "emoji 🙂", ""]


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def test_formatters_equal_json_dumps(tmp_path: Path) -> None:
    expected = []
    with TruthWriter(tmp_path / "t.jsonl") as writer:
        for i, source in enumerate(SOURCE_FILES):
            fields = TARGET_FIELDS[source.entity]
            for shift in range(len(VALUES)):
                values = [VALUES[(shift + k) % len(VALUES)] for k in range(len(fields))]
                flags = ["phone_invalid", "email_missing"][: shift % 3]
                cluster = "P0000001" if i == 0 else None
                writer.ok(source, shift + 2, f"K{shift}", cluster, values, list(flags))
                clean = {**dict(zip(fields, values, strict=True)), "quality_flags": sorted(flags)}
                expected.append(
                    _dumps(
                        {
                            "entity": source.entity,
                            "source_file": source.name,
                            "line": shift + 2,
                            "source_key": f"K{shift}",
                            "cluster": cluster,
                            "outcome": "ok",
                            "rule": None,
                            "clean": clean,
                        }
                    )
                )
            writer.reject(source, 99, "X1", None, "orphan")
            expected.append(
                _dumps(
                    {
                        "entity": source.entity,
                        "source_file": source.name,
                        "line": 99,
                        "source_key": "X1",
                        "cluster": None,
                        "outcome": "reject",
                        "rule": "orphan",
                        "clean": {},
                    }
                )
            )
        counts = writer.counts()
    assert (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines() == expected
    assert counts["sales.csv"] == {"ok": len(VALUES), "orphan": 1}
