"""The Prometheus side of deploy/ on the real tools: promtool checks and unit-tests the rules and configs,
and a real Prometheus scrapes crmflow's metrics and evaluates the recording rules over them.

Needs no Kafka: only promtool and prometheus (Debian package ``prometheus``); skipped without them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY, start_http_server

from crmflow.metrics import BATCH_DURATION, CONSUMER_LAG, RECORDS
from crmflow.stack.tools import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "rules" / "crmflow.rules.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package 'prometheus'; `make setup` installs it as root)")
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return _tool("promtool")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RULES_FILE))
    output = result.stdout + result.stderr
    rule_count = sum(len(g["rules"]) for g in yaml.safe_load(RULES_FILE.read_text())["groups"])
    assert result.returncode == 0, output
    assert f"SUCCESS: {rule_count} rules found" in output, output


def test_promtool_check_compose_config(promtool: str) -> None:
    result = _run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "is valid prometheus config file syntax" in output and "FAILED" not in output, output
    assert "1 rule files found" in output, "the rules/*.yml glob did not resolve next to the config"


def test_promtool_check_k8s_config(promtool: str) -> None:
    result = _run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus-k8s.yml"))
    output = result.stdout + result.stderr
    if "field kubernetes_sd_configs not found" in output:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's is); not checkable here")
    assert result.returncode == 0, output
    assert "is valid prometheus config file syntax" in output, output


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(promtool: str, test_file: Path) -> None:
    result = _run(promtool, "test", "rules", str(test_file))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output and "FAILED" not in output, output


def test_rule_unit_test_files_exist() -> None:
    assert {p.name for p in RULE_TESTS} >= {"alerts.test.yml", "recordings.test.yml"}


# --- a real scrape ------------------------------------------------------------------------------------



@pytest.fixture
def metrics_endpoint() -> Iterator[int]:
    """crmflow's real metrics (the process-wide registry crmflow.metrics declares them in) on 127.0.0.1."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path, metrics_endpoint: int) -> Iterator[str]:
    """A real Prometheus scraping ``metrics_endpoint`` as job crmflow-process, with the crmflow rules."""
    binary = _tool("prometheus")
    web_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {"job_name": "crmflow-process", "static_configs": [{"targets": [f"127.0.0.1:{metrics_endpoint}"]}]}
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log_file = tmp_path / "prometheus.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{web_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.returncode not in (0, -15):
        pytest.fail(f"prometheus exited {proc.returncode}:\n{log_file.read_text()[-3000:]}")


def _query_until(base_url: str, query: str, want: float, deadline_s: float = 60.0) -> list[dict[str, Any]]:
    """Poll /api/v1/query until one sample equals ``want``; fail with the last answer at the deadline."""
    last: list[Any] = [None]
    with httpx.Client(base_url=base_url, timeout=5) as client:

        def answer() -> list[dict[str, Any]] | None:
            try:
                last[0] = client.get("/api/v1/query", params={"query": query}).json()
            except (httpx.TransportError, ValueError) as exc:  # not listening yet / starting up
                last[0] = repr(exc)
                return None
            if not isinstance(last[0], dict) or last[0].get("status") != "success":
                return None
            results = list(last[0]["data"]["result"])
            return results if any(float(r["value"][1]) == want for r in results) else None

        try:
            return wait_until(answer, deadline_s, what=f"{query} to reach {want}")
        except AssertionError as exc:
            pytest.fail(f"{exc}; last answer: {last[0]}")


@pytest.fixture
def lag_topic() -> Iterator[str]:
    """A topic name no other test uses; its lag series is removed again afterwards."""
    topic = "crmflow.deploy-it.raw.customers"
    yield topic
    CONSUMER_LAG.remove("process", topic, "3")


def test_prometheus_scrapes_crmflow_metrics_and_records_them(prometheus: str, lag_topic: str) -> None:
    topic = lag_topic
    RECORDS.labels(stage="process", entity="case", outcome="merged").inc(7)
    CONSUMER_LAG.labels(stage="process", topic=topic, partition="3").set(42)
    BATCH_DURATION.labels(stage="process").observe(0.2)
    merged = REGISTRY.get_sample_value(
        "crmflow_records_total", {"stage": "process", "entity": "case", "outcome": "merged"}
    )
    process_lag = sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "crmflow_consumer_lag_messages"
        for sample in family.samples
        if sample.labels["stage"] == "process"
    )
    assert merged is not None and merged >= 7

    (up,) = _query_until(prometheus, 'up{job="crmflow-process"}', 1)
    assert up["metric"]["instance"].startswith("127.0.0.1:")

    (sample,) = _query_until(
        prometheus,
        'crmflow_records_total{job="crmflow-process", stage="process", entity="case", outcome="merged"}',
        merged,
    )
    assert float(sample["value"][1]) == merged

    (lag,) = _query_until(prometheus, f'crmflow_consumer_lag_messages{{topic="{topic}", partition="3"}}', 42)
    assert lag["metric"]["stage"] == "process"

    buckets = _query_until(
        prometheus, 'crmflow_batch_duration_seconds_bucket{stage="process", le="0.25"}', _bucket_value(0.25)
    )
    assert len(buckets) == 1

    # The recording rule ran on the scraped series: job/instance/topic/partition summed away.
    (recorded,) = _query_until(prometheus, 'crmflow:consumer_lag_messages:sum{stage="process"}', process_lag)
    assert recorded["metric"] == {"__name__": "crmflow:consumer_lag_messages:sum", "stage": "process"}


def _bucket_value(le: float) -> float:
    value = REGISTRY.get_sample_value("crmflow_batch_duration_seconds_bucket", {"stage": "process", "le": str(le)})
    assert value is not None and value >= 1
    return value
