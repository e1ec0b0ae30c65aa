"""Errors of the deduplication stage (messages name ids and fields, never values: they may be PII)."""

from __future__ import annotations

from crmflow.exceptions import TerminalError
from processors.exceptions import ProcessorError


class DedupeError(ProcessorError):
    """Root of the errors raised by ``processors.dedupe``."""


class RecordWithoutId(DedupeError, TerminalError):  # noqa: N818 - names the record problem, like RecordRejected
    """The record has no external id (``customer_id`` / ``contact_id``): it cannot be clustered."""

    def __init__(self, entity: str, id_field: str, source_position: str | None) -> None:
        where = f" at {source_position}" if source_position else ""
        super().__init__(f"{entity} record{where} has no {id_field}; map the id before deduplication")
        self.entity = entity
        self.id_field = id_field
        self.source_position = source_position


class DedupeStateError(DedupeError, TerminalError):
    """The state is inconsistent (a record without its cluster, a cluster without its golden value)."""
