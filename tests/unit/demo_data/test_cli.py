"""``crmflow demo-data`` through typer, on an app of its own (main.py wiring is the lead's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from crmflow.cli import demo_data

pytestmark = pytest.mark.unit


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("demo-data")(demo_data.demo_data)
    app.command("noop")(lambda: None)  # two commands, so "demo-data" stays a subcommand
    return app


def test_writes_files_and_a_json_summary(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "demo-data",
            "--out",
            str(tmp_path),
            "--customers",
            "300",
            "--seed",
            "2",
            "--rate",
            "orphan=0",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["files"]["customers.csv"]["lines"] == 300
    assert summary["deleted_customers"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "contacts.csv",
        "customers.csv",
        "sales.csv",
        "tickets.csv",
        "truth.jsonl",
    ]


def test_prints_a_table_by_default(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo-data", "--out", str(tmp_path), "--customers", "50", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "customers.csv" in result.stdout and "persons" in result.stdout


def test_unknown_rate_is_a_usage_error_listing_the_names(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo-data", "--out", str(tmp_path), "--rate", "dupes=0.1"])
    assert result.exit_code == 2
    assert "dupes" in result.output and "duplicate_child_mix" in result.output
    assert not (tmp_path / "customers.csv").exists()
