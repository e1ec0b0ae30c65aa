"""A guard around librdkafka's blocking transactional calls, which can outlive their own timeout.

After a broker restart, ``send_offsets_to_transaction`` can block for good although it was given a timeout
(librdkafka issues #5456 and #5511: the coordinator request's timeout is never checked, and a cached
coordinator whose broker thread is gone is never looked up again). A blocked C call cannot be interrupted
from Python, and a signal handler never runs while it blocks, so the only way out is the process's own
exit. The guard arms a deadline before each call (its timeout plus a grace period); when the call is still
running at the deadline, the process exits with :data:`STALLED_EXIT_CODE` after logging why.

Nothing is lost by that exit: the open transaction is never committed (the broker aborts it, or the
restarted worker's ``init_transactions`` with the same transactional id fences it), so the batch is read
again from the last committed offsets. ``crmflow migrate`` restarts a stage that exits this way; a deployed
service relies on its supervisor's restart policy (Kubernetes, systemd).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

STALLED_EXIT_CODE = 75
"""``EX_TEMPFAIL``: a Kafka client call stalled past its timeout; restarting the stage fixes it."""


class CallWatchdog:
    """Exits the process when a guarded call runs past its deadline. One daemon thread per watchdog, started
    with the first guarded call; ``on_stall`` replaces the exit (tests)."""

    def __init__(self, name: str, grace_s: float = 15.0,
                 on_stall: Callable[[str, float], None] | None = None) -> None:
        self.name = name
        self.grace_s = grace_s
        self._on_stall = on_stall or _exit_stalled
        self._lock = threading.Lock()
        self._call: tuple[str, float, float] | None = None  # what, started (monotonic), deadline
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, what: str, timeout_s: float) -> Iterator[None]:
        """Run the body with a deadline of ``timeout_s`` + the grace period."""
        now = time.monotonic()
        with self._lock:
            self._call = (what, now, now + timeout_s + self.grace_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
                self._thread.start()
        self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._call = None

    def _watch(self) -> None:
        while True:
            with self._lock:
                call = self._call
            if call is None:
                self._wake.wait()
                self._wake.clear()
                continue
            what, started, deadline = call
            left = deadline - time.monotonic()
            if left > 0:
                time.sleep(min(left, 1.0))
                continue
            with self._lock:
                still = self._call is call
            if still:
                self._on_stall(what, time.monotonic() - started)
                return


def _exit_stalled(what: str, blocked_s: float) -> None:
    log.error("%s has blocked for %.0fs, past its timeout (a librdkafka stall after a broker restart); exiting "
              "with %d so the stage is restarted: its open transaction is never committed, the batch is read "
              "again", what, blocked_s, STALLED_EXIT_CODE)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(STALLED_EXIT_CODE)
