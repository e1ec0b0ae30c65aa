"""Errors of the snapshot producer.

Rejected *records* (a malformed CSV line, bytes that are not UTF-8) are not errors: readers yield them as
:class:`~producers.readers.base.Rejected` items and the producer dead-letters them. The exceptions here
stop a whole source or run. Messages name the source, file and line, never a field value.
"""

from __future__ import annotations

from crmflow.exceptions import ConfigError, CrmflowError, TerminalError, TransientError


class ProducerError(CrmflowError):
    """Root of the errors raised by ``producers``."""


class SourceOpenError(ProducerError, TerminalError):
    """A source cannot be read: missing file, unreadable header, unknown key column or table, or the
    database refused the query (permissions)."""


class SourceUnavailableError(ProducerError, TransientError):
    """A database source could not be reached; retry when it is up."""


class CheckpointError(ProducerError, TerminalError):
    """A checkpoint file is unreadable, or it belongs to a different file than the one now configured.

    The fix is to run again with ``--restart`` (re-reads the source; the sink upserts, so re-sending
    is harmless) or with the original file back in place.
    """


class DeliveryFailedError(ProducerError, TransientError):
    """Kafka did not acknowledge a record after the producer's own retries (``delivery.timeout.ms``).

    The checkpoint stops before the first unacknowledged record, so running the same ``--run-id`` again
    resumes without a gap.
    """

    def __init__(self, source: str, failed: int, first_error: str) -> None:
        super().__init__(
            f"source {source}: {failed} record(s) were not acknowledged by Kafka (first error: "
            f"{first_error}); the checkpoint stops before them - run again with the same --run-id to resume"
        )
        self.source = source
        self.failed = failed
        self.first_error = first_error


class KafkaUnavailableError(ProducerError, TransientError):
    """Kafka could not be reached to list or create topics; retry when the cluster is up."""


class HeaderMismatchError(ProducerError, ConfigError):
    """A source's header (a file's first row, a table's columns) lacks a column the config maps.

    Raised before any record of any source is produced; the message names the file, the column and the
    config line of the field mapping that reads it.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
