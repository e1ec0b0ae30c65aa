"""Pairwise quality of a clustering against a ground truth, and why pairs were missed or wrongly merged.

Pairwise metrics count record pairs: a predicted pair is two records in one predicted cluster, a true
pair two records of one true person. Precision = correct predicted pairs / predicted pairs, recall =
correct predicted pairs / true pairs. Cluster sizes are small, so pairs are enumerated per cluster.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any


@dataclass(frozen=True, slots=True)
class PairwiseScores:
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    true_clusters: int
    predicted_clusters: int

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct_pairs / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 5),
            "recall": round(self.recall, 5),
            "f1": round(self.f1, 5),
            "true_pairs": self.true_pairs,
            "predicted_pairs": self.predicted_pairs,
            "correct_pairs": self.correct_pairs,
            "true_clusters": self.true_clusters,
            "predicted_clusters": self.predicted_clusters,
        }


def _groups(assignment: Mapping[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for record_id, cluster in assignment.items():
        groups[cluster].append(record_id)
    return groups


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def pairwise_scores(predicted: Mapping[str, str], truth: Mapping[str, str]) -> PairwiseScores:
    """Scores of ``predicted`` (record id → cluster) against ``truth`` over the records of ``truth``."""
    cells: Counter[tuple[str, str]] = Counter()
    pred_sizes: Counter[str] = Counter()
    true_sizes: Counter[str] = Counter()
    for record_id, true_cluster in truth.items():
        pred = predicted.get(record_id, f"\0{record_id}")  # not clustered: a singleton
        cells[(pred, true_cluster)] += 1
        pred_sizes[pred] += 1
        true_sizes[true_cluster] += 1
    return PairwiseScores(
        true_pairs=sum(_pairs(n) for n in true_sizes.values()),
        predicted_pairs=sum(_pairs(n) for n in pred_sizes.values()),
        correct_pairs=sum(_pairs(n) for n in cells.values()),
        true_clusters=len(true_sizes),
        predicted_clusters=len(pred_sizes),
    )


def _initial(first: str | None) -> bool:
    return bool(first) and len(first.rstrip(".")) == 1  # type: ignore[union-attr]


def variation(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """How two clean account records of (supposedly) one person differ: name variation and shared links.

    E.g. ``initial/email``, ``swap/none+birth_date_missing``: name variation (``same``, ``initial``,
    ``middle``, ``swap``, ``first_differs``, ``last_differs``, ``both_differ``) / what links them
    (``email``, ``phone``, ``none``), plus ``+birth_date_missing`` when either birth date is null.
    """
    af, al, bf, bl = a.get("first_name"), a.get("last_name"), b.get("first_name"), b.get("last_name")
    if (af, al) == (bf, bl):
        name = "same"
    elif (af, al) == (bl, bf):
        name = "swap"
    elif al == bl and (_initial(af) or _initial(bf)):
        name = "initial"
    elif al == bl and af and bf and af.split()[0] == bf.split()[0]:
        name = "middle"
    elif al == bl:
        name = "first_differs"
    elif af == bf:
        name = "last_differs"
    else:
        name = "both_differ"
    if a.get("email") and a.get("email") == b.get("email"):
        link = "email"
    elif a.get("phone") and a.get("phone") == b.get("phone"):
        link = "phone"
    else:
        link = "none"
    missing = "+birth_date_missing" if not (a.get("birth_date") and b.get("birth_date")) else ""
    return f"{name}/{link}{missing}"


def error_analysis(
    predicted: Mapping[str, str], truth: Mapping[str, str], records: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, int]]:
    """Missed true pairs and wrongly merged pairs, counted by :func:`variation`."""
    missed: Counter[str] = Counter()
    for members in _groups(truth).values():
        for x, y in combinations(sorted(members), 2):
            if predicted.get(x) is None or predicted.get(x) != predicted.get(y):
                missed[variation(records[x], records[y])] += 1
    wrong: Counter[str] = Counter()
    for members in _groups({k: v for k, v in predicted.items() if k in truth}).values():
        for x, y in combinations(sorted(members), 2):
            if truth[x] != truth[y]:
                wrong[variation(records[x], records[y])] += 1
    return {"missed": dict(missed.most_common()), "wrongly_merged": dict(wrong.most_common())}
