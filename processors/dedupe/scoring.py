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

With ``scoring: fellegi_sunter`` step 3 is instead: every comparison of ``DedupeConfig.comparisons``
(:mod:`processors.dedupe.comparators`) gives a level, each level adds ``log2(m/u)`` bits
(:mod:`processors.dedupe.model`), and the pair matches when the prior log-odds plus the bits reach the
log-odds of ``match_probability``. A missing value, a missing name part included, adds nothing: the
other fields still decide. Vetoes (``veto_birth_date_conflict``, ``vetoes``) fire on a comparison's
last level (disagreement) and only when switched on.

Records of the same external id never get here: the deduper treats them as an update of one record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from rapidfuzz.distance import OSA, JaroWinkler

from processors.dedupe import comparators
from processors.dedupe.comparators import CompareFn, date_level, similarity_level, street_similarity
from processors.dedupe.config import DedupeConfig
from processors.dedupe.features import Features, feature_key, first_name_form, fold
from processors.dedupe.model import MatchModel, load_model

_NAME_FIELDS = ("first_name", "last_name")
_jaro_winkler = JaroWinkler.normalized_similarity
_osa = OSA.distance


class NameSimilarity(NamedTuple):
    """Best orientation of two names; parts are None when a side lacks that part.

    ``first`` compares the first record's first name, ``last`` its last name, with the other record's
    first/last name (``swapped`` False) or last/first name (True); a swap costs ``penalty`` on the
    combined similarity only, so an initial in a swapped name still passes the per-part floors.
    ``combined``: the mean of the parts present, less ``penalty`` (0 without parts); :meth:`of` computes it.
    (Tuples: a pair's comparison builds two or three of these, and a tuple is built fastest.)
    """

    first: float | None
    last: float | None
    swapped: bool
    penalty: float
    combined: float

    @classmethod
    def of(cls, first: float | None, last: float | None, swapped: bool = False,
           penalty: float = 0.0) -> NameSimilarity:
        if first is None:
            mean = last
        elif last is None:
            mean = first
        else:
            mean = (first + last) / 2
        return cls(first, last, swapped, penalty, 0.0 if mean is None else max(mean - penalty, 0.0))


class Comparison(NamedTuple):
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


def _part(
    a: str, b: str, initial_similarity: float, one_edit_similarity: float, first_letter_similarity: float = 0.0
) -> float:
    """Similarity of two folded name parts: initials, Jaro-Winkler, and one typo on a short name.

    Jaro-Winkler punishes a transposition in a short name hard (``kim``/``kmi`` 0.56), so one edit
    (substitution, insertion, deletion or transposition) after an equal first letter scores at least
    ``one_edit_similarity``. It gives no prefix bonus to two names that differ in their first letter only
    (``karl``/``garl`` 0.83, ``kyle``/``cyle`` 0.83), the slip of a sound (C/K, G/J) or a key: those, three
    letters or more, score at least ``first_letter_similarity``.
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
    if sim < first_letter_similarity and len(a) == len(b) > 2 and a[1:] == b[1:]:
        return first_letter_similarity
    return sim


def name_similarity(a: Features, b: Features, config: DedupeConfig) -> NameSimilarity:
    """First/last name similarity in the better of the straight and the swapped orientation."""
    ini, edit, penalty = config.initial_similarity, config.one_edit_similarity, config.swap_penalty
    head = config.first_letter_similarity
    af, al, bf, bl = a.get("fn"), a.get("ln"), b.get("fn"), b.get("ln")
    first = _part(first_name_form(af), first_name_form(bf), ini, edit, head) if af and bf else None
    last = _part(fold(al), fold(bl), ini, edit, head) if al and bl else None
    straight = NameSimilarity.of(first, last)
    if straight.combined >= 1.0 - penalty:  # swapped cannot do better
        return straight
    # Swapped: the first record's given name against the other's surname and the other way round. With a part
    # missing only the pair that exists is compared ("Adam" entered as the given name of "Jérôme Adam"), so a
    # swap and a missing part together are still one name, not a given name that disagrees.
    sf = _part(first_name_form(af), first_name_form(bl), ini, edit, head) if af and bl else None
    sl = _part(fold(al), fold(bf), ini, edit, head) if al and bf else None
    if sf is None and sl is None:
        return straight
    swapped = NameSimilarity.of(sf, sl, swapped=True, penalty=penalty)
    return swapped if swapped.combined > straight.combined else straight


@dataclass(frozen=True, slots=True)
class _Compiled:
    field: str
    key: str
    part: int | None
    level: CompareFn
    floors: tuple[float, ...]
    weights: tuple[float, ...]
    veto: bool
    cap: float | None
    comparator: str


#: The deterministic rules and the feature each compares.
_RULE_KEYS: Final = (("email", "em"), ("phone", "ph"))
#: Comparators whose level costs about a dict lookup: match() scores them first.
_CHEAP: Final = frozenset({"exact", "date", "numeric", "postcode"})
#: A bound below the threshold by less than this is not trusted (the bound sums weights in another order).
_BOUND_MARGIN: Final = 1e-9


def _top(comp: _Compiled) -> float:
    """The most bits one comparison can add."""
    top = max(comp.weights)
    return top if comp.cap is None else max(top, comp.cap)


class Scorer:
    """Compares feature dicts with one config; build once per deduper."""

    def __init__(self, config: DedupeConfig, model: MatchModel | None = None) -> None:
        self.config = config
        self.weights = config.weights
        self.fellegi_sunter = config.scoring == "fellegi_sunter"
        entity = config.entity
        self.model = model if model is not None else (load_model(config) if self.fellegi_sunter else None)
        self.vetoes = config.veto_fields()
        self.name_veto_overrides = frozenset(config.effective_name_veto_overrides())
        #: Per comparison: field, feature key, name part (0 first, 1 last, or None), level function, name
        #: floors, bits per level, whether it vetoes, the identifier's disagreement cap.
        self._fs: list[_Compiled] = []
        if self.model is not None:
            for cm in self.model.comparisons:
                spec = cm.spec
                part = {"first_name": 0, "last_name": 1}.get(spec.field) if spec.comparator == "name" else None
                fn = comparators.build(spec, self._name_part)
                cap = config.identifier_disagreement_bits if spec.identifier else None
                floors = tuple(spec.levels or comparators.DEFAULT_LEVELS["name"])
                self._fs.append(_Compiled(spec.field, feature_key(spec.field, entity), part, fn, floors, cm.weights,
                                          spec.field in self.vetoes, cap, spec.comparator))  # fmt: skip
            p = config.match_probability
            self.threshold_bits = math.log2(p / (1 - p)) - self.model.prior_bits
        else:
            self.threshold_bits = math.inf
        # The bound check of match(): the names' best weights, the costly comparisons' best weights (taken
        # when both values are present), and the cheap ones, each with its level function.
        self._names_top = sum(_top(comp) for comp in self._fs if comp.part is not None)
        self._dear = [(comp.key, _top(comp)) for comp in self._fs
                      if comp.part is None and comp.comparator not in _CHEAP]  # fmt: skip
        # (an exact comparison's level is inlined there: level None)
        self._cheap = [(comp.key, None if comp.comparator == "exact" else comp.level, comp.weights, _top(comp),
                        comp.cap) for comp in self._fs if comp.part is None and comp.comparator in _CHEAP]  # fmt: skip
        rules = config.deterministic_rules
        self._rule_keys = [key for rule, key in _RULE_KEYS if rule in rules]
        # Veto fields without a comparison (points mode, or not compared): disagreement = not equal after folding.
        compared = {comp.key for comp in self._fs} if self.fellegi_sunter else set()
        self._plain_vetoes = [
            (f, feature_key(f, entity)) for f in sorted(self.vetoes) if feature_key(f, entity) not in compared
        ]

    def _name_part(self, a: str, b: str) -> float:
        c = self.config
        return _part(fold(a), fold(b), c.initial_similarity, c.one_edit_similarity, c.first_letter_similarity)

    def births_conflict(self, births: Iterable[str]) -> bool:
        """Whether a cluster holding these birth dates breaks the birth-date veto (False when it is off)."""
        if "birth_date" not in self.vetoes:
            return False
        dates = sorted(set(births))
        if len(dates) < 2:
            return False
        if not self.fellegi_sunter:
            return True
        return any(date_level(x, y) == 2 for i, x in enumerate(dates) for y in dates[i + 1 :])

    def _veto(self, a: Features, b: Features) -> str | None:
        for field, key in self._plain_vetoes:
            x, y = a.get(key), b.get(key)
            if x is not None and y is not None and fold(str(x)) != fold(str(y)):
                return field
        return None

    def match(self, a: Features, b: Features) -> Comparison | None:
        """:meth:`compare`, or None for a pair that can neither match nor be vetoed (the deduper's question).

        Most blocked pairs are two different people whose cheap fields (e-mail, phone, birth date, postcode)
        already disagree: when the bits of those fields plus the most the names and the costly comparisons
        could add stay below the threshold, the pair cannot match, and the names are never compared. A pair
        that a deterministic rule may decide (equal e-mail or phone) is always compared in full."""
        if self.fellegi_sunter and self._hopeless(a, b):
            return None
        comparison = self.compare(a, b)
        return comparison if comparison.matched or comparison.veto is not None else None

    def _hopeless(self, a: Features, b: Features) -> bool:
        """Whether the pair's bits cannot reach the threshold, from its cheap fields and an upper bound."""
        for key in self._rule_keys:
            x = a.get(key)
            if x is not None and x == b.get(key):
                return False
        bound = self._names_top
        for key, top in self._dear:
            if a.get(key) is not None and b.get(key) is not None:
                bound += top
        present = []
        for key, level, weights, top, cap in self._cheap:
            x, y = a.get(key), b.get(key)
            if x is not None and y is not None:
                bound += top
                present.append((level, weights, top, cap, x, y))
        threshold = self.threshold_bits - _BOUND_MARGIN
        if bound < threshold:
            return True
        for level, weights, top, cap, x, y in present:
            if level is None:  # comparators.build's exact level, inline: most cheap comparisons are exact
                w = weights[0] if x == y or fold(str(x)) == fold(str(y)) else weights[1]
            else:
                w = weights[level(x, y)]
            if cap is not None and w < cap:
                w = cap
            bound += w - top
            if bound < threshold:
                return True
        return False

    def compare(self, a: Features, b: Features) -> Comparison:
        c = self.config
        name = name_similarity(a, b, c)
        if self.fellegi_sunter:
            score, veto = self.bits(a, b, name)
        else:
            score, veto = self.points(a, b, name), None
        veto = veto or self._veto(a, b)
        for rule, key in _RULE_KEYS:
            if rule in c.deterministic_rules and a.get(key) is not None and a.get(key) == b.get(key):
                if veto is not None and not (
                    veto in _NAME_FIELDS and rule in self.name_veto_overrides and self._only_names_disagree(a, b)
                ):
                    return Comparison(False, rule, score, veto, name)
                floor = c.deterministic_min_name_similarity
                if (name.first is not None and name.first < floor) or (name.last is not None and name.last < floor):
                    return Comparison(False, rule, score, "name", name)
                return Comparison(True, rule, score, None, name)
        matched = score >= self.threshold_bits if self.fellegi_sunter else self._points_match(name, score)
        if not matched:
            return Comparison(False, "fuzzy", score, None, name)
        if veto is not None:
            return Comparison(False, "fuzzy", score, veto, name)
        return Comparison(True, "fuzzy", score, None, name)

    def _only_names_disagree(self, a: Features, b: Features) -> bool:
        """Whether no veto field other than the name parts disagrees (the rare path of a vetoed rule)."""
        for comp, level in zip(self._fs, self.levels(a, b), strict=True):
            if comp.veto and comp.field not in _NAME_FIELDS and level == len(comp.weights) - 1:
                return False
        return self._veto(a, b) in (None, *_NAME_FIELDS)

    def _points_match(self, name: NameSimilarity, score: float) -> bool:
        c = self.config
        if name.first is None and name.last is None:
            return False
        threshold = c.match_threshold
        if name.first is None or name.last is None:  # one name part: it must pass its floor, and more points
            threshold += c.missing_name_threshold_bonus
        if name.first is not None and name.first < c.min_first_name_similarity:
            return False
        if name.last is not None and name.last < c.min_last_name_similarity:
            return False
        return score >= threshold

    def levels(self, a: Features, b: Features) -> tuple[int | None, ...]:
        """The level of every comparison of the model (None: a value missing), for training."""
        name = name_similarity(a, b, self.config)
        parts = (name.first, name.last)
        out: list[int | None] = []
        for comp in self._fs:
            if comp.part is not None:
                sim = parts[comp.part]
                out.append(None if sim is None else 0 if sim >= 1.0 else similarity_level(sim, comp.floors))
                continue
            x, y = a.get(comp.key), b.get(comp.key)
            out.append(None if x is None or y is None else comp.level(x, y))
        return tuple(out)

    def field_levels(self, a: Features, b: Features) -> list[tuple[str, str, int | None, float | None]]:
        """Per comparison of the model: field, feature key, level and the bits it adds (None: a value missing);
        the evidence of a Fellegi-Sunter decision."""
        out: list[tuple[str, str, int | None, float | None]] = []
        for comp, level in zip(self._fs, self.levels(a, b), strict=True):
            bits = None
            if level is not None:
                bits = comp.weights[level] if comp.cap is None else max(comp.weights[level], comp.cap)
            out.append((comp.field, comp.key, level, bits))
        return out

    def bits(self, a: Features, b: Features, name: NameSimilarity) -> tuple[float, str | None]:
        """Fellegi-Sunter match weight (bits) of the pair, and the first veto field that disagrees."""
        total, veto = 0.0, None
        parts = (name.first, name.last)
        for comp in self._fs:
            if comp.part is not None:
                sim = parts[comp.part]
                if sim is None:
                    continue
                level = 0 if sim >= 1.0 else similarity_level(sim, comp.floors)
            else:
                x, y = a.get(comp.key), b.get(comp.key)
                if x is None or y is None:
                    continue
                level = comp.level(x, y)
            w = comp.weights[level]
            if comp.cap is not None and w < comp.cap:
                w = comp.cap
            total += w
            if comp.veto and level == len(comp.weights) - 1 and veto is None:
                veto = comp.field
        return total, veto

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

