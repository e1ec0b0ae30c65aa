"""Where a snapshot may resume: the highest contiguous acknowledged position, per (run, source).

Two parts:

- :class:`ContiguousTracker` – in memory. Every item read gets a sequence number in read order with the
  resume mark just after it. Kafka acknowledges deliveries per partition in order (idempotent producer,
  ``max.in.flight`` <= 5) but across partitions acks interleave, so the tracker advances its mark only
  over a prefix in which *every* item is done: produced and acknowledged, dead-lettered and
  acknowledged, or filtered out. A failed delivery is never done, so the mark stops before it.
- :class:`CheckpointStore` – on disk. One JSON file per (run, source) under a state directory,
  replaced atomically (write a temporary file, fsync, rename over, fsync the directory), so a crash
  leaves either the old or the new checkpoint, never a torn one.

Why a local file and not a compacted topic: the mark is a byte offset into a *local* file (or the last
key of a table read by this process), meaningful only next to that source; it is written by a single
process; it needs no topic to exist before the first record is sent; and an operator can read or delete
it with a text editor. The file also records a fingerprint of the source file (size and a hash of its
first 64 KiB), so resuming against a different file fails loudly instead of skipping records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from producers.exceptions import CheckpointError, SourceOpenError
from producers.readers.base import Mark, mark_from_json

log = logging.getLogger(__name__)

Outcome = Literal["produced", "rejected", "filtered"]
OUTCOMES: tuple[Outcome, ...] = ("produced", "rejected", "filtered")
FINGERPRINT_BYTES = 64 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class ContiguousTracker:
    """Tracks items from read to acknowledgement and yields the resume mark of the done prefix.

    Called from one thread only: the producer's delivery callbacks run inside ``poll``/``flush`` on the
    thread that reads, so no locking is needed.
    """

    def __init__(
        self,
        mark: Mark | None = None,
        counts: Mapping[str, int] | None = None,
        rules: Mapping[str, int] | None = None,
    ) -> None:
        self._pending: deque[tuple[int, Mark, Outcome, str | None]] = deque()
        self._done: set[int] = set()
        self._next_seq = 0
        self.mark = mark
        """Resume mark after the last item of the done prefix (None: nothing done yet)."""
        self.counts: dict[str, int] = {o: int((counts or {}).get(o, 0)) for o in OUTCOMES}
        """Items in the done prefix by outcome, including those of earlier runs passed in ``counts``."""
        self.rules: dict[str, int] = {str(r): int(n) for r, n in (rules or {}).items()}
        """Rejected items in the done prefix by rule, including earlier runs' passed in ``rules``."""

    def add(self, mark: Mark, outcome: Outcome, rule: str | None = None) -> int:
        """Register an item just read (``rule``: why it was rejected); returns its sequence number for
        :meth:`ack`."""
        seq = self._next_seq
        self._next_seq += 1
        self._pending.append((seq, mark, outcome, rule))
        return seq

    def add_done(self, mark: Mark, outcome: Outcome) -> None:
        """Register an item that needs no acknowledgement (filtered out)."""
        if not self._pending:
            self._next_seq += 1
            self.mark = mark
            self.counts[outcome] += 1
            return
        self.ack(self.add(mark, outcome))

    def _count(self, outcome: Outcome, rule: str | None) -> None:
        self.counts[outcome] += 1
        if rule is not None:
            self.rules[rule] = self.rules.get(rule, 0) + 1

    def ack(self, seq: int) -> None:
        """Mark item ``seq`` done and advance over the done prefix."""
        pending, done = self._pending, self._done
        if not pending or seq < pending[0][0]:
            return  # already past it (a duplicate acknowledgement)
        if seq != pending[0][0]:
            done.add(seq)
            return
        _, self.mark, outcome, rule = pending.popleft()
        self._count(outcome, rule)
        while pending and pending[0][0] in done:
            head, self.mark, outcome, rule = pending.popleft()
            done.discard(head)
            self._count(outcome, rule)

    @property
    def in_flight(self) -> int:
        """Items read but not yet in the done prefix."""
        return len(self._pending)


# ----------------------------------------------------------------------------------------------- store


@dataclass
class Checkpoint:
    """The durable state of one (run, source): resume ``mark``, whether the source was read to its end,
    the counts of the done prefix (by outcome, and rejected ones by rule), the fingerprint of the source
    file (None for tables), and the CSV dialect the file was read with (None: not a CSV file)."""

    run_id: str
    source: str
    mark: Mark | None = None
    complete: bool = False
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    fingerprint: dict[str, Any] | None = None
    updated_at: float = 0.0
    rejected_by_rule: dict[str, int] = field(default_factory=dict)
    dialect: dict[str, str] | None = None

    @property
    def read(self) -> int:
        """Items in the done prefix: every one was read, and produced, rejected or filtered."""
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "run_id": self.run_id,
            "source": self.source,
            "mark": self.mark.to_json() if self.mark else None,
            "complete": self.complete,
            "counts": self.counts,
            "fingerprint": self.fingerprint,
            "updated_at": self.updated_at,
            "rejected_by_rule": self.rejected_by_rule,
            "dialect": self.dialect,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        mark = data.get("mark")
        return cls(
            run_id=str(data["run_id"]),
            source=str(data["source"]),
            mark=mark_from_json(mark) if mark is not None else None,
            complete=bool(data.get("complete", False)),
            counts={o: int(data.get("counts", {}).get(o, 0)) for o in OUTCOMES},
            fingerprint=data.get("fingerprint"),
            updated_at=float(data.get("updated_at", 0.0)),
            rejected_by_rule={str(r): int(n) for r, n in (data.get("rejected_by_rule") or {}).items()},
            dialect=({str(k): str(v) for k, v in data["dialect"].items()} if data.get("dialect") else None),
        )


def file_fingerprint(path: Path, head_bytes: int = FINGERPRINT_BYTES) -> dict[str, Any]:
    """Size and SHA-256 of the first ``head_bytes``: cheap, and enough to notice a different file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(head_bytes)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise SourceOpenError(f"cannot open {path}: {exc.strerror}") from exc
    return {"size": size, "head_bytes": len(head), "head_sha256": hashlib.sha256(head).hexdigest()}


def check_fingerprint(checkpoint: Checkpoint, path: Path) -> None:
    """Refuse to resume into a file that is not the one the checkpoint was taken on.

    A file that only grew (same first bytes, larger size) is accepted: the records before the mark are
    unchanged.
    """
    old = checkpoint.fingerprint
    if old is None:
        return
    try:
        new = file_fingerprint(path, int(old["head_bytes"]))
        same = new["size"] >= int(old["size"]) and new["head_sha256"] == old["head_sha256"]
    except (KeyError, TypeError, ValueError):
        same = False
    if not same:
        raise CheckpointError(
            f"source {checkpoint.source}: {path.name} changed since run {checkpoint.run_id} was "
            "checkpointed; run again with --restart to read it from the beginning"
        )


class CheckpointStore:
    """Checkpoints as ``<state_dir>/<run_id>/<source>.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def path(self, run_id: str, source: str) -> Path:
        return self.state_dir / _SAFE.sub("_", run_id) / f"{_SAFE.sub('_', source)}.json"

    def run_dir(self, run_id: str) -> Path:
        return self.state_dir / _SAFE.sub("_", run_id)

    def keys_path(self, run_id: str, source: str) -> Path:
        """The source's key log (:class:`producers.keys.KeyLog`), next to its checkpoint."""
        return self.run_dir(run_id) / f"{_SAFE.sub('_', source)}.keys.jsonl"

    def load(self, run_id: str, source: str) -> Checkpoint | None:
        path = self.path(run_id, source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Checkpoint.from_json(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it or run with --restart"
            ) from exc

    def save(self, checkpoint: Checkpoint) -> None:
        checkpoint.updated_at = time.time()
        path = self.path(checkpoint.run_id, checkpoint.source)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = json.dumps(checkpoint.to_json(), indent=2, sort_keys=True).encode("utf-8")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete(self, run_id: str, source: str) -> None:
        self.path(run_id, source).unlink(missing_ok=True)
        self.keys_path(run_id, source).unlink(missing_ok=True)
