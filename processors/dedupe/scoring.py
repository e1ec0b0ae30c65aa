"""Pairwise matching: deterministic rules, fuzzy points, vetoes.

The order of the decision, for two feature dicts:

1. **Veto on conflicting evidence**: both have a birth date and they differ → never a match.
2. **Deterministic rules** (``DedupeConfig.deterministic_rules``): the same e-mail or the same E.164
   phone is a match, unless the names are incompatible (first or last name similarity below
   ``deterministic_min_name_similarity`` in both orientations): a shared family address or phone is
   not one person.
3. **Fuzzy points** (see :mod:`processors.dedupe.config`): both name parts must reach their floors
   (Jaro-Winkler; an initial ``J.`` scores ``initial_similarity`` against a name starting with J; middle
   initials are ignored; first/last swapped is tried at a small penalty), then the points of all fields
   must reach ``match_threshold``.

Records of the same external id never get here: the deduper treats them as an update of one record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rapidfuzz.distance import OSA, JaroWinkler
from rapidfuzz.fuzz import token_set_ratio

from processors.dedupe.config import DedupeConfig
from processors.dedupe.features import Features, first_name_form, fold, street_form

_jaro_winkler = JaroWinkler.normalized_similarity
_osa = OSA.distance


@dataclass(frozen=True, slots=True)
class NameSimilarity:
    """Best orientation of two names; parts are None when a side lacks that part.

    ``first`` compares the first record's first name, ``last`` its last name, with the other record's
    first/last name (``swapped`` False) or last/first name (True); a swap costs ``penalty`` on the
    combined similarity only, so an initial in a swapped name still passes the per-part floors.
    """

    first: float | None
    last: float | None
    swapped: bool = False
    penalty: float = 0.0

    @property
    def combined(self) -> float:
        parts = [p for p in (self.first, self.last) if p is not None]
        return max(sum(parts) / len(parts) - self.penalty, 0.0) if parts else 0.0


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of comparing a record with one candidate.

    ``rule`` is the deterministic rule that fired, or ``"fuzzy"``; ``veto`` names the conflicting evidence
    that stopped a match that would otherwise have been made (``birth_date``, ``name``).
    """

    matched: bool
    rule: str
    score: float
    veto: str | None
    name: NameSimilarity

    def evidence(self, matched_id: str, golden_id: str) -> dict[str, Any]:
        """A plain, PII-free dict: rule, score, the matched record and its cluster."""
        return {
            "rule": self.rule,
            "score": round(self.score, 3),
            "matched_id": matched_id,
            "golden_id": golden_id,
            "name_similarity": round(self.name.combined, 3),
            "swapped_names": self.name.swapped,
            "veto": self.veto,
        }


def _part(a: str, b: str, initial_similarity: float, one_edit_similarity: float) -> float:
    """Similarity of two folded name parts: initials, Jaro-Winkler, and one typo on a short name.

    Jaro-Winkler punishes a transposition in a short name hard (``kim``/``kmi`` 0.56), so one edit
    (substitution, insertion, deletion or transposition) after an equal first letter scores at least
    ``one_edit_similarity``.
    """
    if not a or not b:  # a name of punctuation only
        return 0.0
    if a == b:
        return 1.0
    if len(a) == 1 or len(b) == 1:  # an initial: compatible with any name starting with that letter
        return initial_similarity if a[:1] == b[:1] else 0.0
    sim = float(_jaro_winkler(a, b))
    if sim < one_edit_similarity and a[0] == b[0] and _osa(a, b, score_cutoff=1) <= 1:
        return one_edit_similarity
    return sim


def name_similarity(a: Features, b: Features, config: DedupeConfig) -> NameSimilarity:
    """First/last name similarity in the better of the straight and the swapped orientation."""
    ini, edit, penalty = config.initial_similarity, config.one_edit_similarity, config.swap_penalty
    af, al, bf, bl = a.get("fn"), a.get("ln"), b.get("fn"), b.get("ln")
    first = _part(first_name_form(af), first_name_form(bf), ini, edit) if af and bf else None
    last = _part(fold(al), fold(bl), ini, edit) if al and bl else None
    straight = NameSimilarity(first, last)
    if not (af and al and bf and bl) or straight.combined >= 1.0 - penalty:  # swapped cannot do better
        return straight
    sf = _part(first_name_form(af), first_name_form(bl), ini, edit)
    sl = _part(fold(al), fold(bf), ini, edit)
    swapped = NameSimilarity(sf, sl, swapped=True, penalty=penalty)
    return swapped if swapped.combined > straight.combined else straight


def street_similarity(a: str, b: str) -> float:
    """Token-set similarity of two streets (0..1); 0 when both have house numbers and they differ."""
    fa, fb = street_form(a), street_form(b)
    numbers_a = {t for t in fa.split() if t.isdigit()}
    numbers_b = {t for t in fb.split() if t.isdigit()}
    if numbers_a and numbers_b and numbers_a != numbers_b:  # another house: not the same address
        return 0.0
    return float(token_set_ratio(fa, fb)) / 100.0


class Scorer:
    """Compares feature dicts with one config; build once per deduper."""

    def __init__(self, config: DedupeConfig) -> None:
        self.config = config
        self.weights = config.weights

    def compare(self, a: Features, b: Features) -> Comparison:
        c = self.config
        name = name_similarity(a, b, c)
        score = self.points(a, b, name)
        birth_a, birth_b = a.get("bd"), b.get("bd")
        birth_conflict = c.veto_birth_date_conflict and birth_a is not None and birth_b is not None
        birth_conflict = birth_conflict and birth_a != birth_b
        for rule, key in (("email", "em"), ("phone", "ph")):
            if rule in c.deterministic_rules and a.get(key) is not None and a.get(key) == b.get(key):
                if birth_conflict:
                    return Comparison(False, rule, score, "birth_date", name)
                floor = c.deterministic_min_name_similarity
                if (name.first is not None and name.first < floor) or (name.last is not None and name.last < floor):
                    return Comparison(False, rule, score, "name", name)
                return Comparison(True, rule, score, None, name)
        if name.first is None or name.last is None:
            return Comparison(False, "fuzzy", score, None, name)
        if name.first < c.min_first_name_similarity or name.last < c.min_last_name_similarity:
            return Comparison(False, "fuzzy", score, None, name)
        if score < c.match_threshold:
            return Comparison(False, "fuzzy", score, None, name)
        if birth_conflict:
            return Comparison(False, "fuzzy", score, "birth_date", name)
        return Comparison(True, "fuzzy", score, None, name)

    def points(self, a: Features, b: Features, name: NameSimilarity) -> float:
        """The fuzzy score: name points plus agreement / mismatch points of the other fields."""
        w, c = self.weights, self.config
        score = w.name * name.combined
        if (x := a.get("bd")) is not None and (y := b.get("bd")) is not None and x == y:
            score += w.birth_date
        for key, agree, mismatch in (("em", w.email, w.email_mismatch), ("ph", w.phone, w.phone_mismatch),
                                     ("pc", w.postal_code, w.postal_code_mismatch), ("co", 0.0, w.country_mismatch),
                                     ("pa", w.parent, w.parent_mismatch)):  # fmt: skip
            x, y = a.get(key), b.get(key)
            if x is not None and y is not None:
                score += agree if x == y else mismatch
        if (x := a.get("ci")) is not None and (y := b.get("ci")) is not None:
            score += w.city if fold(x) == fold(y) else w.city_mismatch
        if (x := a.get("st")) is not None and (y := b.get("st")) is not None:
            sim = street_similarity(x, y)
            if sim >= c.street_similarity:
                score += w.street * sim
            elif sim < c.street_mismatch_below:
                score += w.street_mismatch
        return score
