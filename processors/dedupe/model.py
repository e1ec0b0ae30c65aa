"""The Fellegi-Sunter model: m and u probabilities per comparison level, and the match prior.

``m[l]`` is P(level l | the pair is one entity), ``u[l]`` P(level l | two entities). A level adds
``log2(m[l] / u[l])`` bits to a pair's match weight; the pair matches when the prior log-odds plus its
weight reach the log-odds of ``DedupeConfig.match_probability``. The prior is the share of matches
among blocked pairs, which EM estimates along with ``m`` (:mod:`processors.dedupe.train`).

A model file is versioned JSON written by the trainer and named by ``DedupeConfig.model_file``::

    {"format": "crmflow-dedupe-model", "version": 1, "entity": "account", "prior": 0.04,
     "comparisons": [{"field": "first_name", "comparator": "name", "levels": [0.92, 0.85],
                      "m": [...], "u": [...]}, ...], "trained_on": {...}}

Without a file, hand weights (``m``/``u`` in a comparison) or generic priors apply.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from processors.dedupe.comparators import DEFAULT_LEVELS, level_count
from processors.dedupe.config import ComparisonSpec, DedupeConfig
from processors.dedupe.exceptions import DedupeError

FORMAT: Final = "crmflow-dedupe-model"
VERSION: Final = 1
DEFAULT_PRIOR: Final = 0.05
_FLOOR: Final = 1e-6


class ModelFileError(DedupeError):
    """The model file is missing, not a crmflow dedupe model, or does not fit the config's comparisons."""


def generic_mu(spec: ComparisonSpec) -> tuple[list[float], list[float]]:
    """Priors for a comparison nobody estimated: agreement likely for a match, rare for a non-match."""
    n = level_count(spec)
    middle = n - 2
    m = [0.85] + [0.1 / middle] * middle + [0.05] if middle else [0.9, 0.1]
    u_agree = 1e-4 if spec.identifier else 0.01
    u = [u_agree] + [0.02] * middle + [1.0 - u_agree - 0.02 * middle]
    return m, u


@dataclass(frozen=True, slots=True)
class ComparisonModel:
    spec: ComparisonSpec
    m: tuple[float, ...]
    u: tuple[float, ...]
    weights: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        w = [math.log2(max(m, _FLOOR) / max(u, _FLOOR)) for m, u in zip(self.m, self.u, strict=True)]
        object.__setattr__(self, "weights", tuple(w))

    def as_dict(self) -> dict[str, Any]:
        levels = list(self.spec.levels or DEFAULT_LEVELS[self.spec.comparator])
        return {"field": self.spec.field, "comparator": self.spec.comparator, "levels": levels,
                "identifier": self.spec.identifier, "m": [round(x, 6) for x in self.m],
                "u": [round(x, 8) for x in self.u]}  # fmt: skip


@dataclass(frozen=True, slots=True)
class MatchModel:
    comparisons: tuple[ComparisonModel, ...]
    prior: float = DEFAULT_PRIOR
    trained_on: dict[str, Any] = field(default_factory=dict)

    @property
    def prior_bits(self) -> float:
        p = min(max(self.prior, _FLOOR), 1 - _FLOOR)
        return math.log2(p / (1 - p))

    def to_json(self, entity: str) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "entity": entity, "prior": round(self.prior, 8),
                           "comparisons": [c.as_dict() for c in self.comparisons], "trained_on": self.trained_on},
                          indent=2)  # fmt: skip


def _key(spec: ComparisonSpec) -> tuple[str, str, tuple[float, ...]]:
    return spec.field, spec.comparator, tuple(float(x) for x in (spec.levels or DEFAULT_LEVELS[spec.comparator]))


def load_model(config: DedupeConfig) -> MatchModel:
    """The model of ``config``: its model file's m/u where the file has the comparison, else hand or generic."""
    specs = config.effective_comparisons()
    stored: dict[tuple[str, str, tuple[float, ...]], dict[str, Any]] = {}
    prior, trained_on = DEFAULT_PRIOR, {}
    if config.model_file is not None:
        path = Path(config.model_file)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"dedupe model file {path}: cannot read it ({type(exc).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ModelFileError(f"dedupe model file {path}: not a {FORMAT} version {VERSION} file")
        if data.get("entity", config.entity) != config.entity:
            raise ModelFileError(f"dedupe model file {path}: trained for {data.get('entity')}, not {config.entity}")
        prior = float(data.get("prior", DEFAULT_PRIOR))
        trained_on = dict(data.get("trained_on") or {})
        for c in data.get("comparisons", []):
            stored[(c["field"], c["comparator"], tuple(float(x) for x in c["levels"]))] = c
    out = []
    for spec in specs:
        n = level_count(spec)
        if (c := stored.get(_key(spec))) is not None:
            m, u = list(c["m"]), list(c["u"])
        elif spec.m is not None and spec.u is not None:
            m, u = list(spec.m), list(spec.u)
        else:
            m, u = generic_mu(spec)
        if len(m) != n or len(u) != n:
            raise ModelFileError(f"dedupe comparison {spec.field}: {n} levels, but {len(m)} m and {len(u)} u values")
        out.append(ComparisonModel(spec, tuple(m), tuple(u)))
    return MatchModel(tuple(out), prior, trained_on)
