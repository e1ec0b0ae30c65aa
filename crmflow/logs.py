"""Logging set-up for the CLI. Library code only calls ``logging.getLogger(__name__)``."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from crmflow.pii import PiiRedactingFilter

# Structured fields a log call may pass through ``extra=``; they are rendered, never anything else.
STRUCTURED_FIELDS = ("stage", "entity", "topic", "partition", "offset", "run_id", "part")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in STRUCTURED_FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = [f"{k}={getattr(record, k)}" for k in STRUCTURED_FIELDS if hasattr(record, k)]
        return f"{base} {' '.join(fields)}" if fields else base


#: What :func:`configure_logging` last set up: (level, json_lines); None until it is called.
_CONFIGURED: tuple[int, bool] | None = None


def cli_flags() -> list[str]:
    """The global CLI options that give a child process this process's logging (``--verbose``,
    ``--log-json``), so the stages a command starts log the way it was asked to."""
    if _CONFIGURED is None:
        return []
    level, json_lines = _CONFIGURED
    return [*(["--verbose"] if level <= logging.DEBUG else []), *(["--log-json"] if json_lines else [])]


def configure_logging(level: int = logging.INFO, *, json_lines: bool = False) -> None:
    """Send logs to stderr (stdout stays clean for --json output)."""
    global _CONFIGURED
    _CONFIGURED = (level, json_lines)
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Defence in depth: our own messages carry no PII, but third-party libraries' might.
    handler.addFilter(PiiRedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # librdkafka/aiokafka chatter stays at WARNING unless asked for.
    for noisy in ("aiokafka", "kafka", "faust", "mode", "httpx", "httpx2", "testcontainers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
