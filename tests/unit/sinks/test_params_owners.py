"""SinkParams from a config (target schema, writing system, no DSN fallback), the schema check and the
PII-free ownership refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmflow.config import load_config
from crmflow.exceptions import ConfigError
from sinks.exceptions import MigrationError
from sinks.params import SinkParams
from sinks.postgres.migrate import in_schema, load_migrations
from sinks.postgres.refusals import ownership_refusal
from sinks.postgres.tables import TABLES, tables_for
from tests import demo_config

pytestmark = pytest.mark.unit

DEMO = demo_config.DEMO


def _config(tmp_path: Path, **target: object) -> Path:
    return demo_config.demo_config(tmp_path, target=target)


def test_params_carry_the_schema_and_the_writing_system(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, schema="crm_eu"))
    params = SinkParams.from_config(cfg, kafka="b", registry="r", target_dsn="dbname=t")
    assert (params.target_schema, params.system, params.target_dsn) == ("crm_eu", "demo", "dbname=t")
    assert SinkParams.from_config(load_config(DEMO), kafka="b", registry="r",
                                  target_dsn="d").target_schema == "crm"


def test_params_without_dsn_env_need_the_resolved_dsn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(_config(tmp_path))
    assert not cfg.target or not cfg.target.dsn_env
    monkeypatch.setenv("CRMFLOW_POSTGRES_DSN", "dbname=somewhere_else")
    with pytest.raises(ConfigError, match=r"target\.dsn_env is not set"):
        SinkParams.from_config(cfg, kafka="b", registry="r")


def test_params_take_the_dsn_from_the_named_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(_config(tmp_path, dsn_env="UNIT_TARGET_DSN"))
    monkeypatch.delenv("UNIT_TARGET_DSN", raising=False)
    with pytest.raises(ConfigError, match="UNIT_TARGET_DSN"):
        SinkParams.from_config(cfg, kafka="b", registry="r")
    monkeypatch.setenv("UNIT_TARGET_DSN", "dbname=named")
    target = SinkParams.from_config(cfg, kafka="b", registry="r").target_dsn
    assert not isinstance(target, str) and (target.dbname, target.setting) == ("named", "UNIT_TARGET_DSN")


def test_migrations_and_statements_name_the_target_schema() -> None:
    sql = "\n".join(in_schema(m.sql, "crm_eu") for m in load_migrations())
    assert "crm." not in sql and "create schema if not exists crm_eu;" in sql
    table = tables_for("crm_eu")["sale"]
    for statement in (table.merge_sql, table.load_parked_sql):
        assert "crm." not in statement and "crm_eu." in statement
    assert TABLES["sale"].schema == "crm" and "crm.sales" in TABLES["sale"].merge_sql
    for bad in ("Crm", "crm x", 'crm"; drop', "", "9crm"):
        with pytest.raises(MigrationError, match="target schema"):
            tables_for(bad)


def test_ownership_refusals_name_ids_and_systems_only() -> None:
    sale = TABLES["sale"]
    row = ownership_refusal(sale, {"seq": 3, "id": "S0000001", "parent": "C0000001", "kind": "row",
                                   "owner": "demo", "owner_source": "sales"}, "crm_eu")
    assert (row.rule, row.field) == ("owned_by_other_source", "sale_id")
    assert "S0000001" in row.error and "system demo (source sales)" in row.error and "crm_eu" in row.error
    parent = ownership_refusal(sale, {"seq": 3, "id": "S0000009", "parent": "C0000001", "kind": "parent",
                                      "owner": "demo", "owner_source": "customers"}, "crm_eu")
    assert (parent.rule, parent.field) == ("owned_by_other_source", "customer_id")
    assert "its account C0000001 belongs to system demo" in parent.error
