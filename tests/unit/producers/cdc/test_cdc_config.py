"""The ``cdc`` section: composed into the migration config, validated with the file's key path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmflow.config import ConfigLoadError, load_config

pytestmark = pytest.mark.unit

BASE = """\
run: {name: t}
sources:
  customers: {kind: table, dsn_env: LEGACY_DSN, table: legacy.customers, entity: account, key: id}
entities:
  account:
    fields:
      - {source: id, target: customer_id}
"""


def load(tmp_path: Path, cdc: str) -> object:
    path = tmp_path / "crmflow.yaml"
    path.write_text(BASE + cdc)
    return load_config(path)


def test_the_cdc_section_is_optional_and_has_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").cdc is None
    cfg = load(tmp_path, "cdc:\n  dsn_env: LEGACY_DSN\n  tables: [legacy.customers, legacy.tickets]\n")
    cdc = cfg.cdc
    assert cdc.tables == ("legacy.customers", "legacy.tickets")
    assert (cdc.slot, cdc.publication, cdc.feedback_interval_s) == ("crmflow_cdc", "crmflow_cdc", 1.0)


@pytest.mark.parametrize(
    ("cdc", "message", "line"),
    [
        ("cdc:\n  dsn_env: LEGACY_DSN\n  tables: [customers]\n", "expected schema.table", 10),
        ("cdc:\n  dsn_env: LEGACY_DSN\n  tables: [a.b, a.b]\n", "listed twice", 10),
        ("cdc:\n  dsn_env: LEGACY_DSN\n  tables: [a.b]\n  slot: Bad-Slot\n", "cdc.slot", 11),
        ("cdc:\n  dsn_env: LEGACY_DSN\n  tables: [a.b]\n  slott: x\n", "did you mean 'slot'", 11),
        ("cdc:\n  tables: [a.b]\n", "cdc.dsn_env: required key is missing", 8),
    ],
)
def test_mistakes_name_the_key_and_line(tmp_path: Path, cdc: str, message: str, line: int) -> None:
    with pytest.raises(ConfigLoadError) as err:
        load(tmp_path, cdc)
    assert message in str(err.value) and f"crmflow.yaml:{line}:" in str(err.value), str(err.value)


def test_the_processor_group_reads_the_change_topics_of_captured_table_sources(tmp_path: Path) -> None:
    """Drain waits and cutover status measure the processor's lag on the change topics too, not only raw ones."""
    from crmflow.pipeline.migrate import processor_topics

    cfg = load(tmp_path, "cdc:\n  dsn_env: LEGACY_DSN\n  tables: [legacy.customers, legacy.tickets]\n")
    # legacy.tickets is captured but no source reads it: the processor has nothing to map it to
    assert processor_topics(cfg) == ["crmflow.raw.customers", "crmflow.cdc.legacy.customers"]  # type: ignore[arg-type]
    assert processor_topics(load(tmp_path, "")) == ["crmflow.raw.customers"]  # type: ignore[arg-type]
