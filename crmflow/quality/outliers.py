"""Outliers among amounts and dates, in one pass and bounded memory.

A uniform sample (:class:`~crmflow.quality.profile.Reservoir`) gives the quartiles; the ``keep`` smallest and
largest values are kept exactly (two heaps), with their source positions. At the end, the values beyond
Tukey's far-out fences (``Q1 - 3 IQR``, ``Q3 + 3 IQR``; of the logarithm for positive
amounts) among them are the outliers; when a heap is full of
outliers the count is a lower bound (``count_is_lower_bound``). Dates also count every value out of range
(before 1900 or in the future) exactly.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from datetime import date
from typing import Any, Final

from crmflow.quality.profile import Hits, Reservoir, iqr_fences

__all__ = ["Extremes"]

_KEEP: Final = 500


def _as_text(kind: str, value: float) -> str:
    return date.fromordinal(round(value)).isoformat() if kind == "date" else f"{value:,.2f}"


class Extremes:
    """Values of one field (amounts or dates as ordinals): sample, extremes, out-of-range dates."""

    def __init__(
        self, kind: str, keep: int = _KEEP, examples: int = 3, show: Callable[[float], str] | None = None
    ) -> None:
        """``show`` formats a value for an example (masked when the field is personal data); default: the
        value as text."""
        self.kind = kind
        self.show = show or (lambda v: _as_text(kind, v))
        self.keep = keep
        self.count = 0
        self.min: float | None = None
        self.max: float | None = None
        self.sample = Reservoir()
        self._low: list[tuple[float, int, str]] = []  # max-heap of the smallest (negated values)
        self._high: list[tuple[float, int, str]] = []  # min-heap of the largest
        self.out_of_range = Hits(examples)
        self.examples = examples

    def add(self, value: float, position: str, *, out_of_range: bool = False) -> None:
        self.count += 1
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        self.sample.add(value)
        if out_of_range:
            self.out_of_range.add(position, self.show(value) if self.out_of_range.wants_example else None)
        entry_low = (-value, self.count, position)
        entry_high = (value, self.count, position)
        if len(self._low) < self.keep:
            heapq.heappush(self._low, entry_low)
        elif -value > self._low[0][0]:
            heapq.heapreplace(self._low, entry_low)
        if len(self._high) < self.keep:
            heapq.heappush(self._high, entry_high)
        elif value > self._high[0][0]:
            heapq.heapreplace(self._high, entry_high)

    def fences(self) -> tuple[float, float] | None:
        """Tukey's far-out fences; amounts that are all positive are fenced on a log scale (money is skewed:
        on a linear scale every large order would be an outlier)."""
        sample = self.sample.sample
        if self.kind == "amount" and sample and min(sample) > 0:
            logs = iqr_fences([math.log10(v) for v in sample])
            return None if logs is None else (10 ** logs[0], 10 ** logs[1])
        return iqr_fences(sample)

    def to_json(self) -> dict[str, Any]:
        fences = self.fences()
        out: dict[str, Any] = {"kind": self.kind, "values": self.count,
                               "min": None if self.min is None else _as_text(self.kind, self.min),
                               "max": None if self.max is None else _as_text(self.kind, self.max)}  # fmt: skip
        if fences is None:
            out.update(low_fence=None, high_fence=None, outliers=0, count_is_lower_bound=False, examples=[])
        else:
            low, high = fences
            # A value can sit in both heaps when there are few values: count each record once.
            below = {(c, p, -v) for v, c, p in self._low if -v < low}
            above = {(c, p, v) for v, c, p in self._high if v > high}
            found = sorted(below | above)
            out.update(
                low_fence=_as_text(self.kind, low), high_fence=_as_text(self.kind, high), outliers=len(found),
                count_is_lower_bound=len(below) >= self.keep or len(above) >= self.keep,
                examples=[{"at": p, "value": self.show(v)} for _, p, v in found[: self.examples]],
            )  # fmt: skip
        if self.kind == "date":
            out["out_of_range"] = self.out_of_range.to_json()
        return out
