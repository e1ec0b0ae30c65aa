"""Which LSN may be confirmed to PostgreSQL: only the end of a transaction whose every event Kafka acknowledged.

The stream registers each transaction (:meth:`AckTracker.begin`), each event produced in it
(:meth:`AckTracker.sent`, returning the delivery callback), and the transaction's commit end LSN
(:meth:`AckTracker.commit`). :meth:`AckTracker.confirmable` is the end LSN of the longest prefix of transactions
that are committed and fully acknowledged, in commit order; a later transaction acknowledged first waits for the
earlier ones. A failed delivery stops the prefix at that transaction for good (:attr:`AckTracker.failure`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AckTracker"]


@dataclass
class _Txn:
    pending: int = 0
    end_lsn: int | None = None
    commit_ms: int = 0  # the transaction's commit time in the legacy database (lag in seconds)
    failed: str | None = None


class AckTracker:
    def __init__(self, confirmed_lsn: int = 0) -> None:
        self._txns: deque[_Txn] = deque()
        self._confirmed = confirmed_lsn
        self.failure: str | None = None

    def begin(self, commit_ms: int = 0) -> _Txn:
        txn = _Txn(commit_ms=commit_ms)
        self._txns.append(txn)
        return txn

    def sent(self, txn: _Txn) -> Callable[[Any, Any], None]:
        """Count one produced event of ``txn``; the returned callback is its ``on_delivery``."""
        txn.pending += 1

        def delivered(err: Any, msg: Any) -> None:
            txn.pending -= 1
            if err is not None:
                txn.failed = txn.failed or str(err)
                self.failure = self.failure or str(err)

        return delivered

    def commit(self, txn: _Txn, end_lsn: int) -> None:
        txn.end_lsn = end_lsn

    @property
    def in_flight(self) -> int:
        """Transactions begun and not yet confirmable (open, or with events Kafka has not acknowledged)."""
        return len(self._txns)

    def oldest_pending_ms(self) -> int | None:
        """Commit time of the oldest transaction received and not yet confirmable; None when none is."""
        self.confirmable()
        return self._txns[0].commit_ms if self._txns else None

    def advance_idle(self, lsn: int) -> None:
        """Confirm up to ``lsn`` when nothing is in flight: the server's position after every message it sent
        was handled (the keepalive's WAL end). The heartbeat of an idle publication; ignored while a transaction
        is open or unacknowledged."""
        if not self._txns and lsn > self._confirmed:
            self._confirmed = lsn

    def confirmable(self) -> int:
        """The highest LSN every event before which Kafka acknowledged (never decreases)."""
        while self._txns:
            head = self._txns[0]
            if head.end_lsn is None or head.pending or head.failed:
                break
            self._confirmed = max(self._confirmed, head.end_lsn)
            self._txns.popleft()
        return self._confirmed
