"""Where every command writes: the config's variable when named (unset is an error), else the stack's."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmflow.config import load_config
from crmflow.exceptions import ConfigError
from crmflow.pipeline.targets import redact_dsn, resolve_target
from crmflow.stack import Endpoints

pytestmark = pytest.mark.unit

EP = Endpoints.plain("k:9092", "http://r", "postgresql://crmflow:s3cret-pw@db.example:5432/postgres")


def _config(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "crmflow.yaml"
    path.write_text(
        "run: {name: t}\n"
        "sources: {customers: {kind: csv, path: c.csv, entity: account, key: Customer_ID}}\n"
        "entities: {account: {fields: [{source: Customer_ID, target: customer_id}, "
        "{source: Name, target: full_name}]}}\n" + target
    )
    return path


def test_a_named_variable_that_is_unset_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIT_PROD_CRM_DSN", raising=False)
    cfg = load_config(_config(tmp_path, "target: {dsn_env: UNIT_PROD_CRM_DSN}\n"))
    with pytest.raises(ConfigError, match="UNIT_PROD_CRM_DSN"):
        resolve_target(cfg, EP)  # never the stack's database instead


def test_a_named_variable_gives_its_dsn_and_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_PROD_CRM_DSN", "postgresql://u:pw@prod:5433/crm")
    cfg = load_config(_config(tmp_path, "target: {dsn_env: UNIT_PROD_CRM_DSN, schema: crm_eu}\n"))
    target = resolve_target(cfg, EP)
    assert (target.dsn, target.schema) == ("postgresql://u:pw@prod:5433/crm", "crm_eu")
    assert target.describe().startswith("postgresql://u@prod:5433/crm (schema crm_eu")
    assert "pw" not in target.describe() and "pw" not in repr(target)


def test_without_a_variable_the_stack_database_is_used_and_said(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "target: {kind: postgres}\n"))
    target = resolve_target(cfg, EP)
    assert "dbname=crm_target" in target.dsn and target.schema == "crm"
    assert "stack" in target.describe() and "s3cret" not in target.describe()
    with pytest.raises(ConfigError, match="dsn_env"):
        resolve_target(cfg, None)


def test_a_schema_must_be_a_plain_identifier(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schema"):
        load_config(_config(tmp_path, "target: {schema: 'crm; drop table x'}\n"))


def test_redaction_never_echoes_a_password_or_garbage() -> None:
    assert redact_dsn("host=h port=1 user=u password=pw dbname=d") == "postgresql://u@h:1/d"
    assert redact_dsn("not a dsn = = =") == "<unparseable DSN>"
