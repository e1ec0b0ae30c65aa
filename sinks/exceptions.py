"""Errors of the sink stage, marked transient or terminal by type.

The batching driver retries a write that raised a :class:`~crmflow.exceptions.TransientError` (with
backoff, committing nothing meanwhile) and gives up on anything else. A record the target refuses is not
an exception at all: ``Sink.write_batch`` reports it as a :class:`~sinks.base.Reject` and the rest of the
batch goes on. Messages name topics, partitions, offsets, entities and field names, never values.
"""

from __future__ import annotations

from crmflow.exceptions import CrmflowError, TerminalError, TransientError


class SinkError(CrmflowError):
    """Root of the errors raised by ``sinks``."""


class SinkTransientError(SinkError, TransientError):
    """The target is unreachable or asked us to come back later (connection lost, deadlock, timeout).

    ``retry_after`` is a hint in seconds when the target gave one (an HTTP 429 ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkTerminalError(SinkError, TerminalError):
    """The target cannot take writes until something changes (schema, credentials, configuration)."""


class RetriesExhaustedError(SinkTerminalError):
    """A transient failure outlasted the retry policy; nothing of the batch was committed."""

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(
            f"{what} still failing after {attempts} attempts ({type(last).__name__}: {last}); offsets were "
            "not committed, so a restart re-reads the batch"
        )
        self.attempts = attempts
        self.last = last


class FlushAbortedError(SinkError):
    """A stop was requested while a flush waited to retry; its records stay buffered, uncommitted."""


class MigrationError(SinkTerminalError):
    """The target schema cannot be migrated (an applied migration file changed, or a migration failed)."""
