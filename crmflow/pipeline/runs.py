"""Where each migration run keeps its record: ``<home>/runs/<run id>/``.

``run.json`` holds the run's state (running, reconciled, not_reconciled, failed, interrupted), its
config, its target (no password), when it started and ended, how many times it was started (a resume
is a start of the same run id), its throughput timeline, and at the end its summary; ``summary.txt`` is
the same summary as a table, ``report.html`` the same with charts (:mod:`crmflow.pipeline.run_report`).
The stages' logs live beside them. ``crmflow runs`` reads this directory, nothing else.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmflow.exceptions import CrmflowError, InfrastructureError, RunInterruptedError
from crmflow.settings import stack_settings

RUNNING, RECONCILED, NOT_RECONCILED, FAILED, INTERRUPTED = (
    "running", "reconciled", "not_reconciled", "failed", "interrupted"
)


@dataclass
class RunRecord:
    run_id: str
    config: str
    target: str
    status: str = RUNNING
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    starts: int = 1
    error: str | None = None
    summary: dict[str, Any] | None = None
    timeline: dict[str, Any] | None = None  # crmflow.pipeline.timeline: counts each second, for the report

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "config": self.config, "target": self.target, "status": self.status,
                "started_at": self.started_at, "ended_at": self.ended_at, "starts": self.starts,
                "error": self.error, "summary": self.summary, "timeline": self.timeline}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        return cls(
            run_id=str(data["run_id"]), config=str(data.get("config", "")), target=str(data.get("target", "")),
            status=str(data.get("status", RUNNING)), started_at=float(data.get("started_at") or 0.0),
            ended_at=data.get("ended_at"), starts=int(data.get("starts") or 1), error=data.get("error"),
            summary=data.get("summary"), timeline=data.get("timeline"),
        )


class RunStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or stack_settings().home / "runs"

    def dir(self, run_id: str) -> Path:
        return self.root / run_id

    def exists(self, run_id: str) -> bool:
        return (self.dir(run_id) / "run.json").exists()

    def load(self, run_id: str) -> RunRecord:
        path = self.dir(run_id) / "run.json"
        try:
            return RunRecord.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CrmflowError(f"no run {run_id!r} under {self.root} (see `crmflow runs`)") from None

    def list(self) -> list[RunRecord]:
        out = []
        for path in sorted(self.root.glob("*/run.json")):
            try:
                out.append(RunRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(out, key=lambda r: r.started_at)

    def begin(self, run_id: str, config: Path, target: str, *, resumed: bool) -> RunRecord:
        if resumed:
            record = self.load(run_id)
            record.starts += 1
            record.status, record.error, record.ended_at, record.config, record.target = (
                RUNNING, None, None, str(config), target)
        else:
            record = RunRecord(run_id, str(config), target)
        self.save(record)
        return record

    def finish(self, record: RunRecord, summary: dict[str, Any], table: str | None = None) -> None:
        record.summary = summary
        record.status = RECONCILED if summary.get("reconciled") else NOT_RECONCILED
        record.ended_at = time.time()
        self.save(record)
        if table is not None:
            (self.dir(record.run_id) / "summary.txt").write_text(table)

    def fail(self, record: RunRecord, reason: BaseException | None) -> None:
        record.status = INTERRUPTED if isinstance(reason, RunInterruptedError) else FAILED
        record.error = None if reason is None else (
            f"{reason.part}: {reason.detail}" if isinstance(reason, InfrastructureError) else str(reason))
        record.ended_at = time.time()
        self.save(record)

    def save(self, record: RunRecord) -> None:
        d = self.dir(record.run_id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "run.json.tmp"
        tmp.write_text(json.dumps(record.to_json(), indent=2))
        os.replace(tmp, d / "run.json")
