"""Estimate the Fellegi-Sunter weights from the data itself, without labels, and write a model file.

    python -m crmflow.evaluation.dedupe_train --out model.json [--demo-customers 20000 | --febrl 3 | --jsonl FILE]

As splink and recordlinkage do:

- **u** (P(level | two entities)) from random pairs of records: almost every random pair is two people;
- **m** (P(level | one entity)) and the **prior** (the share of matches) by expectation-maximisation over
  the pairs the blocking passes produce (a two-class mixture; the non-match class gets its own u during
  EM, since blocked non-matches agree more than random pairs). Pairs are counted per distinct level
  pattern, so an iteration costs the number of patterns, not of pairs.

The config (``--config`` crmflow.yaml's ``dedupe:`` section, or the defaults with
``scoring: fellegi_sunter``) says which comparisons and blocking passes to use; the model file it writes is
what ``dedupe.model_file`` names. Records are clean ``account`` dicts, as the mapper produces them.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from processors.dedupe.blocking import BlockKeyer
from processors.dedupe.config import DedupeConfig
from processors.dedupe.deduper import Deduper
from processors.dedupe.features import Features
from processors.dedupe.model import ComparisonModel, MatchModel, generic_mu
from processors.dedupe.scoring import Scorer

Pattern = tuple[int | None, ...]
_SMOOTH = 0.5


def blocked_pairs(feats: Sequence[Features], config: DedupeConfig) -> set[tuple[int, int]]:
    """Index pairs sharing a block key, blocks capped at ``max_block_size`` members as in the stream."""
    keyer = BlockKeyer(config.model_copy(update={"hash_block_keys": False}))
    blocks: dict[str, list[int]] = {}
    for i, f in enumerate(feats):
        for key in keyer.raw_keys(f):
            members = blocks.setdefault(key, [])
            if len(members) < config.max_block_size:
                members.append(i)
    pairs: set[tuple[int, int]] = set()
    for members in blocks.values():
        for x, i in enumerate(members):
            for j in members[x + 1 :]:
                pairs.add((i, j) if i < j else (j, i))
    return pairs


def _frequencies(patterns: Iterable[tuple[Pattern, float]], sizes: Sequence[int]) -> list[list[float]]:
    """Per comparison, smoothed level frequencies of the weighted patterns (missing levels skipped)."""
    counts = [[_SMOOTH] * n for n in sizes]
    for pattern, weight in patterns:
        for c, level in enumerate(pattern):
            if level is not None:
                counts[c][level] += weight
    return [[x / sum(row) for x in row] for row in counts]


def estimate(feats: Sequence[Features], config: DedupeConfig, *, random_pairs: int = 50_000,
             iterations: int = 60, seed: int = 0) -> MatchModel:  # fmt: skip
    """m, u and the prior of ``config``'s comparisons, estimated on ``feats`` (see the module docs)."""
    fs = config.model_copy(update={"scoring": "fellegi_sunter", "model_file": None})
    scorer = Scorer(fs)
    specs = fs.effective_comparisons()
    assert scorer.model is not None
    sizes = [len(c.m) for c in scorer.model.comparisons]
    n = len(feats)
    rng = random.Random(seed)
    sample = Counter(scorer.levels(feats[i], feats[j]) for i, j in
                     ((rng.randrange(n), rng.randrange(n)) for _ in range(random_pairs)) if i != j)  # fmt: skip
    u = _frequencies(((p, float(c)) for p, c in sample.items()), sizes)
    pairs = blocked_pairs(feats, fs)
    patterns = Counter(scorer.levels(feats[i], feats[j]) for i, j in pairs)
    m = [generic_mu(spec)[0] for spec in specs]
    # Non-matches among blocked pairs agree more than random pairs (they share a block key), so EM gets its
    # own u for them; holding u at the random pairs' values lets EM explain every blocked pair as a match.
    u_blocked = [list(row) for row in u]
    prior = 0.1
    total = sum(patterns.values())
    for _ in range(iterations):
        posterior: list[tuple[Pattern, float]] = []
        non_matches: list[tuple[Pattern, float]] = []
        matches = 0.0
        for pattern, count in patterns.items():
            pm, pu = prior, 1.0 - prior
            for c, level in enumerate(pattern):
                if level is not None:
                    pm *= m[c][level]
                    pu *= u_blocked[c][level]
            g = pm / (pm + pu) if pm + pu > 0 else 0.0
            posterior.append((pattern, g * count))
            non_matches.append((pattern, (1.0 - g) * count))
            matches += g * count
        m = _frequencies(posterior, sizes)
        u_blocked = _frequencies(non_matches, sizes)
        prior = min(max(matches / total, 1e-6), 1 - 1e-6) if total else prior
    trained_on = {"records": n, "blocked_pairs": len(pairs), "random_pairs": random_pairs, "patterns": len(patterns),
                  "iterations": iterations}  # fmt: skip
    comparisons = tuple(ComparisonModel(s, tuple(mc), tuple(uc)) for s, mc, uc in zip(specs, m, u, strict=True))
    return MatchModel(comparisons, prior, trained_on)


def train(records: Iterable[Mapping[str, Any]], config: DedupeConfig, **kwargs: Any) -> MatchModel:
    """Estimate the model of ``config`` on clean records (their features extracted as the deduper does)."""
    deduper = Deduper(config)
    feats = [deduper.features_of(r) for r in records]
    return estimate(feats, config, **kwargs)
