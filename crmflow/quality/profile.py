"""Streaming profiles of source values in bounded memory: the building blocks of ``crmflow assess``.

- :class:`DistinctCounter`: exact up to :data:`EXACT_DISTINCT` values, then a HyperLogLog sketch
  (2^14 registers, about 1% standard error); the profile says which.
- :class:`TopValues`: counts of the most frequent values; past :data:`TOP_CAPACITY` distinct values the
  rarest are dropped now and then, so the counts of values that were dropped and came back are low
  (the profile says ``approximate``).
- :class:`Reservoir`: a uniform sample (Algorithm R, seeded) for the quartiles of amounts and dates.
- :class:`FieldProfile`: null and blank rates, distinct count, top values of one field.
- :class:`Hits`: how often a rule fired, with the first few examples (masked value, source file:line).

Nothing here keeps a value in the clear when the field is personal data: the caller passes a mask.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "EXACT_DISTINCT", "TOP_CAPACITY", "DistinctCounter", "FieldProfile", "Hits", "Reservoir", "TopValues",
    "iqr_fences",
]  # fmt: skip

EXACT_DISTINCT: Final = 50_000
TOP_CAPACITY: Final = 2_000
_HLL_P: Final = 14
_HLL_M: Final = 1 << _HLL_P
_MASK64: Final = (1 << 64) - 1


def _hash64(value: str) -> int:
    # Python's string hash: fast, and stable within one process, which is all a count needs.
    return (hash(value) * 0x9E3779B97F4A7C15) & _MASK64


class DistinctCounter:
    """Distinct values: an exact set of hashes until it holds :data:`EXACT_DISTINCT`, then HyperLogLog."""

    def __init__(self) -> None:
        self._exact: set[int] | None = set()
        self._registers: bytearray | None = None

    @property
    def approximate(self) -> bool:
        return self._exact is None

    def add(self, value: str) -> None:
        h = _hash64(value)
        if self._exact is not None:
            self._exact.add(h)
            if len(self._exact) > EXACT_DISTINCT:
                self._registers = bytearray(_HLL_M)
                for old in self._exact:
                    self._hll(old)
                self._exact = None
            return
        self._hll(h)

    def _hll(self, h: int) -> None:
        registers = self._registers
        assert registers is not None
        index = h >> (64 - _HLL_P)
        rest = (h << _HLL_P) & _MASK64
        rank = 64 - _HLL_P + 1 if rest == 0 else 65 - rest.bit_length()
        if rank > registers[index]:
            registers[index] = rank

    def count(self) -> int:
        if self._exact is not None:
            return len(self._exact)
        registers = self._registers
        assert registers is not None
        alpha = 0.7213 / (1 + 1.079 / _HLL_M)
        estimate = alpha * _HLL_M * _HLL_M / sum(2.0**-r for r in registers)
        zeros = registers.count(0)
        if estimate <= 2.5 * _HLL_M and zeros:
            estimate = _HLL_M * math.log(_HLL_M / zeros)  # linear counting for small cardinalities
        return round(estimate)


class TopValues:
    """The most frequent values, in at most ``2 * capacity`` counters."""

    def __init__(self, capacity: int = TOP_CAPACITY) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.approximate = False

    def add(self, value: str) -> None:
        counts = self.counts
        counts[value] = counts.get(value, 0) + 1
        if len(counts) > 2 * self.capacity:
            keep = sorted(counts.items(), key=lambda kv: -kv[1])[: self.capacity]
            self.counts = dict(keep)
            self.approximate = True

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class Reservoir:
    """A uniform sample of at most ``size`` numbers (seeded: the same input gives the same sample)."""

    def __init__(self, size: int = 10_000, seed: int = 11) -> None:
        self.size = size
        self.seen = 0
        self.sample: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.sample) < self.size:
            self.sample.append(value)
            return
        j = self._rng.randrange(self.seen)
        if j < self.size:
            self.sample[j] = value


def _quantile(ordered: list[float], q: float) -> float:
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def iqr_fences(sample: list[float], k: float = 3.0) -> tuple[float, float] | None:
    """Tukey's fences ``Q1 - k*IQR`` and ``Q3 + k*IQR`` (k=3: "far out"); None for fewer than 8 values."""
    if len(sample) < 8:
        return None
    ordered = sorted(sample)
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    iqr = q3 - q1
    return q1 - k * iqr, q3 + k * iqr


@dataclass
class Hits:
    """How many times something happened, and the first ``keep`` examples (already masked)."""

    keep: int = 3
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def wants_example(self) -> bool:
        """Whether the next :meth:`add` keeps its example (callers skip masking a value nobody sees)."""
        return len(self.examples) < self.keep

    def add(self, position: str, value: str | None = None, **extra: Any) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            example: dict[str, Any] = {"at": position}
            if value is not None:
                example["value"] = value
            example.update(extra)
            self.examples.append(example)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "examples": list(self.examples)}


Mask = Callable[[str], str]


class FieldProfile:
    """One source field: rows seen, nulls (absent or SQL NULL), blanks (empty or only whitespace), distinct
    values and the most frequent ones. ``mask`` (None: not personal data) masks what the profile shows."""

    def __init__(self, mask: Mask | None = None) -> None:
        self.mask = mask
        self.rows = 0
        self.nulls = 0
        self.blanks = 0
        self.distinct = DistinctCounter()
        self.top = TopValues()

    def add(self, value: str | None) -> None:
        self.rows += 1
        if value is None:
            self.nulls += 1
            return
        if not value.strip():
            self.blanks += 1
            return
        self.distinct.add(value)
        self.top.add(value)

    def to_json(self, top: int = 10) -> dict[str, Any]:
        rows = self.rows or 1
        mask = self.mask
        values = [{"value": mask(v) if mask else v, "count": n} for v, n in self.top.top(top)]
        return {
            "rows": self.rows,
            "nulls": self.nulls,
            "blanks": self.blanks,
            "null_rate": round(self.nulls / rows, 6),
            "blank_rate": round(self.blanks / rows, 6),
            "distinct": self.distinct.count(),
            "distinct_approximate": self.distinct.approximate,
            "pii": mask is not None,
            "top_values": values,
            "top_values_approximate": self.top.approximate,
        }
