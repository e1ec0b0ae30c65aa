"""``crmflow assess``: profile every source of a migration config before migrating, in one streaming pass.

Every record goes through the code the pipeline runs, not a copy of its rules: the producer's readers
(:mod:`producers.sources`: malformed lines, encodings), its duplicate-key index (:class:`~producers.keys.KeyIndex`),
the segment filter, the processor's compiled :class:`~processors.mapping.Mapper` (cleansing, validation,
mapping: what each rule changes, flags or rejects), and the deduper (:class:`~processors.dedupe.Deduper`,
blocking and scoring) for duplicate candidates. On top it profiles each source field (null and blank
rates, distinct counts, top values), checks that each child's parent is there (the sink's orphan rule),
and finds outliers among amounts and dates (Tukey's far-out fences on a sample; dates before 1900 or in
the future).

Memory is bounded by the sketches of :mod:`crmflow.quality.profile`, by the parents' keys (one set per
parent entity, as the target would hold them), by the duplicate-key index the snapshot also keeps, and by
the deduper, which sees at most ``dedupe_limit`` accounts. Values of personal-data fields (per the
config's ``pii`` policies) are only ever shown masked.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from crmflow.entities import business_fields, id_field
from crmflow.pii import DEFAULT_POLICIES, field_kind, partial_email, partial_phone, partial_text
from crmflow.quality.outliers import Extremes
from crmflow.quality.profile import FieldProfile, Hits
from processors.dedupe import Deduper
from processors.dedupe.state import DedupeState
from processors.exceptions import RecordRejected
from processors.mapping import build_mappers
from producers.keys import KeyIndex
from producers.readers.base import Record
from producers.report import NullProgress, Progress
from producers.sources import SourceSpec, normalize_ws, source_specs

__all__ = ["AssessOptions", "Assessment", "assess", "pii_fields", "shape"]

log = logging.getLogger(__name__)

ORPHAN: Final = "orphan"
DUPLICATE_KEY: Final = "duplicate_key"
#: Dates outside this range are out of range whatever the field.
EARLIEST: Final = date(1900, 1, 1)
_PROGRESS_EVERY: Final = 5_000


@dataclass(frozen=True)
class AssessOptions:
    """``dedupe_limit``: accounts the deduper sees at most (its state grows with them); ``examples``: masked
    examples kept per finding; ``top``: top values per field; ``limit``: records per source (None: all)."""

    dedupe_limit: int = 250_000
    examples: int = 3
    top: int = 10
    limit: int | None = None


Mask = Callable[[str], str]


def shape(value: str) -> str:
    """The value's format without its content: digits become 9, letters A or a (``1971-04-28`` → ``9999-99-99``)."""
    return "".join("9" if c.isdigit() else ("A" if c.isupper() else "a") if c.isalpha() else c for c in value)


def _mask_for(kind: str) -> Mask:
    """How assess shows a personal-data value: the pii module's partial forms, or the shape of a date or
    postal code (which shows a format problem without the value)."""
    if kind == "email":
        return partial_email
    if kind == "phone":
        return partial_phone
    if kind in ("date", "postal"):
        return shape
    return partial_text


def pii_fields(cfg: Any, entity: str) -> dict[str, str]:
    """Target field → kind, for the fields of ``entity`` the config's ``pii`` policies mask (any profile:
    the policy says the field is personal data; the profile only says where it is masked)."""
    pii = getattr(cfg, "pii", None)
    rules = {f: r.policy for f, r in pii.entities.of(entity).items()} if pii is not None else {}
    defaults = DEFAULT_POLICIES if pii is None or pii.defaults else {}
    out: dict[str, str] = {}
    for name in business_fields(entity):
        policy = rules.get(name, defaults.get(name, "keep"))
        if policy != "keep":
            out[name] = field_kind(entity, name)
    if "full_name" in business_fields(entity) and ({"first_name", "last_name"} & set(out)):
        out.setdefault("full_name", "name")  # rebuilt from the masked parts: personal data too
    return out


@dataclass
class _FieldPlan:
    """One mapped target field: where its value comes from and what the report calls its rule."""

    target: str
    source: str | None
    rule: str
    mask: Mask | None


class _EntityPlan:
    """What assess needs of one entity's mapping: the fields, their rules and masks, the PII columns."""

    def __init__(self, cfg: Any, entity: str) -> None:
        self.entity = entity
        pii = pii_fields(cfg, entity)
        self.fields: dict[str, _FieldPlan] = {}
        self.column_masks: dict[str, Mask | None] = {}
        for spec in cfg.entities[entity].fields:
            names = [s.name for s in spec.transform if s.name not in ("none", "copy")]
            target = spec.target
            mask = _mask_for(pii[target]) if target in pii else None
            source = spec.sources[0] if len(spec.sources) == 1 else None
            self.fields[target] = _FieldPlan(target, source, "+".join(names) or "whitespace", mask)
            for col in spec.sources:
                if mask is not None or col.lower() not in self.column_masks:
                    self.column_masks[col.lower()] = mask if mask is not None else self.column_masks.get(col.lower())

    def column_mask(self, column: str) -> Mask | None:
        """The mask of a source column: its target's; a column no field maps is masked (unknown content)."""
        if column.lower() in self.column_masks:
            return self.column_masks[column.lower()]
        return partial_text


def _shown(value: Any, mask: Mask | None) -> str:
    text = value.isoformat() if isinstance(value, date) else str(value)
    return mask(text) if mask is not None else text


class _SourceProfile:
    def __init__(self, spec: SourceSpec, plan: _EntityPlan | None, examples: int) -> None:
        self.spec = spec
        self.plan = plan
        self.examples = examples
        self.records = self.mapped = self.filtered = 0
        self.fields: dict[str, FieldProfile] = {}
        self.rejects: dict[tuple[str, str | None], Hits] = {}
        self.changed: dict[str, Hits] = {}
        self.flagged: dict[str, Hits] = {}

    def hits(self, table: dict[Any, Hits], key: Any) -> Hits:
        found = table.get(key)
        if found is None:
            found = table[key] = Hits(self.examples)
        return found

    def profile(self, fields: dict[str, str | None]) -> None:
        for column, value in fields.items():
            prof = self.fields.get(column)
            if prof is None:
                mask = self.plan.column_mask(column) if self.plan is not None else partial_text
                prof = self.fields[column] = FieldProfile(mask)
            prof.add(value)


class Assessment:
    """The state of one assess pass; :meth:`to_json` is ``assess.json``."""

    def __init__(self, cfg: Any, config_path: Path, options: AssessOptions) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.options = options
        self.mappers = build_mappers(cfg)
        self.plans = {e: _EntityPlan(cfg, e) for e in cfg.entities}
        self.keys = KeyIndex()
        self.parent_keys: dict[str, set[str]] = {}
        self.sources: dict[str, _SourceProfile] = {}
        self.orphans: dict[str, Hits] = {}
        self.extremes: dict[tuple[str, str], Extremes] = {}
        self.deduper: Deduper | None = None
        self.dedupe_seen = 0
        self.merges: list[dict[str, Any]] = []
        self.started = time.monotonic()
        if cfg.dedupe_enabled and cfg.dedupe is not None:
            self.deduper = Deduper(cfg.dedupe.matcher(), DedupeState())
        self.parents = {
            name: src.parent for name, src in cfg.sources.items() if getattr(src, "parent", None) is not None
        }
        self.parent_entities = {p.entity for p in self.parents.values()}
        self.today = datetime.now(UTC).date()

    # ------------------------------------------------------------------------------------- the pass

    def run(self, progress: Progress) -> None:
        specs = source_specs(self.cfg)
        # Parents first, so a child's parent key is known when the child is read (as the sink's final pass sees it).
        specs.sort(key=lambda s: s.name in self.parents)
        for spec in specs:
            self._source(spec, progress)

    def _source(self, spec: SourceSpec, progress: Progress) -> None:
        plan = self.plans.get(spec.entity)
        prof = self.sources[spec.name] = _SourceProfile(spec, plan, self.options.examples)
        reader = spec.open_reader(None)
        limit = self.options.limit
        with reader:
            progress.start(spec.name, total=reader.total, completed=reader.start,
                           unit="bytes" if spec.path is not None else "rows")  # fmt: skip
            index = self.keys.source_index(spec.name, reader.name)
            done = reader.start
            try:
                for item in reader:
                    prof.records += 1
                    done = item.mark.progress
                    if prof.records % _PROGRESS_EVERY == 0:
                        progress.update(spec.name, done)
                    if isinstance(item, Record):
                        self._record(spec, prof, item, index)
                    else:
                        prof.hits(prof.rejects, (item.rule, None)).add(item.position)
                    if limit is not None and prof.records >= limit:
                        break
            finally:
                progress.update(spec.name, done)
                progress.finish(spec.name)
        log.info("assessed source %s: %d records", spec.name, prof.records)

    def _record(self, spec: SourceSpec, prof: _SourceProfile, item: Record, index: int) -> None:
        prof.profile(item.fields)
        position = item.position
        n = int(position[position.rindex(":") + 1 :])
        _, duplicate, _ = self.keys.claim(spec.entity, item.key, index, n)
        if spec.segment is not None and not spec.segment(item.fields):
            prof.filtered += 1
            return
        if duplicate is not None:
            prof.hits(prof.rejects, (DUPLICATE_KEY, spec.key)).add(position)
            return
        mapper = self.mappers.get(spec.entity)
        plan = prof.plan
        if mapper is None or plan is None:
            prof.hits(prof.rejects, ("unknown_source", None)).add(position)
            return
        meta = {"run_id": "assess", "source": spec.name, "source_position": position}
        try:
            mapped = mapper(item.fields, meta)
        except RecordRejected as rej:
            fp = plan.fields.get(rej.field or "")
            raw = _raw(item.fields, fp.source) if fp is not None and fp.source else None
            shown = None if raw is None else _shown(raw, fp.mask if fp is not None else partial_text)
            prof.hits(prof.rejects, (rej.rule, rej.field)).add(position, shown)
            return
        self._mapped(spec, prof, plan, item, mapped)

    def _mapped(
        self, spec: SourceSpec, prof: _SourceProfile, plan: _EntityPlan, item: Record, mapped: dict[str, Any]
    ) -> None:
        position = item.position
        parent = self.parents.get(spec.name)
        if parent is not None:
            value = _raw(item.fields, parent.field)
            if value is None or normalize_ws(value) not in self.parent_keys.get(parent.entity, ()):
                hits = self.orphans.get(spec.name)
                if hits is None:
                    hits = self.orphans[spec.name] = Hits(self.options.examples)
                hits.add(position, None if value is None else normalize_ws(value))
                return  # the sink dead-letters it: it never lands
        prof.mapped += 1
        if spec.entity in self.parent_entities:
            self.parent_keys.setdefault(spec.entity, set()).add(str(mapped[id_field(spec.entity)]))
        flags = mapped.get("quality_flags") or ()
        for flag in flags:
            prof.hits(prof.flagged, flag).add(position)
        for target, fp in plan.fields.items():
            value = mapped.get(target)
            if fp.source is not None:
                raw = _raw(item.fields, fp.source)
                before = normalize_ws(raw) if raw is not None else ""
                after = "" if value is None else (value.isoformat() if isinstance(value, date) else str(value))
                if before != after and not any(f.startswith(f"{target}_") for f in flags):
                    prof.hits(prof.changed, target).add(position, _shown(before, fp.mask), to=_shown(after, fp.mask))
            if isinstance(value, Decimal | date) and not isinstance(value, bool):
                self._extreme(plan.entity, target, value, position, fp.mask)
        if self.deduper is not None and spec.entity == "account" and self.dedupe_seen < self.options.dedupe_limit:
            self._dedupe(mapped)

    def _extreme(self, entity: str, target: str, value: Decimal | date, position: str, mask: Mask | None) -> None:
        ext = self.extremes.get((entity, target))
        if ext is None:
            ext = self.extremes[(entity, target)] = Extremes("date" if isinstance(value, date) else "amount")
        if isinstance(value, date):
            out_of_range = value < EARLIEST or value > self.today
            ext.add(float(value.toordinal()), position, _shown(value, mask), out_of_range=out_of_range)
        else:
            ext.add(float(value), position, _shown(value, mask))

    def _dedupe(self, account: dict[str, Any]) -> None:
        assert self.deduper is not None
        self.dedupe_seen += 1
        result = self.deduper.process(account)
        if result.merged_into is not None and len(self.merges) < 20:
            for ev in result.evidence:
                if ev.get("decision") not in ("vetoed", "refused"):
                    self.merges.append({"record": result.record_id, **{k: ev[k] for k in ("rule", "score") if k in ev},
                                        "matched": ev.get("matched_id")})  # fmt: skip
                    break

    # ------------------------------------------------------------------------------------- the report

    def to_json(self) -> dict[str, Any]:
        sources: dict[str, Any] = {}
        rules: list[dict[str, Any]] = []
        by_rule: Counter[str] = Counter()
        for name, prof in self.sources.items():
            rejected = sum(h.count for h in prof.rejects.values()) + (self.orphans[name].count if name in self.orphans
                                                                      else 0)  # fmt: skip
            sources[name] = {
                "entity": prof.spec.entity, "kind": prof.spec.kind,
                "file": prof.spec.path.name if prof.spec.path is not None else None,
                "records": prof.records, "mapped": prof.mapped, "filtered": prof.filtered, "rejected": rejected,
                "fields": {col: fp.to_json(self.options.top) for col, fp in prof.fields.items()},
            }  # fmt: skip
            plan = prof.plan
            for (rule, fld), hits in sorted(prof.rejects.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
                by_rule[rule] += hits.count
                rules.append({"source": name, "entity": prof.spec.entity, "field": fld, "rule": rule,
                              "outcome": "rejected", **hits.to_json()})  # fmt: skip
            for target, hits in sorted(prof.changed.items()):
                rule = plan.fields[target].rule if plan is not None and target in plan.fields else "?"
                rules.append({"source": name, "entity": prof.spec.entity, "field": target, "rule": rule,
                              "outcome": "changed", **hits.to_json()})  # fmt: skip
            for flag, hits in sorted(prof.flagged.items()):
                rules.append({"source": name, "entity": prof.spec.entity, "field": flag.rsplit("_", 1)[0],
                              "rule": flag, "outcome": "flagged", **hits.to_json()})  # fmt: skip
        orphans = {}
        for name, hits in self.orphans.items():
            parent = self.parents[name]
            by_rule[ORPHAN] += hits.count
            orphans[name] = {"parent": parent.entity, "field": parent.field, **hits.to_json()}
        return {
            "config": str(self.config_path),
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sources": sources,
            "rejects_by_rule": dict(sorted(by_rule.items())),
            "rules": rules,
            "orphans": orphans,
            "outliers": [{"entity": e, "field": f, **ext.to_json()} for (e, f), ext in sorted(self.extremes.items())],
            "duplicates": self._duplicates(),
            "notes": _NOTES,
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }

    def _duplicates(self) -> dict[str, Any]:
        if self.deduper is None:
            return {"enabled": False}
        sizes = Counter(len(g["members"]) for g in self.deduper.state.goldens.values())
        return {
            "enabled": True,
            "accounts": self.dedupe_seen,
            "limit": self.options.dedupe_limit,
            "complete": self.dedupe_seen < self.options.dedupe_limit,
            "clusters": sum(sizes.values()),
            "clusters_with_duplicates": sum(n for size, n in sizes.items() if size > 1),
            "duplicate_records": sum((size - 1) * n for size, n in sizes.items() if size > 1),
            "cluster_sizes": {str(size): n for size, n in sorted(sizes.items())},
            "examples": self.merges,
        }


_NOTES: Final = [
    "distinct counts are exact up to 50,000 values per field, then estimated (HyperLogLog, about 1-2% error)",
    "top values are exact unless marked approximate (more than 4,000 distinct values)",
    "outlier fences are Tukey's far-out fences (Q1 - 3 IQR, Q3 + 3 IQR; of log10 for positive amounts) on a "
    "10,000-value sample; dates before 1900 or in the future are out of range",
    "values of personal-data fields (the config's pii policies) are shown masked",
]


def _raw(fields: dict[str, str | None], name: str) -> str | None:
    if name in fields:
        return fields[name]
    return fields.get(name.lower())


def assess(cfg: Any, config_path: Path, options: AssessOptions = AssessOptions(),
           progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """Profile every source of ``cfg``; the JSON of ``assess.json``. Raises ConfigError when the config or a
    source cannot be used."""
    assessment = Assessment(cfg, config_path, options)
    assessment.run(progress or NullProgress())
    return assessment.to_json()
