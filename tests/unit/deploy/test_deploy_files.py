"""deploy/ is consistent with the code: every file parses, every metric and label the rules and the
dashboard use is one crmflow exports, the compose file and the Prometheus config agree on names and ports,
and the Kubernetes manifests have limits, probes on the metrics port and no secret in clear."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from crmflow import metrics as crmflow_metrics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "rules" / "crmflow.rules.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "crmflow-cutover.json"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s"
METRICS_PORTS = {"snapshot": 9401, "process": 9402, "sink": 9403, "cdc": 9404}
# cdc: table is one of the config's captured tables, op one of c u d r tombstone, slot one per cdc instance
LOW_CARDINALITY = {"stage", "entity", "outcome", "reason", "decision", "topic", "partition", "dependency",
                   "table", "op", "slot", "operation"}
SECRET_NAME = re.compile(r"DSN|KEY|PASSWORD|SECRET|TOKEN", re.IGNORECASE)


# --- what crmflow exports ----------------------------------------------------------------------------


@cache
def exported() -> dict[str, frozenset[str]]:
    """Every sample name crmflow.metrics exposes (``_total``, ``_bucket``...) → its label names.

    Each metric of the module is re-declared in a private registry with one child, so that the names come
    from prometheus_client's own exposition, without touching the process-wide registry."""
    registry = CollectorRegistry()
    found = 0
    for obj in vars(crmflow_metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        found += 1
        (family,) = obj.describe()
        labelnames = tuple(obj._labelnames)
        kind = {"counter": Counter, "gauge": Gauge, "histogram": Histogram, "summary": Summary}[family.type]
        clone = kind(family.name, family.documentation, labelnames, registry=registry)
        child = clone.labels(*["x"] * len(labelnames)) if labelnames else clone
        if isinstance(child, Gauge):
            child.set(1)
        elif isinstance(child, Counter):
            child.inc()
        else:
            child.observe(1)
    assert found >= 7, "crmflow.metrics declares fewer metrics than expected"
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in out.items()}


@cache
def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return data


def rule_list() -> list[dict[str, Any]]:
    return [r for group in rules()["groups"] for r in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rule_list() if "alert" in r}


@cache
def recorded() -> dict[str, frozenset[str]]:
    """Recording rule name → the labels its series carry (those of its outermost ``by (...)``)."""
    out = {}
    for rule in rule_list():
        if "record" in rule:
            match = re.search(r"\bby\s*\(([^)]*)\)", rule["expr"])
            assert match, f"recording {rule['record']} does not aggregate with by (...)"
            out[rule["record"]] = frozenset(_names(match[1]))
    return out


# --- a little PromQL reading: series, matchers, grouping labels --------------------------------------

SERIES = re.compile(r"\b(crmflow[_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LABEL_REPLACE_TARGET = re.compile(r"label_replace\([\s\S]*?,\s*\"([A-Za-z_][A-Za-z0-9_]*)\"")
LABEL_VALUES = re.compile(r"label_values\(([\s\S]*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def series_labels(name: str) -> frozenset[str]:
    if name.startswith("crmflow:"):
        assert name in recorded(), f"{name} is not a recording rule of {RULES_FILE.name}"
        return recorded()[name]
    assert name in exported(), f"{name} is not a metric crmflow exports (have: {sorted(exported())})"
    return exported()[name]


def check_expr(expr: str, where: str) -> set[str]:
    """Assert every crmflow series and label in ``expr`` exists; return the labels its result may carry."""
    available: set[str] = set()
    for match in SERIES.finditer(expr):
        name, selector = match[1], match[2] or ""
        labels = series_labels(name)
        for label in MATCHER.findall(selector):
            assert label in labels, f"{where}: {name} has no label {label!r} (has {sorted(labels)})"
        available |= labels
    if available:
        for group in GROUPING.findall(expr):
            for label in _names(group):
                assert label in available, f"{where}: grouping label {label!r} is on none of {expr!r}'s series"
    if re.search(r"\bup\b", expr):
        available |= {"job", "instance"}
    available |= set(LABEL_REPLACE_TARGET.findall(expr))
    return available


def all_yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --- every file parses --------------------------------------------------------------------------------


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


@pytest.mark.parametrize("path", deploy_files(".yml", ".yaml"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert all_yaml_docs(path), f"{path} is empty"


@pytest.mark.parametrize("path", deploy_files(".json"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    assert json.loads(path.read_text())


def test_no_secret_in_clear_anywhere() -> None:
    dsn_password = re.compile(r"postgres(?:ql)?://[^:/@\s]+:([^@\s]+)@")
    fernet_key = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=")
    for path in deploy_files(".yml", ".yaml", ".json", ".example", ".md", ""):
        text = path.read_text()
        for match in dsn_password.finditer(text):
            assert match[1].startswith("${"), f"{path}: a DSN with a password in clear"
        assert not fernet_key.search(text), f"{path}: looks like a Fernet key in clear"


# --- rules ---------------------------------------------------------------------------------------------


def test_metric_labels_are_low_cardinality() -> None:
    for name, labels in exported().items():
        assert labels - {"le"} <= LOW_CARDINALITY, f"{name} has labels {sorted(labels)}"


def test_recording_rules_are_named_and_keep_low_cardinality_labels() -> None:
    names = set(recorded())
    assert {
        "crmflow:records_out:rate1m",
        "crmflow:records_rejected:ratio_rate5m",
        "crmflow:dlq_records:rate5m",
        "crmflow:consumer_lag_messages:sum",
    } <= names
    for rule in rule_list():
        if "record" in rule:
            assert re.fullmatch(r"crmflow:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
            assert recorded()[rule["record"]] <= {"stage", "entity", "reason"}, rule["record"]
    assert recorded()["crmflow:records_out:rate1m"] == {"stage", "entity"}
    assert recorded()["crmflow:dlq_records:rate5m"] == {"stage", "reason"}
    assert recorded()["crmflow:consumer_lag_messages:sum"] == {"stage"}


def test_every_rule_uses_only_exported_metrics_and_labels() -> None:
    for rule in rule_list():
        where = f"rule {rule.get('record') or rule.get('alert')}"
        available = check_expr(rule["expr"], where)
        for text in (rule.get("annotations") or {}).values():
            for label in re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text):
                assert label in available, f"{where}: annotation uses $labels.{label}, not on its result"


def test_alerts_are_all_there_with_for_severity_and_what_to_do() -> None:
    expected = {
        "CrmflowConsumerLagGrowing",
        "CrmflowStageStalled",
        "CrmflowHighRejectRatio",
        "CrmflowDlqBurst",
        "CrmflowParkedRecordsStuck",
        "CrmflowTargetDown",
        "CrmflowDependencyUnavailable",
    }
    assert expected <= set(alerts())
    for name, rule in alerts().items():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name} has no for:"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and len(annotations["description"]) > 80, name
    assert alerts()["CrmflowParkedRecordsStuck"]["for"] == "30m"
    assert alerts()["CrmflowHighRejectRatio"]["for"] == "10m"
    assert "0.05" in alerts()["CrmflowHighRejectRatio"]["expr"]
    assert "> 300" in alerts()["CrmflowStageStalled"]["expr"]


def test_every_alert_has_promtool_tests_that_fire_and_stay_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    tested_records: set[str] = set()
    for path in (DEPLOY / "prometheus" / "tests").glob("*.yml"):
        spec = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in spec["rule_files"]] == [RULES_FILE.resolve()]
        for test in spec["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else silent).add(case["alertname"])
            for case in test.get("promql_expr_test", []):
                tested_records |= {m[1] for m in SERIES.finditer(case["expr"]) if ":" in m[1]}
    assert set(alerts()) <= fired, f"no firing test for {set(alerts()) - fired}"
    assert set(alerts()) <= silent, f"no not-firing test for {set(alerts()) - silent}"
    assert set(recorded()) <= tested_records, f"recordings without a value test: {set(recorded()) - tested_records}"


# --- dashboard and Grafana provisioning ----------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return data


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels():
        for target in panel.get("targets", []):
            yield panel, target


def test_dashboard_variables_and_datasource() -> None:
    d = dashboard()
    assert 38 <= d["schemaVersion"] <= 40 and d["uid"] == "crmflow-cutover"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("stage", "entity"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"]["uid"] == "${datasource}"
        match = LABEL_VALUES.fullmatch(variables[name]["definition"])
        assert match and match[2] == name
        assert name in check_expr(match[1], f"variable {name}")
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel.get("title"), panel
        if panel.get("targets"):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_use_only_exported_metrics_and_labels() -> None:
    for panel, target in targets():
        where = f"panel {panel['title']!r} {target['refId']}"
        available = check_expr(target["expr"], where)
        if SERIES.search(target["expr"]):
            for label in re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", target.get("legendFormat", "")):
                assert label in available, f"{where}: legend uses {label}, not on the result"
        for var, label in (("$stage", "stage"), ("$entity", "entity")):
            for match in SERIES.finditer(target["expr"]):
                if var in (match[2] or ""):
                    assert label in series_labels(match[1]), f"{where}: {var} on {match[1]}"


def test_dashboard_has_the_panels_of_a_cutover() -> None:
    exprs = "\n".join(t["expr"] for _, t in targets())
    for needle in (
        "crmflow:records_out:rate1m",
        'stage="snapshot", outcome="in"',
        'stage="sink", outcome="out"',
        "crmflow:records_rejected:ratio_rate5m",
        "crmflow:dlq_records:rate5m",
        "sum by (stage, topic, partition) (crmflow_consumer_lag_messages",
        "crmflow_batch_size_records",
        "crmflow_parked_records",
        "time() - max by (stage) (crmflow_last_success_timestamp_seconds",
        "crmflow_cdc_replication_lag_seconds",
        "crmflow_cdc_retained_wal_bytes",
        "crmflow_cdc_events_total",
        "sum by (stage, operation) (rate(crmflow_retries_total",
    ):
        assert needle in exprs, f"no panel queries {needle}"
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (stage, le) (rate(crmflow_batch_duration_seconds_bucket" in exprs
        cdc = f"histogram_quantile({q}, sum by (entity, le) (rate(crmflow_cdc_end_to_end_latency_seconds_bucket"
        assert cdc in exprs
    assert any(p["type"] == "alertlist" for p in panels())
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels():
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]


def test_grafana_provisioning_matches_compose_mounts() -> None:
    (ds,) = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/crmflow.yml").read_text())["providers"]
    grafana = compose()["services"]["grafana"]
    mounts = dict(m.split(":")[:2] for m in grafana["volumes"])
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"


# --- docker compose ----------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def test_compose_services_have_pinned_images_or_builds() -> None:
    services = compose()["services"]
    assert {"kafka", "registry", "postgres", "snapshot", "process", "sink", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name} has neither image nor build"
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
        if "build" in svc:
            context = (COMPOSE_FILE.parent / svc["build"]["context"]).resolve()
            assert (context / "pyproject.toml").is_file(), f"{name}: build context is not the repo root"
            assert (context / svc["build"]["dockerfile"]).is_file()
    assert services["kafka"]["image"].startswith("apache/kafka:4.1")
    assert services["registry"]["image"] == "apicurio/apicurio-registry:3.0.9"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "wal_level=logical" in services["postgres"]["command"]
    dockerfile = (COMPOSE_FILE.parent / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)


def _metrics_port(command: list[str]) -> int | None:
    return int(command[command.index("--metrics-port") + 1]) if "--metrics-port" in command else None


def test_compose_crmflow_services_publish_their_metrics_ports() -> None:
    services = compose()["services"]
    for stage, port in METRICS_PORTS.items():
        svc = services[stage]
        assert svc["command"][0] == stage
        assert _metrics_port(svc["command"]) == port
        # "127.0.0.1:9403:9403": host port = container port = --metrics-port (deploy/README.md says so)
        published = {tuple(str(p).split(":")[-2:]) for p in svc.get("ports", [])}
        assert (str(port), str(port)) in published, f"{stage} does not publish {port} as {port}"
        assert svc["environment"]["CRMFLOW_DLQ_KEY"].startswith("${"), "DLQ key must come from the env"


def test_prometheus_scrapes_exactly_the_compose_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = compose()["services"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"] if j["job_name"].startswith("crmflow-")}
    scraped = {
        (job_name, target)
        for job_name, job in jobs.items()
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        (f"crmflow-{name}", f"{name}:{_metrics_port(svc['command'])}")
        for name, svc in services.items()
        if isinstance(svc.get("command"), list) and _metrics_port(svc["command"])
    }
    assert scraped == expected
    rule_glob = config["rule_files"]
    prometheus = services["prometheus"]
    mounts = dict(m.split(":")[:2] for m in prometheus["volumes"])
    assert mounts["../prometheus/rules"] == "/etc/prometheus/rules" and rule_glob == ["rules/*.yml"]
    assert mounts["../prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def test_compose_mounts_exist_and_secrets_come_from_env() -> None:
    services = compose()["services"]
    required: set[str] = set()
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} does not exist"
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key) and "PATH" not in key:
                assert "${" in str(value), f"{name}: {key} in clear"
            required |= set(re.findall(r"\$\{([A-Z_]+):\?", str(value)))
    example = (COMPOSE_FILE.parent / "env.example").read_text()
    for var in required:
        assert re.search(rf"^{var}=", example, re.MULTILINE), f"env.example lacks {var}"


# --- Kubernetes -----------------------------------------------------------------------------------------


@cache
def k8s_objects() -> list[dict[str, Any]]:
    """Every object the manifests declare (kustomization.yaml is kustomize's, not an object)."""
    paths = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return [doc for path in paths for doc in all_yaml_docs(path)]


def workloads() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod template) of every Deployment, StatefulSet and Job."""
    for obj in k8s_objects():
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield obj, obj["spec"]["template"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    kinds = {(o["kind"], o["metadata"]["name"]) for o in k8s_objects()}
    assert {
        ("Namespace", "crmflow"),
        ("ConfigMap", "crmflow-config"),
        ("StatefulSet", "crmflow-process"),
        ("Deployment", "crmflow-sink"),
        ("Job", "crmflow-snapshot"),
        ("Service", "crmflow-process"),
        ("Service", "crmflow-sink"),
        ("StatefulSet", "crmflow-cdc"),
        ("Service", "crmflow-cdc"),
    } <= kinds


def test_k8s_has_no_secret_in_clear() -> None:
    for obj in k8s_objects():
        assert obj["kind"] != "Secret", "Secrets are created out of band, never committed"
    for obj, template in workloads():
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
        assert template["spec"].get("automountServiceAccountToken") is False, obj["metadata"]["name"]
    env_cm = next(o for o in k8s_objects() if o["metadata"]["name"] == "crmflow-env")
    assert not [k for k in env_cm["data"] if SECRET_NAME.search(k)], "secrets in the env ConfigMap"
    refs = {
        (env["name"], env["valueFrom"]["secretKeyRef"]["key"])
        for _, t in workloads()
        for c in t["spec"]["containers"]
        for env in c.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert {("CRMFLOW_TARGET_DSN", "target-dsn"), ("CRMFLOW_DLQ_KEY", "dlq-key"),
            ("CRMFLOW_LEGACY_DSN", "legacy-dsn")} <= refs


def test_k8s_cdc_is_one_reader_of_its_slot_with_the_legacy_dsn_from_a_secret() -> None:
    """A replication slot has one reader: one replica, a StatefulSet (its rolling update stops the old pod first);
    the legacy DSN only from the Secret; --init only when the env ConfigMap asks for it (first start)."""
    (sts,) = [o for o in k8s_objects() if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "crmflow-cdc"]
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["cdc", "-c", "/etc/crmflow/crmflow.yaml"]
    assert "--init" not in container["args"] and container["args"][-1] == "$(CRMFLOW_CDC_FLAGS)"
    env_cm = next(o for o in k8s_objects() if o["metadata"]["name"] == "crmflow-env")
    assert env_cm["data"]["CRMFLOW_CDC_FLAGS"] == "--load"
    env = {e["name"]: e for e in container["env"]}
    assert env["CRMFLOW_LEGACY_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "crmflow-secrets", "key": "legacy-dsn"}
    from crmflow.config import load_config

    config_map = next(o for o in k8s_objects() if o["metadata"]["name"] == "crmflow-config")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crmflow.yaml"
        path.write_text(config_map["data"]["crmflow.yaml"])
        cfg = load_config(path)
    assert cfg.cdc is not None and cfg.cdc.dsn_env == "CRMFLOW_LEGACY_DSN"


def test_compose_cdc_service_is_one_reader_with_its_own_config() -> None:
    services = compose()["services"]
    cdc = services["cdc"]
    assert cdc["command"][:3] == ["cdc", "-c", "/etc/crmflow/crmflow.yaml"] and "--init" not in cdc["command"]
    assert cdc["command"][-1] == "${CRMFLOW_CDC_FLAGS:---load}"
    assert "replicas" not in cdc.get("deploy", {}) and cdc["profiles"] == ["cdc"]
    assert cdc["environment"]["CRMFLOW_LEGACY_DSN"].startswith("postgresql://crmflow:${POSTGRES_PASSWORD:?")
    for name in ("cdc", "cdc-process", "cdc-sink"):
        mounts = dict(m.split(":")[:2] for m in services[name]["volumes"])
        assert mounts["../demo/crmflow-cdc.yaml"] == "/etc/crmflow/crmflow.yaml", name


def test_each_k8s_stage_connects_as_its_own_kafka_principal() -> None:
    """Least privilege: each workload takes its stage's SASL credentials from the Secret crmflow-kafka (optional,
    so a plaintext cluster needs none), never another stage's."""
    for _, template in workloads():
        stage = template["metadata"]["labels"]["app.kubernetes.io/component"]
        (container,) = template["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
                if "secretKeyRef" in e.get("valueFrom", {}) and "KAFKA_SASL" in e["name"]}  # fmt: skip
        own = f"CRMFLOW_{stage.upper()}_KAFKA_SASL"
        assert set(refs) == {f"{own}_USERNAME", f"{own}_PASSWORD"}
        for name, ref in refs.items():
            assert ref["name"] == "crmflow-kafka" and ref["optional"] is True
            assert ref["key"] == f"{stage}-{name.rsplit('_', 1)[1].lower()}", name


def test_k8s_workloads_limits_probes_and_scrape_annotations() -> None:
    seen = set()
    for obj, template in workloads():
        stage = template["metadata"]["labels"]["app.kubernetes.io/component"]
        seen.add((obj["kind"], stage))
        (container,) = template["spec"]["containers"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{stage}: resources.{kind}"
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
        assert port == METRICS_PORTS[stage]
        assert container["args"][0] == stage and _metrics_port(container["args"]) == port
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
        probe = container["livenessProbe"]["httpGet"]
        assert probe["path"] == "/metrics" and probe["port"] in ("metrics", port)
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert seen == {("Job", "snapshot"), ("StatefulSet", "process"), ("Deployment", "sink"), ("StatefulSet", "cdc")}


def test_each_processor_pod_is_its_own_stable_instance() -> None:
    """The processor's transactional id comes from --instance: the pod's stable StatefulSet name."""
    (sts,) = [o for o in k8s_objects() if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "crmflow-process"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--instance") + 1] == "$(POD_NAME)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def _relabel(rule: dict[str, Any], value: str) -> str:
    """Prometheus' replace action on one value (its regex is anchored; $1 is a group reference)."""
    return re.sub(f"^(?:{rule['regex']})$", re.sub(r"\$(\d)", r"\\\1", rule["replacement"]), value)


def test_k8s_prometheus_config_names_jobs_after_the_pod_component() -> None:
    """Replays prometheus-k8s.yml's relabelling on each pod's labels: job must become crmflow-<stage>."""
    (job,) = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-k8s.yml").read_text())["scrape_configs"]
    relabel = {tuple(r["source_labels"]): r for r in job["relabel_configs"]}
    scrape = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    naming = relabel[("__meta_kubernetes_pod_label_app_kubernetes_io_component",)]
    address = relabel[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    assert scrape["action"] == "keep" and naming["target_label"] == "job"
    for _, template in workloads():
        meta = template["metadata"]
        assert re.fullmatch(scrape["regex"], meta["annotations"]["prometheus.io/scrape"])
        component = meta["labels"]["app.kubernetes.io/component"]
        assert _relabel(naming, component) == f"crmflow-{component}"
        address_and_port = f"10.0.0.7:8080;{meta['annotations']['prometheus.io/port']}"
        assert _relabel(address, address_and_port) == f"10.0.0.7:{METRICS_PORTS[component]}"


def test_k8s_migration_config_loads_and_checks(tmp_path: Path) -> None:
    from crmflow.config import check_config, load_config

    config_map = next(o for o in k8s_objects() if o["metadata"]["name"] == "crmflow-config")
    path = tmp_path / "crmflow.yaml"
    path.write_text(config_map["data"]["crmflow.yaml"])
    config = load_config(path)
    errors = [str(p) for p in check_config(config) if p.severity == "error"]
    assert not errors, errors
    mounts = {
        m["mountPath"]
        for _, t in workloads()
        for c in t["spec"]["containers"]
        for m in c["volumeMounts"]
        if m["name"] == "config"
    }
    assert mounts == {"/etc/crmflow"}
    for source in config.sources.values():
        assert source.path is None or str(source.path).startswith("/data/exports/")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: kustomize render not checked")
def test_kustomize_renders() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    assert all(o["metadata"].get("namespace") == "crmflow" for o in rendered if o["kind"] != "Namespace")
    assert len(rendered) == len(k8s_objects())
