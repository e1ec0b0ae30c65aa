"""Which database errors are a record's fault, and how to tell the dead-letter topic about them.

A refused record is named by SQLSTATE, constraint and column only: the server's message and detail may
quote the row's values, which can be personal data, so they are never used.
"""

from __future__ import annotations

from dataclasses import dataclass

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
