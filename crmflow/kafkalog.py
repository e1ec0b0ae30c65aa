"""librdkafka's own log lines, routed into Python logging at DEBUG.

Without a ``logger``, every confluent-kafka client prints librdkafka's lines straight to stderr: a broker
that is down yields hundreds of ``Connection refused`` lines and drowns the one line crmflow prints about
it. Every client crmflow creates merges :func:`client_logging` into its config; ``--verbose`` shows the
lines again (at DEBUG, under the ``crmflow.librdkafka`` logger).
"""

from __future__ import annotations

import logging
from typing import Any

_LOG = logging.getLogger("crmflow.librdkafka")


_SECRETS: set[str] = set()


def redact(*secrets: str) -> None:
    """Replace these strings by ``***`` in every librdkafka line from now on (the connection secrets: a
    ``debug=conf`` or a broker's error text must not carry one into the logs)."""
    _SECRETS.update(s for s in secrets if s)


def _scrub(line: str) -> str:
    for secret in _SECRETS:
        line = line.replace(secret, "***")
    return line


class _DebugLogger:
    """What confluent-kafka calls ``logger.log(level, fmt, *args)`` on; everything goes out at DEBUG."""

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if _LOG.isEnabledFor(logging.DEBUG):
            text = msg % args if args else msg
            _LOG.debug("%s", _scrub(text) if _SECRETS else text)


_INSTANCE = _DebugLogger()


def client_logging() -> dict[str, Any]:
    """Config entries that send a client's librdkafka log lines to the ``crmflow.librdkafka`` logger."""
    return {"logger": _INSTANCE}
