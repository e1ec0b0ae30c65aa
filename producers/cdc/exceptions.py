"""Errors of the CDC producer. Messages name the slot, publication, table or LSN, and what to do; never a value."""

from __future__ import annotations

from crmflow.exceptions import ConfigError, TerminalError, TransientError
from producers.exceptions import ProducerError


class CdcError(ProducerError):
    """Root of the errors raised by ``producers.cdc``."""


class CdcConfigError(CdcError, ConfigError):
    """The ``cdc`` section names something the legacy database does not have (a table, a primary key)."""


class SlotError(CdcError, TerminalError):
    """The replication slot or publication is missing, invalidated or not ours: a person must decide.

    Never repaired silently: a new slot would start from *now* and every change since the old slot's position
    would be lost without a trace.
    """


class SlotBusyError(CdcError, TransientError):
    """Another process streams from the slot right now (a previous instance still running)."""


class CdcDeliveryError(CdcError, TransientError):
    """Kafka did not acknowledge an event; nothing past it was confirmed to PostgreSQL. Run again to resume."""


class SourceGoneError(CdcError, TransientError):
    """The legacy database (or the replication connection) is unreachable."""
