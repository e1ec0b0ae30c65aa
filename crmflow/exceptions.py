"""The project's root exception and the transient/terminal markers retry code decides by.

Each package adds its own ``exceptions.py`` with subclasses of :class:`CrmflowError`. Retry code asks
``isinstance(err, TransientError)``; it never parses a message.
"""

from __future__ import annotations


class CrmflowError(Exception):
    """Root of every error crmflow raises on purpose."""


class TransientError(CrmflowError):
    """Retrying the same operation later may succeed (a broker or database not ready yet)."""


class TerminalError(CrmflowError):
    """Retrying will not help: the input or the configuration must change first."""


class ConfigError(TerminalError):
    """A configuration value is missing or wrong; the message names the file and key path."""


class StackError(CrmflowError):
    """The local stack could not be started, reached or stopped."""


class MissingToolError(StackError, TerminalError):
    """A program the stack needs (java, mvn, initdb...) is not installed."""

    def __init__(self, tool: str, hint: str) -> None:
        super().__init__(f"{tool} not found on PATH; {hint}")
        self.tool = tool
        self.hint = hint


class NotReadyError(StackError, TransientError):
    """A stack part did not become ready in time; carries the tail of its log."""

    def __init__(self, part: str, timeout_s: float, log_tail: str) -> None:
        super().__init__(
            f"{part} was not ready after {timeout_s:.0f}s. Last lines of its log:\n{log_tail}"
        )
        self.part = part
        self.log_tail = log_tail


class InfrastructureError(TransientError):
    """A part crmflow depends on (Kafka, the registry, PostgreSQL) is unreachable and did not come back in
    time. ``part`` names it, ``fix`` says what a person should do; the CLI prints both on one line."""

    def __init__(self, part: str, detail: str, fix: str) -> None:
        super().__init__(f"{part} is unavailable ({detail}); {fix}")
        self.part = part
        self.detail = detail
        self.fix = fix


class RunInterruptedError(CrmflowError):
    """The user (SIGINT) or the system (SIGTERM) asked the command to stop."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name
