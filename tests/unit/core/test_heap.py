"""Every crmflow command runs with the collector thresholds tuned for large long-lived states."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from crmflow.runtime.heap import THRESHOLDS

CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"


def test_a_crmflow_command_runs_with_the_tuned_thresholds() -> None:
    code = ("import gc; from crmflow.cli.main import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['config', 'check', '-c', {str(CONFIG)!r}]); "
            "print(r.exit_code, gc.get_threshold())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == f"0 {THRESHOLDS}"
