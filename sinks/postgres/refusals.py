"""Which database errors are a record's fault, and how to tell the dead-letter topic about them.

A refused record is named by SQLSTATE, constraint and column only: the server's message and detail may
quote the row's values, which can be personal data, so they are never used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from sinks.postgres.tables import EntityTable

# SQLSTATE classes of errors caused by one record's values: data exception, integrity constraint
# violation, program limit exceeded (an index row too large).
_REFUSAL_CLASSES = ("22", "23", "54")


@dataclass(frozen=True)
class Refusal:
    """Why the database refused one record: the dead letter's rule, field and error."""

    rule: str
    field: str | None
    error: str


def is_refusal(exc: psycopg.Error) -> bool:
    """True when the error is about the values of the rows written, not the connection or the SQL."""
    return (exc.sqlstate or "")[:2] in _REFUSAL_CLASSES


def refusal(exc: psycopg.Error, table: EntityTable) -> Refusal:
    """Rule, field and a PII-free message for a refused record: named from the SQLSTATE, constraint and
    column only (the server's own message and detail may quote the row's values)."""
    sqlstate = exc.sqlstate or ""
    diag = exc.diag
    constraint = diag.constraint_name
    column = diag.column_name
    if column is None and constraint:
        prefix, suffix = f"{table.table}_", "_check"
        if constraint.startswith(prefix) and constraint.endswith(suffix):
            column = constraint[len(prefix) : -len(suffix)]
    name = type(exc).__name__
    if sqlstate.startswith("23"):
        what = f"constraint {constraint}" if constraint else f"column {column}" if column else "a constraint"
        return Refusal(
            "constraint",
            table.field_of(column),
            f"{table.entity} refused by the target database: {name} on {what} (SQLSTATE {sqlstate})",
        )
    return Refusal(
        "invalid_value",
        table.field_of(column),
        f"{table.entity} has a value the target database cannot store: {name} (SQLSTATE {sqlstate})",
    )


OWNED_BY_OTHER_SOURCE = "owned_by_other_source"


def ownership_refusal(table: EntityTable, owned: Mapping[str, Any], system: str | None) -> Refusal:
    """Why a record was not written: what it would have written belongs to another source system.

    ``owned`` is one entry of the refused list a merge statement returns: ``id`` (the record's id),
    ``parent`` (a child's account id), ``kind`` (``row``/``xref``: the record's own row or cross-reference
    is the other system's; ``parent``: its account exists only as the other system's; ``parked``: the
    other system's record with that id is waiting for its account), ``owner`` and ``owner_source``.
    Names ids, systems and sources only."""
    owner = str(owned.get("owner"))
    source = owned.get("owner_source")
    by = f"system {owner}" + (f" (source {source})" if source else "")
    writer = f"system {system}" if system else "a writer without a system"
    key = owned.get("id")
    kind = owned.get("kind")
    if kind == "parent":
        return Refusal(
            OWNED_BY_OTHER_SOURCE,
            table.parent_field,
            f"{table.entity} {key}: its account {owned.get('parent')} belongs to {by}; {writer} may not attach "
            "to it, so the record was not written",
        )
    what = "a parked record" if kind == "parked" else "the cross-reference" if kind == "xref" else "the row"
    return Refusal(
        OWNED_BY_OTHER_SOURCE,
        table.id_field,
        f"{table.entity} {key}: {what} with this {table.id_field} is owned by {by}; refused a write from "
        f"{writer}, the existing row is unchanged",
    )
