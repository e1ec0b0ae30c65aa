"""Field comparators of the Fellegi-Sunter scorer: two values in, an agreement *level* out.

Level 0 is exact agreement (after folding), the last level is disagreement, and the levels between are
graded partial agreements, most similar first. ``None`` means a value is missing on either side: the
comparison then adds no evidence either way. Every comparator is symmetric, so a pair gets the same
levels whichever record arrived first.

=================  ==========================================================  =========================
comparator         levels between exact and disagreement                       default ``levels``
=================  ==========================================================  =========================
``exact``          none                                                        ``()``
``name``           name similarity ≥ each floor (initials, middle initials,    ``(0.92, 0.85)``
                   one typo after an equal first letter, a first letter
                   alone different: see scoring)
``jaro_winkler``   Jaro-Winkler similarity ≥ each floor                        ``(0.92, 0.85)``
``levenshtein``    edit distance ≤ each maximum                                ``(1, 2)``
``date``           transposed day and month, or one digit off                  fixed
``numeric``        absolute difference ≤ each maximum                          ``(1,)``
``token_set``      token-set ratio ≥ each floor (streets: house numbers must   ``(0.9, 0.7)``
                   agree)
``postcode``       one typo, then a shared prefix ≥ each length                ``(3,)``
=================  ==========================================================  =========================
"""

from __future__ import annotations

from collections.abc import Callable
from operator import ne
from typing import Any, Final

from rapidfuzz.distance import OSA, JaroWinkler, Levenshtein
from rapidfuzz.fuzz import token_set_ratio

from processors.dedupe.config import Comparator, ComparisonSpec
from processors.dedupe.features import fold, street_form

Level = int | None
CompareFn = Callable[[Any, Any], int]

DEFAULT_LEVELS: Final[dict[Comparator, tuple[float, ...]]] = {
    "exact": (),
    "name": (0.92, 0.85),
    "jaro_winkler": (0.92, 0.85),
    "levenshtein": (1, 2),
    "date": (),
    "numeric": (1,),
    "token_set": (0.9, 0.7),
    "postcode": (3,),
}


def level_count(spec: ComparisonSpec) -> int:
    """Number of levels of a comparison: exact, one per threshold (postcode: one more), disagreement."""
    if spec.comparator == "date":
        return 3
    levels = spec.levels or DEFAULT_LEVELS[spec.comparator]
    return 2 + len(levels) + (1 if spec.comparator == "postcode" else 0)


def similarity_level(sim: float, floors: tuple[float, ...]) -> int:
    """Level of a similarity below 1: the first floor it reaches (1-based), else disagreement."""
    for i, floor in enumerate(floors, start=1):
        if sim >= floor:
            return i
    return len(floors) + 1


def _text(value: Any) -> str:
    return fold(str(value))


def date_level(a: str, b: str) -> int:
    """0 equal; 1 transposed day/month or exactly one digit differs (ISO dates); 2 otherwise."""
    if a == b:
        return 0
    if len(a) == len(b) == 10:
        if a[:4] == b[:4] and a[5:7] == b[8:10] and a[8:10] == b[5:7]:
            return 1
        if sum(map(ne, a, b)) == 1:
            return 1
    return 2


def street_similarity(a: str, b: str) -> float:
    """Token-set similarity of two streets (0..1); 0 when both have house numbers and they differ."""
    fa, fb = street_form(a), street_form(b)
    numbers_a = {t for t in fa.split() if t.isdigit()}
    numbers_b = {t for t in fb.split() if t.isdigit()}
    if numbers_a and numbers_b and numbers_a != numbers_b:  # another house: not the same address
        return 0.0
    return float(token_set_ratio(fa, fb)) / 100.0


def build(spec: ComparisonSpec, name_part: Callable[[str, str], float]) -> CompareFn:
    """The level function of one comparison (both values present). ``name_part``: the scorer's name similarity."""
    floors = tuple(spec.levels or DEFAULT_LEVELS[spec.comparator])
    last = level_count(spec) - 1
    kind = spec.comparator

    if kind == "exact":  # (fold inline: the bound check runs it on every blocked pair's e-mails and phones)
        return lambda a, b: 0 if a == b or fold(str(a)) == fold(str(b)) else 1
    if kind == "date":
        return lambda a, b: date_level(str(a), str(b))
    if kind == "name":

        def name(a: Any, b: Any) -> int:
            sim = name_part(str(a), str(b))
            return 0 if sim >= 1.0 else similarity_level(sim, floors)

        return name
    if kind == "jaro_winkler":

        def jaro(a: Any, b: Any) -> int:
            x, y = _text(a), _text(b)
            return 0 if x == y else similarity_level(float(JaroWinkler.normalized_similarity(x, y)), floors)

        return jaro
    if kind == "levenshtein":
        cutoff = int(max(floors, default=0))

        def lev(a: Any, b: Any) -> int:
            x, y = _text(a).replace(" ", ""), _text(b).replace(" ", "")
            if x == y:
                return 0
            d = Levenshtein.distance(x, y, score_cutoff=cutoff)
            return next((i for i, limit in enumerate(floors, start=1) if d <= limit), last)

        return lev
    if kind == "numeric":

        def num(a: Any, b: Any) -> int:
            try:
                x, y = float(a), float(b)
            except (TypeError, ValueError):
                return last
            if x == y:
                return 0
            return next((i for i, limit in enumerate(floors, start=1) if abs(x - y) <= limit), last)

        return num
    if kind == "token_set":
        streets = spec.field == "street"

        def tokens(a: Any, b: Any) -> int:
            x, y = str(a), str(b)
            sim = street_similarity(x, y) if streets else float(token_set_ratio(_text(x), _text(y))) / 100.0
            return 0 if sim >= 1.0 else similarity_level(sim, floors)

        return tokens

    # postcode: exact, one typo, then shared prefixes
    def postcode(a: Any, b: Any) -> int:
        x, y = _text(a).replace(" ", ""), _text(b).replace(" ", "")
        if x == y:
            return 0
        if OSA.distance(x, y, score_cutoff=1) <= 1:
            return 1
        shared = 0  # the common prefix's length
        for p, q in zip(x, y, strict=False):
            if p != q:
                break
            shared += 1
        for i, n in enumerate(floors, start=2):
            if shared >= n:
                return i
        return last

    return postcode
