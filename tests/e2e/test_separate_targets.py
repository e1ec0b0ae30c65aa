"""Two migrations with overlapping ids into one target database (issue 14, item 13).

In the same schema, the rows belong to the system that wrote them first: the second migration's writes
of those ids are refused to its dead-letter topic (rule ``owned_by_other_source``) and the first's rows
stay exactly as they were. In two schemas (``target.schema``), both land and neither touches the other.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.dlq import read_dead_letters
from crmflow.stack import Endpoints
from tests.e2e.conftest import Dataset, Run, _dataset, _run_maker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """300 generated customers (two migrations per test)."""
    return _dataset(tmp_path_factory.mktemp("demo-tiny"), 300, 13)



@pytest.fixture(scope="module")
def first_migration(tiny_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory,
                    session_pg_dsn_factory: Callable[..., str]) -> tuple[Run, dict[str, Any]]:
    """The first system's migration, once for the module: each test works on a copy of its target."""
    run = _run_maker(tmp_path_factory.mktemp("first-system"), session_pg_dsn_factory)(tiny_dataset)
    return run, migrate(run)


TABLES = ("accounts", "contacts", "sales", "cases", "xref")


def rows(dsn: str, schema: str = "crm") -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every CRM table, full rows (updated_at, run_id, account_id included)."""
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"select * from {schema}.{t} order by 1, 2, 3".encode()).fetchall() for t in TABLES}


def second_config(first: Run, second: Run, schema: str | None = None) -> Run:
    """``second``'s config (own run name, topics, data) writing into ``first``'s target database."""
    raw = yaml.safe_load(second.config.read_text())
    raw["target"]["dsn_env"] = yaml.safe_load(first.config.read_text())["target"]["dsn_env"]
    if schema is not None:
        raw["target"]["schema"] = schema
    second.config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return Run(second.config, first.env | {"PYTHONUNBUFFERED": "1"}, first.target_dsn, second.prefix, second.name)


def migrate(run: Run) -> dict[str, Any]:
    res = run.cli("migrate", "-c", str(run.config), "--json")
    assert res.returncode in (0, 1), res.stderr[-3000:]
    summary: dict[str, Any] = json.loads(res.stdout)
    summary["_rc"] = res.returncode
    return summary


def test_same_schema_refuses_the_other_systems_ids(
    tiny_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, first_migration: tuple[Run, dict[str, Any]],
    target_copy: Callable[[Run], Run],
) -> None:
    first, s1 = target_copy(first_migration[0]), first_migration[1]
    assert s1["_rc"] == 0 and s1["reconciled"]
    before = rows(first.target_dsn)

    second = second_config(first, run_factory(tiny_dataset, suffix="-2"))
    s2 = migrate(second)
    assert rows(first.target_dsn) == before, "the second system changed the first one's rows"
    # Every record of the second run that landed in the first run is refused as the other system's.
    letters = [lt.record for lt in read_dead_letters(endpoints.kafka, registry_client,
                                                     f"{second.prefix}.dlq") if lt.record["run_id"] == s2["run_id"]]
    owned = Counter(r["entity"] for r in letters if r["rule"] == "owned_by_other_source")
    for entity, c in s1["entities"].items():
        landed = c["inserted"] + c["updated"] + c["unchanged"]
        assert owned[entity] == landed, (entity, owned, c)
        assert s2["entities"][entity]["inserted"] + s2["entities"][entity]["updated"] == 0
    for r in letters:
        if r["rule"] == "owned_by_other_source":
            assert first.name in r["error"] and r["stage"] == "sink", r["error"]
    assert s2["reconciled"] is True and s2["_rc"] == 0  # read = landed + rejected + filtered still holds


def test_different_schemas_both_land_and_neither_changes_the_other(
    tiny_dataset: Dataset, run_factory: Callable[..., Run], first_migration: tuple[Run, dict[str, Any]],
    target_copy: Callable[[Run], Run],
) -> None:
    first, s1 = target_copy(first_migration[0]), first_migration[1]
    assert s1["_rc"] == 0
    before = rows(first.target_dsn)

    second = second_config(first, run_factory(tiny_dataset, suffix="-2"), schema="crm_second")
    s2 = migrate(second)
    assert s2["_rc"] == 0 and s2["reconciled"], s2
    assert rows(first.target_dsn) == before
    other = rows(first.target_dsn, "crm_second")
    for table in ("accounts", "contacts", "sales", "cases"):
        assert sorted(r[1] for r in other[table]) == sorted(r[1] for r in before[table]), table  # same ids
    for entity, c in s2["entities"].items():
        assert c["inserted"] == s1["entities"][entity]["inserted"], entity
    with psycopg.connect(first.target_dsn) as conn:
        assert conn.execute("select distinct system from crm_second.accounts").fetchall() == [(second.name,)]
        assert conn.execute("select distinct system from crm.accounts").fetchall() == [(first.name,)]
