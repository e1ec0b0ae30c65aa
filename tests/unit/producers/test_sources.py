"""Segment filter and turning the migration config's sources into source specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmflow.config import load_config
from crmflow.exceptions import ConfigError
from producers.sources import SegmentFilter, source_specs

pytestmark = pytest.mark.unit


def test_segment_filter_uses_the_whitespace_rule_and_is_case_sensitive_on_values() -> None:
    eu = SegmentFilter.of("Region", ["EU", "UK"])
    assert eu({"Region": "EU"})
    assert eu({"Region": "  EU "})
    assert eu({"region": "UK"})  # field name case-insensitive
    assert not eu({"Region": "eu"})
    assert not eu({"Region": "NA"})
    assert not eu({"Region": None})
    assert not eu({"Region": ""})
    assert not eu({"Country": "DE"})
    assert str(eu) == "Region in [EU, UK]"


CONFIG = """
run: {name: demo}
kafka: {topic_prefix: t.demo, partitions: 2}
sources:
  customers: {kind: csv, path: data/customers.csv, entity: account, key: Customer_ID,
              segment: {field: Region, in: [EU]}}
  contacts: {kind: table, dsn_env: TEST_LEGACY_DSN, table: legacy.contacts, entity: contact, key: contact_id}
  sales: {kind: jsonl, path: /abs/sales.jsonl, entity: sale, key: Sale_ID}
entities:
  account:
    fields:
      - {source: Customer_ID, target: customer_id}
"""


def test_specs_from_a_loaded_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_path = tmp_path / "crmflow.yaml"
    cfg_path.write_text(CONFIG)
    cfg = load_config(cfg_path)
    monkeypatch.setenv("TEST_LEGACY_DSN", "postgresql://u@h/db")
    customers, contacts, sales = source_specs(cfg)
    assert (customers.name, customers.kind, customers.entity) == ("customers", "csv", "account")
    assert customers.key == "Customer_ID"
    assert customers.path == tmp_path.resolve() / "data" / "customers.csv"
    assert customers.legacy_entity == "customers"
    assert customers.segment == SegmentFilter.of("Region", ["EU"])
    assert contacts.dsn is not None and contacts.dsn.describe() == "postgresql://u@h:5432/db"
    assert (contacts.kind, contacts.table, contacts.dsn.setting, contacts.legacy_entity) == (
        "table", "legacy.contacts", "TEST_LEGACY_DSN", "contacts",
    )
    assert "postgresql" not in repr(contacts)
    assert sales.path == Path("/abs/sales.jsonl") and sales.segment is None
    assert [s.name for s in source_specs(cfg, ["sales"])] == ["sales"]
    with pytest.raises(ConfigError, match="unknown source"):
        source_specs(cfg, ["nope"])


def test_unset_dsn_variable_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_path = tmp_path / "crmflow.yaml"
    cfg_path.write_text(CONFIG)
    monkeypatch.delenv("TEST_LEGACY_DSN", raising=False)
    with pytest.raises(ConfigError, match="TEST_LEGACY_DSN"):
        source_specs(load_config(cfg_path), ["contacts"])
