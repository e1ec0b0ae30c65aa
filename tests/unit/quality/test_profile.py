"""The streaming profile's parts: distinct sketch, top values, sample, fences, hits, outliers, masks."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from crmflow.config import load_config
from crmflow.quality.assess import pii_fields, shape
from crmflow.quality.outliers import Extremes
from crmflow.quality.profile import (
    EXACT_DISTINCT,
    DistinctCounter,
    FieldProfile,
    Hits,
    Reservoir,
    TopValues,
    iqr_fences,
)

pytestmark = pytest.mark.unit

DEMO_CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"


def test_distinct_is_exact_below_the_threshold_and_close_above() -> None:
    small = DistinctCounter()
    for i in range(1000):
        small.add(f"v{i % 700}")
    assert small.count() == 700 and not small.approximate
    big = DistinctCounter()
    n = 3 * EXACT_DISTINCT
    for i in range(n):
        big.add(f"value-{i}")
    assert big.approximate
    assert abs(big.count() - n) / n < 0.05


def test_top_values_are_exact_until_pruned() -> None:
    top = TopValues(capacity=3)
    for value, n in (("a", 5), ("b", 3), ("c", 2), ("d", 1)):
        for _ in range(n):
            top.add(value)
    assert top.top(2) == [("a", 5), ("b", 3)] and not top.approximate
    for i in range(10):
        top.add(f"rare{i}")
    assert top.approximate and top.top(1) == [("a", 5)]
    assert len(top.counts) <= 6


def test_the_reservoir_is_bounded_uniform_and_seeded() -> None:
    a, b = Reservoir(size=100), Reservoir(size=100)
    for i in range(10_000):
        a.add(i)
        b.add(i)
    assert len(a.sample) == 100 and a.seen == 10_000 and a.sample == b.sample
    assert 2_500 < sum(a.sample) / 100 < 7_500


def test_iqr_fences() -> None:
    assert iqr_fences([1.0] * 5) is None
    low, high = iqr_fences([float(v) for v in range(1, 101)])  # type: ignore[misc]
    assert low == pytest.approx(25.75 - 3 * 49.5) and high == pytest.approx(75.25 + 3 * 49.5)


def test_hits_count_everything_and_keep_the_first_examples() -> None:
    hits = Hits(keep=2)
    for i in range(5):
        hits.add(f"f.csv:{i}", f"v{i}", to="x")
    assert hits.to_json() == {"count": 5, "examples": [{"at": "f.csv:0", "value": "v0", "to": "x"},
                                                       {"at": "f.csv:1", "value": "v1", "to": "x"}]}  # fmt: skip


def test_a_field_profile_counts_nulls_blanks_and_masks_its_top_values() -> None:
    prof = FieldProfile(mask=lambda v: v[:1] + "***")
    for value in ["Smith", "Smith", "Jones", "", "  ", None]:
        prof.add(value)
    out = prof.to_json()
    assert (out["rows"], out["nulls"], out["blanks"], out["distinct"]) == (6, 1, 2, 2)
    assert out["null_rate"] == pytest.approx(1 / 6, abs=1e-6) and out["pii"] is True
    assert out["top_values"] == [{"value": "S***", "count": 2}, {"value": "J***", "count": 1}]
    assert "Smith" not in str(out)


def test_extremes_find_far_out_amounts_on_a_log_scale() -> None:
    ext = Extremes("amount")
    for i in range(1000):
        ext.add(10.0 + (i % 90), f"s.csv:{i + 2}")
    ext.add(1_000_000.0, "s.csv:5000")
    ext.add(0.0001, "s.csv:5001")
    out = ext.to_json()
    assert out["outliers"] == 2 and not out["count_is_lower_bound"]
    assert {e["at"] for e in out["examples"]} == {"s.csv:5000", "s.csv:5001"}


def test_extremes_count_dates_out_of_range_and_bound_their_heaps() -> None:
    ext = Extremes("date", keep=2)
    for i in range(200):
        ext.add(float(date(2020, 1, 1).toordinal() + i), f"t.csv:{i}")
    for i in range(3):
        ext.add(float(date(1850, 1, 1).toordinal() + i), f"t.csv:{1000 + i}", out_of_range=True)
    out = ext.to_json()
    assert out["out_of_range"]["count"] == 3
    assert out["outliers"] == 2 and out["count_is_lower_bound"]  # only 2 kept: at least 2
    assert out["min"] == "1850-01-01"


def test_shape_keeps_the_format_not_the_value() -> None:
    assert shape("1971-04-28") == "9999-99-99"
    assert shape("SW1A 1AA") == "AA9A 9AA"
    assert shape("13.11.2024") == "99.99.9999"


def test_pii_fields_follow_the_configs_policies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRMFLOW_DEMO_DATA", str(tmp_path))
    cfg = load_config(DEMO_CONFIG)
    account = pii_fields(cfg, "account")
    assert {"first_name", "last_name", "full_name", "email", "phone", "street", "postal_code", "birth_date"} <= set(
        account
    )
    assert account["email"] == "email" and account["phone"] == "phone" and account["birth_date"] == "date"
    assert "customer_id" not in account and "country" not in account
    assert "subject" in pii_fields(cfg, "case")  # the demo config redacts ticket subjects
