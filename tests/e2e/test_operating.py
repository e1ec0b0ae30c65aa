"""What a user sees when the run does not go to plan: an unset target variable, a stack that is down before
the run, Ctrl-C and SIGTERM. Each ends with one clear line, a distinct exit code, no process left behind, and
(where it can) a resume command that finishes the job. A dependency lost mid-run is survived, not reported:
see test_faults.py (Kafka killed and restarted, the registry down, the target database restarted)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from crmflow.exitcodes import ExitCode
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints
from tests.e2e.conftest import Dataset, Run
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def _crmflow_processes(config: Path) -> list[psutil.Process]:
    """Every live process whose command line names this test's config (migrate and its stages)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if str(config) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _rows(dsn: str, table: str = "accounts") -> int:
    with psycopg.connect(dsn) as conn:
        try:
            return int(conn.execute(f"select count(*) from crm.{table}").fetchone()[0])  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            return 0


@pytest.fixture
def migrate_proc() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``migrate_proc(run, *args)``: ``crmflow migrate`` in the background, killed (with its stages, which
    die with it) if the test leaves it running."""
    started: list[subprocess.Popen[str]] = []

    def start(run: Run, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "crmflow", "migrate", "-c", str(run.config), *args],
                                env=run.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_an_unset_target_variable_is_an_error_and_nothing_is_written(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints
) -> None:
    def unset_target(raw: dict[str, Any]) -> None:
        raw["target"]["dsn_env"] = "E2E_PROD_CRM_DSN_NEVER_SET"

    run = run_factory(small_dataset, unset_target)
    res = run.cli("migrate", "-c", str(run.config))
    assert res.returncode == ExitCode.CONFIG, res.stderr
    assert "E2E_PROD_CRM_DSN_NEVER_SET" in res.stderr and "not set" in res.stderr
    assert "Traceback" not in res.stderr
    from confluent_kafka.admin import AdminClient

    topics = AdminClient(endpoints.kafka.client_config()).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(run.prefix)], "records moved although the target was unknown"


def test_a_stack_that_is_down_is_one_line_naming_the_fix(
    small_dataset: Dataset, run_factory: Callable[..., Run]
) -> None:
    run = run_factory(small_dataset)
    env = {**run.env, "CRMFLOW_STACK": "local", "CRMFLOW_KAFKA_PORT": "1"}  # nothing listens on port 1
    res = subprocess.run([sys.executable, "-m", "crmflow", "migrate", "-c", str(run.config)], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == ExitCode.INFRASTRUCTURE, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3, lines  # "run ...: target ..." and the error line; no librdkafka noise
    assert "Kafka at 127.0.0.1:1" in res.stderr and "crmflow stack up" in res.stderr
    assert "--run-id" in lines[-1]
    dlq = subprocess.run([sys.executable, "-m", "crmflow", "dlq", "list", "-c", str(run.config)], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert dlq.returncode == ExitCode.INFRASTRUCTURE, dlq.stderr
    assert len([line for line in dlq.stderr.splitlines() if line.strip()]) <= 3, dlq.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_migrate_and_every_child_within_seconds(
    sig: signal.Signals, medium_dataset: Dataset, run_factory: Callable[..., Run],
    migrate_proc: Callable[..., subprocess.Popen[str]],
) -> None:
    run = run_factory(medium_dataset)
    proc = migrate_proc(run, "--workers", "2")
    # Mid-run: the processors are up and the sink has written something.
    wait_until(lambda: len(_crmflow_processes(run.config)) >= 4 and _rows(run.target_dsn) > 0, timeout_s=300,
               what="migrate, 2 processors and a sink writing")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert f"resume with: crmflow migrate -c {run.config} --run-id" in err
    assert "Traceback" not in err and "exited with" not in err
    wait_until(lambda: not _crmflow_processes(run.config), timeout_s=10, what="no crmflow process left")


def test_runs_lists_each_run_with_its_summary_on_stdout_and_on_disk(
    small_dataset: Dataset, run_factory: Callable[..., Run]
) -> None:
    run = run_factory(small_dataset)
    res = run.cli("migrate", "-c", str(run.config))
    assert res.returncode == ExitCode.OK, res.stderr[-3000:]
    run_id = next(line.split()[1] for line in res.stdout.splitlines() if line.strip().startswith("run "))
    assert "account" in res.stdout and "rejected" in res.stdout  # the table went to stdout
    listed = json.loads(run.cli("runs", "--json", "--limit", "1000").stdout)["runs"]
    mine = [r for r in listed if r["run_id"] == run_id]
    assert mine and mine[0]["status"] == "reconciled" and mine[0]["records"] == len(small_dataset.truth)
    run_dir = stack_settings().home / "runs" / run_id
    assert json.loads((run_dir / "run.json").read_text())["summary"]["reconciled"] is True
    text = (run_dir / "summary.txt").read_text()
    table = [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]
    assert run_id in text and table and max(len(line) for line in table) <= 80
    shown = run.cli("runs", "show", run_id)
    assert shown.returncode == 0 and "reconciled" in shown.stdout
