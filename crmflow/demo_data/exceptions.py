"""Errors of the demo-data generator and of the legacy-database loader."""

from __future__ import annotations

from collections.abc import Iterable

from crmflow.exceptions import CrmflowError, TerminalError, TransientError


class DemoDataError(CrmflowError):
    """Root of the errors raised by :mod:`crmflow.demo_data`."""


class UnknownRateError(DemoDataError, TerminalError):
    """A ``--rate`` override names a quality problem the generator does not know."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        self.valid = tuple(sorted(valid))
        super().__init__(f"unknown quality rate {name!r}; valid names: {', '.join(self.valid)}")


class InvalidRateError(DemoDataError, TerminalError):
    """A ``--rate`` override is not ``name=value`` or its value is out of range."""


class LegacyLoadError(DemoDataError, TransientError):
    """Loading the legacy database failed; the transaction was rolled back, re-running is safe."""
