"""The per-stage Kafka ACLs and role SQL the secure stack grants and the README documents."""

from __future__ import annotations

import pytest
from psycopg import sql

from crmflow.stack import roles
from crmflow.stack.acls import by_principal, kafka_acls_commands, pipeline_acls

pytestmark = pytest.mark.unit

USERS = {p: f"u_{p}" for p in ("snapshot", "cdc", "process", "sink", "ops")}


def _ops(principal: str, name: str) -> set[str]:
    return {a.operation for a in pipeline_acls("p") if a.principal == principal and a.name == name}


def test_each_stage_gets_only_its_topics() -> None:
    acls = by_principal(pipeline_acls("p"))
    assert {a.name for a in acls["sink"] if a.resource == "topic"} == {"p.mapped.", "p.dlq"}
    assert _ops("sink", "p.mapped.") == {"read", "describe"}
    assert _ops("sink", "p.dlq") == {"write", "describe"}
    assert {a.name for a in acls["snapshot"]} == {"p.raw.", "p.dlq"}
    assert {a.operation for a in acls["snapshot"]} == {"create", "write", "describe"}
    assert {a.name for a in acls["cdc"]} == {"p.cdc.", "p.dlq"}
    assert _ops("process", "p.raw.") == {"read", "describe"}
    assert _ops("process", "p.mapped.") == {"write", "describe"}
    assert "read" not in {a.operation for a in acls["process"] if a.name == "p.dlq"}
    # nobody but ops creates topics outside its own kind, nobody gets the whole prefix but ops
    assert [a for a in pipeline_acls("p") if a.name == "p." and a.principal != "ops"] == []
    assert "write" not in _ops("ops", "p.")


def test_groups_and_transactional_ids() -> None:
    acls = pipeline_acls("crmflow.demo")
    tx = {(a.principal, a.name, a.pattern) for a in acls if a.resource == "transactional-id"}
    assert tx == {("process", "crmflow-process-crmflow.demo-", "prefixed"), ("sink", "crmflow-sink", "prefixed")}
    groups = {(a.principal, a.name, a.operation) for a in acls if a.resource == "group"}
    assert ("process", "crmflow-process-crmflow.demo", "read") in groups
    assert ("ops", "crmflow-process-crmflow.demo", "describe") in groups
    assert ("ops", "crmflow-dlq-reader", "read") in groups
    assert not [g for g in groups if g[0] in ("snapshot", "cdc")]  # producers only: no group at all


def test_kafka_acls_commands() -> None:
    lines = kafka_acls_commands("p", USERS, bootstrap="broker:9093")
    assert len(lines) == len({(a.principal, a.resource, a.name) for a in pipeline_acls("p")})
    sink_raw = [line for line in lines if "User:u_sink" in line and "'p.raw.'" in line]
    assert sink_raw == []
    line = next(line for line in lines if "User:u_sink" in line and "'p.mapped.'" in line)
    assert line.startswith("kafka-acls.sh --bootstrap-server broker:9093 --command-config admin.properties --add ")
    assert "--operation Read --operation Describe" in line or "--operation Describe --operation Read" in line
    assert line.endswith("--topic 'p.mapped.' --resource-pattern-type prefixed")


def _text(stmts: list[sql.Composed]) -> str:
    return "\n".join(s.as_string(None) for s in stmts)


def test_role_sql_quotes_names_and_passwords() -> None:
    text = _text(roles.role_sql("crmflow_capture", "it's", replication=True))
    assert "LOGIN REPLICATION" in text and "PASSWORD 'it''s'" in text
    assert "REVOKE CONNECT, TEMPORARY ON DATABASE \"crm_legacy\" FROM PUBLIC" in _text(
        roles.database_sql("crm_legacy", roles.CAPTURE_ROLE))
    pub = _text(roles.publication_sql("crmflow_pub", ["legacy.accounts", "legacy.sales"]))
    assert 'FOR TABLE "legacy"."accounts", "legacy"."sales"' in pub
    assert 'OWNER TO "crmflow_capture"' in pub
    assert 'AUTHORIZATION "crmflow_sink"' in _text(roles.target_sql())


def test_cli_prints_the_acls_for_a_prefix_and_refuses_apply_without_the_secure_stack(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from crmflow.cli.stack import app

    res = CliRunner().invoke(app, ["acls", "--topic-prefix", "acme.crm"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == len({(a.principal, a.resource, a.name) for a in pipeline_acls("acme.crm")})
    assert all(line.startswith("kafka-acls.sh ") for line in lines)
    assert any("User:crmflow_sink" in line and "'acme.crm.mapped.'" in line for line in lines)
    monkeypatch.setenv("CRMFLOW_STACK", "local")
    from crmflow.settings import stack_settings

    stack_settings.cache_clear()
    try:
        res = CliRunner().invoke(app, ["acls", "--apply"])
    finally:
        stack_settings.cache_clear()
    assert res.exit_code == 2
    assert "needs the secure local stack" in res.output
