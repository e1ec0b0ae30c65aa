"""Where a benchmark's CPU went: the cores each process (or process tree) used on average over a stretch of time.

A process tree counts its live descendants and the ones it already reaped (``children_user``/``children_system``),
so PostgreSQL's backends are counted whether they lived through the stretch or came and went within it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

__all__ = ["CpuMeter", "cpu_seconds"]


def cpu_seconds(pid: int, *, tree: bool = False) -> float | None:
    """User + system CPU seconds of ``pid`` so far (with ``tree``: and of its descendants); None if it is gone."""
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        total = times.user + times.system
        if tree:
            total += times.children_user + times.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # it may exit while being read
                    t = child.cpu_times()
                    total += t.user + t.system
        return total
    except psutil.Error:
        return None


@dataclass
class CpuMeter:
    """``parts``: name → (pid, whole tree?). :meth:`start`, then :meth:`cores`: the average cores each part used
    since, over the wall time since (a part that exited or was restarted in between is left out)."""

    parts: Mapping[str, tuple[int, bool]]
    _start: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: s for name, (pid, tree) in self.parts.items()
                       if (s := cpu_seconds(pid, tree=tree)) is not None}  # fmt: skip

    def cores(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        out: dict[str, float] = {}
        for name, (pid, tree) in self.parts.items():
            now = cpu_seconds(pid, tree=tree)
            if now is None or name not in self._start or wall <= 0:
                continue
            out[name] = round(max(now - self._start[name], 0.0) / wall, 2)
        out["total"] = round(sum(out.values()), 2)
        return out
