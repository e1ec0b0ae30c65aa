"""What a snapshot run reports: counts per source, throughput, and a progress hook for front ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class SourceStats:
    """Counts of one source over the whole run: this call and the checkpointed part of earlier calls with
    the same run id (a resumed run reports what the whole run read, so it reconciles).

    ``read`` = ``produced`` + ``rejected`` + ``filtered`` + records not acknowledged (``failed`` or still
    in flight when the run stopped). ``produced`` counts records Kafka acknowledged; ``rejected`` lines sent
    to the dead-letter topic (malformed, or a ``duplicate_key``); ``filtered`` records outside the segment.
    ``read_before`` is the part of ``read`` that earlier calls checkpointed (0 for a fresh run).
    """

    read: int = 0
    produced: int = 0
    rejected: int = 0
    filtered: int = 0
    failed: int = 0
    rejected_by_rule: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    """The source was read to its end and every record acknowledged (in this or an earlier run)."""
    skipped: bool = False
    """The checkpoint said the source was already complete, so nothing was read."""
    resumed_from: str | None = None
    """``file:line`` or ``table:row`` this run started reading at, when it resumed from a checkpoint."""
    elapsed_s: float = 0.0
    read_before: int = 0
    """Records of ``read`` that an earlier call of the run checkpointed (read again by none since)."""
    run_counts: dict[str, int] = field(default_factory=dict)
    """Done records of the whole run by outcome (produced, rejected, filtered), also those an earlier
    invocation of the same run id checkpointed: what a resumed run reconciles against."""

    @property
    def read_now(self) -> int:
        """Records this call read."""
        return self.read - self.read_before

    @property
    def run_read(self) -> int:
        """Records of the whole run that are done (acknowledged, dead-lettered or filtered)."""
        return sum(self.run_counts.values()) if self.run_counts else self.read

    @property
    def run_filtered(self) -> int:
        return self.run_counts.get("filtered", self.filtered) if self.run_counts else self.filtered

    def summary(self) -> dict[str, int]:
        return {"read": self.read, "produced": self.produced, "rejected": self.rejected, "filtered": self.filtered}


@dataclass
class SnapshotStats:
    """The result of :func:`producers.snapshot.run_snapshot`."""

    run_id: str
    sources: dict[str, SourceStats] = field(default_factory=dict)
    elapsed_s: float = 0.0
    stopped: bool = False
    """The run ended early because ``stop_event`` was set (Ctrl-C); run the same run id again to go on."""

    @property
    def records_read(self) -> int:
        return sum(s.read for s in self.sources.values())

    @property
    def records_per_second(self) -> float:
        """Records read by this call (and handed to Kafka or the dead-letter topic) per second of wall time."""
        now = sum(s.read_now for s in self.sources.values())
        return now / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.sources.values())

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` output: ``{"run_id", "sources": {name: {read, produced, rejected, filtered}},
        "records_per_second"}``."""
        return {
            "run_id": self.run_id,
            "sources": {name: s.summary() for name, s in self.sources.items()},
            "records_per_second": round(self.records_per_second, 1),
        }


class Progress(Protocol):
    """Told about each source's progress, in the reader's unit (bytes of a file, rows of a table).

    ``start`` is called once per source before reading, ``update`` after each batch, ``finish`` at the end
    of the source (also when it stopped early or failed).
    """

    def start(self, source: str, *, total: int | None, completed: int, unit: str) -> None: ...

    def update(self, source: str, completed: int) -> None: ...

    def finish(self, source: str) -> None: ...


class NullProgress:
    """Reports nothing (library use, tests, a stderr that is not a terminal)."""

    def start(self, source: str, *, total: int | None, completed: int, unit: str) -> None:
        return None

    def update(self, source: str, completed: int) -> None:
        return None

    def finish(self, source: str) -> None:
        return None
