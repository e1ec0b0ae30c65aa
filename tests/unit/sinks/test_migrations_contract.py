"""The hand-written SQL migrations against the entity contract (crmflow.entities).

The migrations stay hand-written; this test replays their ``create table`` and ``alter table ... add/drop
column`` statements, without a database, and holds each entity table's final columns to the contract's
fields: a new contract field without its migration (or a migration column the contract does not have)
fails here, naming the column.
"""

from __future__ import annotations

import re

import pytest

from crmflow.entities import (
    ENTITY_NAMES,
    METADATA_FIELDS,
    STORED_DEDUPE_FIELDS,
    business_fields,
    column_type,
    id_field,
)
from sinks.postgres.migrate import load_migrations
from sinks.postgres.tables import TABLES

pytestmark = pytest.mark.unit

#: Columns the target adds to every entity table besides the contract's fields: its own id, the owning
#: system (migration 0004) and the row's timestamps; children also hold their account's id.
#: From migration 0008: the change's source position (the stored CHANGE_FIELDS) and a soft delete's time.
TARGET_COLUMNS = frozenset({"id", "system", "created_at", "updated_at", "deleted_at"})
STORED_CHANGE_FIELDS = {"source_lsn": "int8"}
CHILD_COLUMNS = frozenset({"account_id"})

_CREATE = re.compile(r"create table (?:if not exists )?crm\.(\w+)\s*\((.*?)\n\);", re.IGNORECASE | re.DOTALL)
_ADD = re.compile(r"alter table crm\.(\w+) add column (?:if not exists )?(\w+)\s+([^,;]+)", re.IGNORECASE)
_DROP = re.compile(r"alter table crm\.(\w+) drop column (?:if exists )?(\w+)", re.IGNORECASE)
_CONSTRAINT = ("primary key", "unique", "check", "constraint", "foreign key")
_TYPES = {"numeric(18, 2)": "numeric", "bigint": "int8"}


def _type(declaration: str) -> str:
    words = declaration.strip().lower()
    for sql, ours in _TYPES.items():
        if words.startswith(sql):
            return ours
    return words.split()[0]


def final_columns() -> dict[str, dict[str, str]]:
    """table → column → SQL type, after every migration in version order."""
    tables: dict[str, dict[str, str]] = {}
    for migration in load_migrations():
        sql = re.sub(r"--[^\n]*", "", migration.sql)
        events = [(m.start(), "create", m) for m in _CREATE.finditer(sql)]
        events += [(m.start(), "add", m) for m in _ADD.finditer(sql)]
        events += [(m.start(), "drop", m) for m in _DROP.finditer(sql)]
        for _, kind, m in sorted(events, key=lambda e: e[0]):
            if kind == "create":
                columns: dict[str, str] = {}
                for line in m[2].split("\n"):
                    line = line.strip().rstrip(",")
                    if line and not line.lower().startswith(_CONSTRAINT):
                        name, _, rest = line.partition(" ")
                        columns[name] = _type(rest)
                tables[m[1]] = columns
            elif kind == "add":
                tables[m[1]][m[2]] = _type(m[3])
            else:
                tables[m[1]].pop(m[2])
    return tables


@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_each_entity_table_has_exactly_the_contract_fields(entity: str) -> None:
    table = TABLES[entity]
    columns = final_columns()[table.table]
    own = id_field(entity)
    expected = {"external_id": "text"} | STORED_CHANGE_FIELDS | {
        f: column_type(entity, f) for f in (*business_fields(entity), *METADATA_FIELDS) if f != own
    } | dict.fromkeys(STORED_DEDUPE_FIELDS.get(entity, ()), "text")
    extra = TARGET_COLUMNS | (CHILD_COLUMNS if table.is_child else frozenset())
    contract_columns = {name: sql for name, sql in columns.items() if name not in extra}
    assert sorted(set(expected) - set(contract_columns)) == [], f"crm.{table.table}: columns missing from the SQL"
    assert sorted(set(contract_columns) - set(expected)) == [], f"crm.{table.table}: columns the contract lacks"
    assert contract_columns == expected, f"crm.{table.table}: column types differ from the contract"


@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_the_sink_writes_every_contract_field(entity: str) -> None:
    stored = {c.name for c in TABLES[entity].columns if c.stored}
    own = id_field(entity)
    assert stored == {"external_id", *METADATA_FIELDS, *STORED_CHANGE_FIELDS, *STORED_DEDUPE_FIELDS.get(entity, ()),
                      *(f for f in business_fields(entity) if f != own)}


def test_the_parser_sees_the_identifiers_of_migration_0006() -> None:
    accounts = final_columns()["accounts"]
    assert {"national_id", "tax_id", "legacy_account_number", "company_registration_number"} <= set(accounts)


def test_migration_0009_stores_the_golden_contact_id() -> None:
    tables = final_columns()
    assert tables["contacts"]["contact_golden_id"] == "text"
    assert tables["golden_merges"]["entity"] == "text", "the merge log names the entity of each absorbed id"
