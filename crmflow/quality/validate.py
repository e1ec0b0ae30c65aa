"""``crmflow validate``: recompute the target from the sources and name every difference.

The sources are read again and mapped with the processor's own code (:mod:`crmflow.quality.expected`), in
chunks, and each chunk is compared with the target rows of the same ids (:mod:`crmflow.quality.target`):

- **Completeness** per entity: source = landed + merged + rejected + filtered (+ in flight); every missing
  id (expected, neither in the target nor dead-lettered) and every extra id (in the target, not expected)
  is listed.
- **Accuracy**: field by field, in full or on a seeded random sample of ``sample`` mapped records, with a
  Wilson bound on the error rate. Dedupe on: a source account (and, with ``dedupe.contacts``, a source
  contact) is checked through its xref entry; a golden record of one member must equal it, a golden record
  of several must hold, per field, one of its members' values.
- **Per mapping rule**: records each field mapping touched and how many came out wrong.
- **Consistency and integrity** (set-based SQL over the whole target): see :mod:`crmflow.quality.integrity`.

Every discrepancy names entity, id, field, expected and found; values of PII fields are shown masked
(:func:`crmflow.quality.target.display`). Memory: the ids seen per entity, one chunk of records, and the
values of multi-member golden clusters.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from crmflow.entities import business_fields, id_field
from crmflow.quality.expected import Expected, Recomputer, expected_records, scoped_specs
from crmflow.quality.integrity import integrity_issues
from crmflow.quality.target import TargetReader, display, normalise, pii_fields

log = logging.getLogger(__name__)

CHUNK = 2000
MAX_LISTED = 1000  # discrepancies and ids kept per kind in the report (counts are always complete)
Z95 = 1.959963984540054


@dataclass
class Discrepancy:
    check: str  # accuracy | completeness | integrity | reference | golden
    entity: str
    id: str
    field: str | None
    expected: str | None
    found: str | None
    rule: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "entity": self.entity, "id": self.id, "field": self.field,
                "expected": self.expected, "found": self.found, "rule": self.rule}


@dataclass
class EntityCheck:
    source: int = 0
    landed: int = 0
    merged: int = 0
    rejected: int = 0
    filtered: int = 0
    in_flight: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    missing_count: int = 0
    extra_count: int = 0
    compared: int = 0
    accurate: int = 0
    target_rows: int = 0

    @property
    def accounted(self) -> int:
        return self.landed + self.merged + self.rejected + self.filtered + self.in_flight

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "landed": self.landed, "merged": self.merged, "rejected": self.rejected,
            "filtered": self.filtered, "in_flight": self.in_flight, "missing": self.missing_count,
            "extra": self.extra_count, "missing_ids": self.missing, "extra_ids": self.extra,
            "compared": self.compared, "accurate": self.accurate, "target_rows": self.target_rows,
            "reconciled": self.missing_count == 0 and self.extra_count == 0,
        }  # fmt: skip


@dataclass
class RuleCheck:
    entity: str
    field: str
    rule: str
    touched: int = 0
    wrong: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"entity": self.entity, "field": self.field, "rule": self.rule, "touched": self.touched,
                "wrong": self.wrong}


@dataclass
class ValidationReport:
    run_id: str | None
    target: str
    sample: int | None
    seed: int
    thresholds: dict[str, float]
    entities: dict[str, EntityCheck] = field(default_factory=dict)
    rules: dict[tuple[str, str], RuleCheck] = field(default_factory=dict)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    discrepancy_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    elapsed_s: float = 0.0
    run_summary: dict[str, Any] | None = None
    cdc_note: str = ""

    def add(self, d: Discrepancy) -> None:
        self.discrepancy_counts[d.check] += 1
        if sum(1 for x in self.discrepancies if x.check == d.check) < MAX_LISTED:
            self.discrepancies.append(d)

    # ------------------------------------------------------------------------------------- figures

    @property
    def compared(self) -> int:
        return sum(e.compared for e in self.entities.values())

    @property
    def accuracy(self) -> float:
        n = self.compared
        return 1.0 if n == 0 else sum(e.accurate for e in self.entities.values()) / n

    @property
    def completeness(self) -> float:
        source = sum(e.source for e in self.entities.values())
        extra = sum(e.extra_count for e in self.entities.values())
        missing = sum(e.missing_count for e in self.entities.values())
        total = source + extra
        return 1.0 if total == 0 else (source - missing) / total

    @property
    def integrity_issues(self) -> int:
        return sum(n for k, n in self.discrepancy_counts.items() if k not in ("accuracy", "completeness"))

    def error_bound(self) -> float:
        """Upper end of the 95% Wilson score interval of the error rate over the compared records."""
        return wilson_upper(self.compared - sum(e.accurate for e in self.entities.values()), self.compared)

    def reasons(self) -> list[str]:
        out = []
        if self.accuracy < self.thresholds["accuracy"]:
            out.append(f"accuracy {self.accuracy:.4%} is below the threshold {self.thresholds['accuracy']:.2%}")
        if self.completeness < self.thresholds["completeness"]:
            out.append(f"completeness {self.completeness:.4%} is below the threshold "
                       f"{self.thresholds['completeness']:.2%}")  # fmt: skip
        if self.integrity_issues:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.discrepancy_counts.items())
                              if k not in ("accuracy", "completeness"))  # fmt: skip
            out.append(f"{self.integrity_issues} consistency/integrity issue(s): {kinds}")
        return out

    @property
    def ok(self) -> bool:
        return not self.reasons()

    def kpis(self) -> dict[str, Any]:
        speed = (self.run_summary or {}).get("records_per_second")
        return {
            "data_accuracy_rate": round(self.accuracy, 6),
            "data_completeness_rate": round(self.completeness, 6),
            "processing_speed_records_per_s": speed,
            "volume_source_records": sum(e.source for e in self.entities.values()),
            "volume_target_rows": sum(e.target_rows for e in self.entities.values()),
        }

    def to_json(self) -> dict[str, Any]:
        confidence = None
        if self.sample is not None:
            confidence = {
                "level": 0.95, "method": "wilson", "sampled": self.compared,
                "error_rate_upper_bound": round(self.error_bound(), 6),
                "statement": f"with 95% confidence at most {self.error_bound():.3%} of the target records are "
                             f"wrong ({self.compared} sampled, seed {self.seed})",
            }  # fmt: skip
        return {
            "verdict": "PASS" if self.ok else "FAIL", "ok": self.ok, "reasons": self.reasons(),
            "run_id": self.run_id, "target": self.target, "sample": self.sample, "seed": self.seed,
            "thresholds": self.thresholds, "kpis": self.kpis(), "confidence": confidence,
            "entities": {e: c.to_json() for e, c in sorted(self.entities.items())},
            "rules": [r.to_json() for r in self.rules.values()],
            "discrepancy_counts": dict(sorted(self.discrepancy_counts.items())),
            "discrepancies": [d.to_json() for d in self.discrepancies],
            "cdc": self.cdc_note, "elapsed_s": round(self.elapsed_s, 2),
        }  # fmt: skip


def wilson_upper(errors: int, n: int, z: float = Z95) -> float:
    """The upper end of the Wilson score interval for ``errors`` out of ``n`` (1.0 when n is 0)."""
    if n <= 0:
        return 1.0
    p = errors / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


# ------------------------------------------------------------------------------------------ the checks


def _rule_names(cfg: Any) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for entity, mapping in cfg.entities.items():
        for spec in mapping.fields:
            steps = "+".join(s.name for s in spec.transform)
            out[(entity, spec.target)] = f"{entity}.{spec.target} <- {', '.join(spec.sources) or '-'} [{steps}]"
    return out


@functools.cache
def _compared_fields(entity: str) -> tuple[str, ...]:
    own = id_field(entity)
    return (*[f for f in business_fields(entity) if f != own], "quality_flags", "source")


class Validator:
    """One validation of a config's target; :meth:`run` returns the report."""

    def __init__(
        self,
        cfg: Any,
        conn: psycopg.Connection[Any],
        *,
        schema: str,
        target: str,
        run_id: str | None = None,
        sample: int | None = None,
        seed: int = 0,
        recomputer: Recomputer | None = None,
        run_summary: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.sample = sample
        self.seed = seed
        self.recomputer = recomputer or Recomputer(cfg)
        self.reader = TargetReader(conn, schema, system=cfg.run.name)
        thresholds = {"accuracy": cfg.validation.accuracy, "completeness": cfg.validation.completeness}
        self.report = ValidationReport(run_id, target, sample, seed, thresholds,
                                       run_summary=dict(run_summary) if run_summary else None)
        self._rule_names = _rule_names(cfg)
        self._pii = {e: pii_fields(cfg, e) for e in cfg.entities}
        # (entity, golden id) reached (the first member lands, the others merged)
        self._golden_seen: set[tuple[str, str]] = set()
        # entity -> golden id -> field -> member values
        self._clusters: dict[str, dict[str, dict[str, set[Any]]]] = {}
        self._cluster_size: dict[tuple[str, str], int] = {}
        dedupe = getattr(cfg, "dedupe", None)
        #: The entities the target holds as golden records: accounts with dedupe on, contacts too with
        #: ``dedupe.contacts``.
        self._golden_entities = ({"account", *(["contact"] if getattr(dedupe, "contacts", False) else [])}
                                 if self.recomputer.dedupe else set())
        self._plans: dict[str, list[tuple[str, RuleCheck, bool]]] = {}

    def run(self, progress: Callable[[int], None] | None = None) -> ValidationReport:
        started = time.monotonic()
        scope = scoped_specs(self.cfg, self.run_id)
        partial = any(end is not None for _, end in scope) or len(scope) < len(self.cfg.sources)
        self.report.cdc_note = self.reader.cdc_note()
        chosen = self._sampler()
        done = 0
        for chunk in _chunks(expected_records(self.cfg, self.recomputer, scope, self.run_id), CHUNK):
            self._check_chunk(chunk, chosen)
            done += len(chunk)
            if progress:
                progress(done)
        self._check_clusters()
        for entity in self.cfg.entities:
            check = self.report.entities.setdefault(entity, EntityCheck())
            check.target_rows = self.reader.count(entity)
            for extra in self.reader.extra_ids(entity, run_id=self.run_id if partial else None):
                check.extra_count += 1
                if len(check.extra) < MAX_LISTED:
                    check.extra.append(extra)
                self.report.add(Discrepancy("completeness", entity, extra, None, "not in the source", "present"))
        for d in integrity_issues(self.reader, self.cfg):
            self.report.add(d)
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    def _sampler(self) -> Callable[[Expected], bool]:
        """Whether a mapped record is compared: all of them, or a seeded Bernoulli sample whose expected
        size is ``sample`` (the number of mapped records is not known before the pass)."""
        if self.sample is None:
            return lambda e: True
        rng = random.Random(self.seed)
        total = max(1, self._estimate_records())
        rate = min(1.0, self.sample / total)
        return lambda e: rng.random() < rate

    def _estimate_records(self) -> int:
        """Target rows of the mapped entities: an upper bound of mapped records for the sampling rate."""
        return sum(self.reader.count(e) for e in self.cfg.entities) or 1

    # ------------------------------------------------------------------------------------ one chunk

    def _check_chunk(self, chunk: Sequence[Expected], chosen: Callable[[Expected], bool]) -> None:
        by_entity: dict[str, list[Expected]] = defaultdict(list)
        for e in chunk:
            check = self.report.entities.setdefault(e.entity, EntityCheck())
            check.source += 1
            if e.outcome == "filtered":
                check.filtered += 1
            elif e.outcome in ("rejected", "duplicate", "malformed"):
                check.rejected += 1
            else:
                by_entity[e.entity].append(e)
        for entity, records in by_entity.items():
            if entity in self._golden_entities:
                self._check_golden(entity, records, chosen)
            else:
                self._check_rows(entity, records, chosen)

    def _missing_or_rejected(self, entity: str, misses: list[Expected]) -> None:
        check = self.report.entities[entity]
        letters = self.reader.dead_letter_rules([e.position for e in misses], entity)
        for e in misses:
            if e.position in letters:
                check.rejected += 1
                continue
            ident = _ident(entity, e)
            check.missing_count += 1
            if len(check.missing) < MAX_LISTED:
                check.missing.append(ident)
            self.report.add(Discrepancy("completeness", entity, ident, None, "in the target", "missing",
                                        rule=f"source {e.source} {e.position}"))

    def _check_rows(self, entity: str, records: list[Expected], chosen: Callable[[Expected], bool]) -> None:
        check = self.report.entities[entity]
        ids = [_ident(entity, e) for e in records]
        rows = self.reader.rows(entity, ids)
        self.reader.add_seen(entity, list(rows))
        misses: list[Expected] = []
        for e, ident in zip(records, ids, strict=True):
            row = rows.get(ident)
            if row is None:
                misses.append(e)
                continue
            check.landed += 1
            assert e.record is not None
            if row.get("source_position") != e.position and self._differs(entity, e.record, row):
                # Written from another version of the source record (a change in flight): not drift.
                check.in_flight += 1
                check.landed -= 1
                continue
            if chosen(e):
                self._compare(entity, ident, e.record, row)
        if misses:
            self._missing_or_rejected(entity, misses)

    def _compare(self, entity: str, ident: str, expected: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        check = self.report.entities[entity]
        check.compared += 1
        wrong = False
        for f, stat, pii in self._plan(entity):
            want, got = normalise(expected.get(f)), normalise(row.get(f))
            if want is not None or got is not None:
                stat.touched += 1
            if want != got:
                wrong = True
                stat.wrong += 1
                self.report.add(Discrepancy("accuracy", entity, ident, f, display(want, f, pii),
                                            display(got, f, pii), stat.rule))
        if not wrong:
            check.accurate += 1

    def _differs(self, entity: str, expected: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
        return any(normalise(expected.get(f)) != normalise(row.get(f)) for f, _, _ in self._plan(entity))

    def _plan(self, entity: str) -> list[tuple[str, RuleCheck, bool]]:
        """Per compared field of ``entity``: its name, its rule's counters, whether it holds PII."""
        plan = self._plans.get(entity)
        if plan is None:
            plan = self._plans[entity] = [
                (f, self.report.rules.setdefault(
                    (entity, f), RuleCheck(entity, f, self._rule_names.get((entity, f), f"{entity}.{f} <- pipeline"))),
                 f in self._pii[entity])
                for f in _compared_fields(entity)
            ]  # fmt: skip
        return plan

    # ----------------------------------------------------------------------------------- golden records

    def _check_golden(self, entity: str, records: list[Expected], chosen: Callable[[Expected], bool]) -> None:
        """Records of a deduplicated entity (accounts; contacts with ``dedupe.contacts``): each through its xref
        entry to its golden record's row."""
        check = self.report.entities[entity]
        links = self.reader.account_links([(e.source, _ident(entity, e)) for e in records], entity)
        misses: list[Expected] = []
        reached: list[str] = []
        for e in records:
            ident = _ident(entity, e)
            link = links.get((e.source, ident))
            if link is None or link.get("external_id") is None:
                misses.append(e)
                continue
            gid = str(link["external_id"])
            first = (entity, gid) not in self._golden_seen
            if first:
                self._golden_seen.add((entity, gid))
                reached.append(gid)
            size = int(link["members"])
            if first:
                check.landed += 1
            else:
                check.merged += 1
            assert e.record is not None
            if size == 1:
                if chosen(e):
                    self._compare(entity, gid, {**e.record, "golden_id": gid} if entity == "account" else e.record,
                                  link)
                continue
            self._cluster_size[(entity, gid)] = size
            values = self._clusters.setdefault(entity, {}).setdefault(gid, {})
            for f in _compared_fields(entity):
                values.setdefault(f, set()).add(normalise(e.record.get(f)))
        self.reader.add_seen(entity, reached)
        if misses:
            self._missing_or_rejected(entity, misses)

    def _check_clusters(self) -> None:
        for entity, clusters in self._clusters.items():
            self._check_entity_clusters(entity, clusters)

    def _check_entity_clusters(self, entity: str, clusters: dict[str, dict[str, set[Any]]]) -> None:
        """Each multi-member golden record holds, per field, a value one of its members has (or null)."""
        if not clusters:
            return
        check = self.report.entities[entity]
        rows = self.reader.rows_by_external_id(entity, list(clusters))
        for gid, values in clusters.items():
            row = rows.get(gid)
            if row is None:
                continue
            check.compared += 1
            wrong = False
            for f, allowed in values.items():
                got = normalise(row.get(f))
                if f in ("quality_flags", "source"):
                    continue  # lineage of whichever member last changed the golden record
                if got is not None and got not in allowed:
                    wrong = True
                    pii = f in self._pii[entity]
                    shown = ", ".join(sorted(str(display(v, f, pii)) for v in allowed if v is not None)[:3])
                    self.report.add(Discrepancy("golden", entity, gid, f, f"one of its members' values: {shown}",
                                                display(got, f, pii), "golden record survivorship"))
            if not wrong:
                check.accurate += 1


def _ident(entity: str, e: Expected) -> str:
    assert e.record is not None
    return str(e.record.get(id_field(entity)))


def _chunks(items: Iterable[Expected], size: int) -> Iterator[list[Expected]]:
    chunk: list[Expected] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


__all__ = ["Discrepancy", "EntityCheck", "RuleCheck", "ValidationReport", "Validator", "wilson_upper"]
