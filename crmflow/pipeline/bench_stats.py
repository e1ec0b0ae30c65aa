"""The figures of ``crmflow bench --cdc``, computed exactly from per-change times (pure functions, unit-tested).

- :func:`landings`: each change's landing in the target from the sink's commit log
  (:data:`sinks.telemetry.COMMIT_LOG_ENV`): the commit time of the first target transaction that wrote it; a child
  the sink parked lands with the first later transaction that wrote its parent account.
- :func:`percentiles`: nearest-rank percentiles of the exact latencies (no histogram buckets).
- :func:`lag_growth`: the latency of the run's last tenth of changes (by source commit time) against its first
  tenth.
- :func:`stage_split`: each change's latency cut at the Kafka timestamps of its change event and of its mapped
  record: where the time goes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

#: Lag grows when the last tenth's median latency is more than this many times the first tenth's ...
GROWTH_RATIO: Final = 2.0
#: ... and more than this many seconds above it (a few milliseconds of noise on a tiny latency is no growth).
GROWTH_MIN_S: Final = 0.25


@dataclass(frozen=True, slots=True)
class Landing:
    """One change record in the target: source commit and target commit (Unix seconds)."""

    entity: str
    id: str
    lsn: int
    deleted: bool
    source_s: float
    landed_s: float
    parked: bool = False  # held by the sink until its parent arrived (not in the latency metric)

    @property
    def latency_s(self) -> float:
        return max(self.landed_s - self.source_s, 0.0)


def landings(lines: Iterable[str]) -> tuple[dict[tuple[str, str, int], Landing], int, int]:
    """The landed changes of a commit log, keyed by (entity, id, source LSN) — a change re-delivered lands once,
    at its first commit; also how many change records the target refused and how many are still parked."""
    landed: dict[tuple[str, str, int], Landing] = {}
    waiting: dict[str, list[list[Any]]] = {}  # parent account id → parked rows
    refused: set[tuple[str, str, int]] = set()
    superseded: dict[tuple[str, str], float] = {}  # (entity, id) → commit time of its delete
    for line in lines:
        if not line.strip():
            continue
        batch = json.loads(line)
        t = float(batch["t"])
        for entity, id_, lsn, ms, state, parent, deleted in batch["r"]:
            key = (entity, str(id_), int(lsn or 0))
            if state == "p":
                waiting.setdefault(str(parent), []).append([entity, id_, lsn, ms, deleted])
                continue
            if state == "x":
                refused.add(key)
                continue
            landed.setdefault(key, Landing(entity, str(id_), int(lsn or 0), bool(deleted), ms / 1000, t))
            if deleted:  # a parked child deleted before its parent came is dropped: its change is superseded
                superseded[(entity, str(id_))] = t
            if entity == "account" and not deleted:
                for c_entity, c_id, c_lsn, c_ms, c_deleted in waiting.pop(str(id_), []):
                    c_key = (c_entity, str(c_id), int(c_lsn or 0))
                    landed.setdefault(c_key, Landing(c_entity, str(c_id), int(c_lsn or 0), bool(c_deleted),
                                                     c_ms / 1000, t, parked=True))
    still_parked = 0
    for rows in waiting.values():
        for c_entity, c_id, c_lsn, c_ms, c_deleted in rows:
            c_key = (c_entity, str(c_id), int(c_lsn or 0))
            gone = superseded.get((c_entity, str(c_id)))
            if c_key in landed:
                continue
            if gone is not None:  # lands with the delete that dropped it
                landed[c_key] = Landing(c_entity, str(c_id), int(c_lsn or 0), bool(c_deleted), c_ms / 1000, gone,
                                        parked=True)
            else:
                still_parked += 1
    return landed, len(refused - landed.keys()), still_parked


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0 < p ≤ 100) of ascending ``sorted_values``."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def percentiles(latencies: Iterable[float]) -> dict[str, float]:
    """p50, p95, p99 and max of ``latencies`` (seconds), rounded to the millisecond... of a microsecond."""
    values = sorted(latencies)
    if not values:
        return {}
    return {"p50_s": round(percentile(values, 50), 4), "p95_s": round(percentile(values, 95), 4),
            "p99_s": round(percentile(values, 99), 4), "max_s": round(values[-1], 4)}


def lag_growth(changes: Sequence[Landing]) -> dict[str, Any]:
    """Median latency of the last tenth of ``changes`` (by source commit) against the first tenth's; ``growing``
    when it is more than :data:`GROWTH_RATIO` times and :data:`GROWTH_MIN_S` seconds above it."""
    ordered = sorted(changes, key=lambda c: (c.source_s, c.landed_s))
    tenth = len(ordered) // 10
    if tenth == 0:
        return {"first_tenth_p50_s": None, "last_tenth_p50_s": None, "ratio": None, "growing": False}
    first = percentile(sorted(c.latency_s for c in ordered[:tenth]), 50)
    last = percentile(sorted(c.latency_s for c in ordered[-tenth:]), 50)
    ratio = last / first if first > 0 else math.inf if last > 0 else 1.0
    return {"first_tenth_p50_s": round(first, 4), "last_tenth_p50_s": round(last, 4),
            "ratio": round(ratio, 2) if math.isfinite(ratio) else None,
            "growing": ratio > GROWTH_RATIO and last - first > GROWTH_MIN_S}


Stamp = tuple[str, str, int]  # (entity, id, source commit ms): one change, as the sink's commit log and Kafka see it


def stage_split(changes: Iterable[Landing], event_ms: Mapping[Stamp, int],
                mapped_ms: Mapping[Stamp, int]) -> dict[str, Any]:  # fmt: skip
    """Percentiles of the three legs of each change's latency: source commit → its change event produced (cdc),
    → its mapped record produced (process), → the target commit (sink). ``event_ms`` and ``mapped_ms``: the Kafka
    timestamps (ms) of the change event and of the mapped record of each change. A change found in only one of
    them (a parked child's or a superseded one's) is left out; ``joined`` says how many were cut."""
    legs: tuple[list[float], list[float], list[float]] = ([], [], [])
    for c in changes:
        stamp = (c.entity, c.id, round(c.source_s * 1000))
        event, mapped = event_ms.get(stamp), mapped_ms.get(stamp)
        if event is None or mapped is None or c.parked:
            continue
        legs[0].append(max(event / 1000 - c.source_s, 0.0))
        legs[1].append(max((mapped - event) / 1000, 0.0))
        legs[2].append(max(c.landed_s - mapped / 1000, 0.0))
    return {"joined": len(legs[0]), "commit_to_event": percentiles(legs[0]),
            "event_to_mapped": percentiles(legs[1]), "mapped_to_target": percentiles(legs[2])}
