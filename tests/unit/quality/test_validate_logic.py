"""Pure parts of validate and cutover status: the Wilson bound, value forms, masked display, the read scope of a
run, the report's verdict, and the cutover checks."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from crmflow.quality.cutover import Check, lag_check, last_validation_check, services_check, verdict
from crmflow.quality.expected import _before
from crmflow.quality.target import display, normalise
from crmflow.quality.validate import Discrepancy, EntityCheck, ValidationReport, wilson_upper
from producers.readers.base import FileMark, KeyMark

pytestmark = pytest.mark.unit


def test_wilson_upper_bound() -> None:
    assert wilson_upper(0, 0) == 1.0
    # 0 errors in 100: the 95% upper bound is about 3.7% (the "rule of three" says 3%).
    assert 0.03 < wilson_upper(0, 100) < 0.04
    assert wilson_upper(0, 10_000) < wilson_upper(0, 100)
    assert wilson_upper(5, 100) > 0.05
    assert wilson_upper(100, 100) == pytest.approx(1.0)


def test_normalise_compares_columns_with_mapped_values() -> None:
    assert normalise(date(2024, 1, 5)) == "2024-01-05"
    assert normalise(Decimal("12.5")) == normalise(Decimal("12.50")) == "12.50"
    assert normalise(["b", "a"]) == normalise(("a", "b"))
    assert normalise(None) is None


def test_display_masks_pii_fields_only() -> None:
    assert display("jane.doe@example.com", "email", True) == "j***@example.com"
    assert display("+14155550123", "phone", True) == "*** *** 0123"
    assert display("Jane", "first_name", True) == "J***"
    assert display("Paris", "city", False) == "Paris"
    assert display(None, "email", True) is None


def test_scope_of_a_partial_read() -> None:
    end = FileMark(offset=100, line=5)
    assert _before(FileMark(offset=100, line=5), end)
    assert not _before(FileMark(offset=101, line=6), end)
    assert _before(KeyMark("k", 3), KeyMark("z", 3)) and not _before(KeyMark("k", 4), KeyMark("z", 3))


def _report(**thresholds: float) -> ValidationReport:
    return ValidationReport(None, "t", None, 0, {"accuracy": 1.0, "completeness": 1.0, **thresholds})


def test_report_verdict_follows_thresholds_and_integrity() -> None:
    report = _report()
    report.entities["account"] = EntityCheck(source=10, landed=10, compared=10, accurate=10)
    assert report.ok and report.accuracy == 1.0 and report.completeness == 1.0
    report.entities["account"].accurate = 9
    assert not report.ok and "accuracy" in report.reasons()[0]
    lenient = _report(accuracy=0.9)
    lenient.entities["account"] = EntityCheck(source=10, landed=9, missing_count=1, compared=9, accurate=9)
    assert not lenient.ok and "completeness" in lenient.reasons()[0]
    clean = _report()
    clean.add(Discrepancy("integrity", "contact", "X1", "customer_id", "an account", "orphan: no account C9"))
    assert not clean.ok and "integrity 1" in clean.reasons()[0]
    assert clean.to_json()["discrepancies"][0]["id"] == "X1"


def test_cutover_checks(tmp_path: Path) -> None:
    assert services_check({"kafka": None, "postgres": "refused"}).ok is False
    assert lag_check({"g": 5}, 0).ok is False and lag_check({"g": 0}, 0).ok
    assert not last_validation_check(None).ok
    passed = tmp_path / "validate.json"
    passed.write_text('{"ok": true, "kpis": {"data_accuracy_rate": 1.0}}')
    assert last_validation_check(passed).ok
    result = verdict([Check("lag", True, "0"), Check("dead_letters", False, "3 open letters of rule orphan")])
    assert result["verdict"] == "NO-GO" and result["reasons"] == ["dead_letters: 3 open letters of rule orphan"]
    assert verdict([Check("lag", True, "0")])["go"]
