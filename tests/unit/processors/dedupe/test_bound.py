"""The scorer's bound check (``Scorer.match``): a pair it skips could never have matched or been vetoed.

``match`` decides most blocked pairs from their cheap fields and the most the names and the costly
comparisons could add. Held here to the full comparison on every blocked pair of generated data (both noise
profiles), and on random pairs of sparse, colliding feature dicts under configs that move the bound: identifiers
with a disagreement cap, no deterministic rules, vetoes switched on.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from crmflow.demo_data import generate
from crmflow.evaluation.dedupe_eval import load_demo_records
from processors.dedupe import DedupeConfig, Deduper, Scorer
from processors.dedupe.features import Features, extract
from processors.dedupe.scoring import Comparison

pytestmark = pytest.mark.unit


def _full(scorer: Scorer, a: Features, b: Features) -> Comparison | None:
    comparison = scorer.compare(a, b)
    return comparison if comparison.matched or comparison.veto is not None else None


@pytest.mark.parametrize("profile", ["default", "hard"])
def test_every_blocked_pair_gets_the_full_comparisons_answer(tmp_path: Path, profile: Any) -> None:
    generate(tmp_path, 1500, seed=5, workers=1, noise_profile=profile)
    records = load_demo_records(tmp_path).accounts
    config = DedupeConfig()
    scorer = Scorer(config)
    # The pairs the deduper compared before the bound check existed: every pair of a shared open block.
    deduper = Deduper(config)
    pairs: list[tuple[Features, Features]] = []
    for record in records:
        feats = extract(record, "account")
        for key in deduper.keyer.keys(feats):
            for other in deduper.state.blocks.get(key, [])[: config.max_block_size]:
                pairs.append((feats, deduper.state.records[other]))
        deduper.process(record)
    assert len(pairs) > 1000
    full = Scorer(config)
    compared = 0
    compare = scorer.compare

    def counted(a: Features, b: Features) -> Comparison:
        nonlocal compared
        compared += 1
        return compare(a, b)

    scorer.compare = counted  # type: ignore[method-assign]
    for a, b in pairs:
        assert scorer.match(a, b) == _full(full, a, b), (a, b)
    skipped = len(pairs) - compared
    matched = sum(1 for a, b in pairs if _full(full, a, b) is not None)
    assert matched > 50, "the data holds matches, and they were kept"
    # Most blocked pairs of two people have cheap fields that disagree: their names are never compared.
    assert skipped > (len(pairs) - matched) / 2, f"{skipped} of {len(pairs) - matched} pairs that do not match"


_POOLS: dict[str, list[Any]] = {
    "fn": ["john", "jon", "j", "mary", "marie", "kim", "kmi"],
    "ln": ["doe", "do", "smith", "smyth", "kim"],
    "bd": ["1971-04-28", "1971-08-24", "1971-04-29", "1980-01-01"],
    "pc": ["01236", "01237", "01999", "98000"],
    "st": ["4395 cameron avenue", "4395 cameron ave", "12 main street"],
    "ci": ["springfield", "shelbyville"],
    "em": ["a@x.com", "b@x.com"],
    "ph": ["+14146510904", "+14146510905"],
    "co": ["US", "DE"],
    "ni": ["123-45-6789", "123-45-6780", "999-99-9999"],
}


@pytest.mark.parametrize("settings", [
    {},
    {"deterministic_rules": ()},
    {"identifier_fields": ("national_id",)},
    {"identifier_fields": ("national_id",), "identifier_disagreement_bits": -1.0, "deterministic_rules": ()},
    {"veto_birth_date_conflict": True},
    {"match_probability": 0.5},
])  # fmt: skip
def test_random_sparse_pairs_get_the_full_comparisons_answer(settings: dict[str, Any]) -> None:
    config = DedupeConfig(**settings)
    scorer = Scorer(config)
    rng = random.Random(7)
    decided = 0
    for _ in range(4000):
        a, b = ({k: rng.choice(v) for k, v in _POOLS.items() if rng.random() < 0.7} for _ in range(2))
        got = scorer.match(a, b)
        assert got == _full(scorer, a, b), (a, b)
        decided += got is not None
    assert decided > 100
