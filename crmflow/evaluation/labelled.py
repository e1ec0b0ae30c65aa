"""Score the matcher on records someone labelled: ``crmflow dedupe evaluate`` (issue 13, item 6).

    crmflow dedupe evaluate -c crmflow.yaml --truth pairs.csv [--data DIR | --data FILE ...] [--json]

The records are read from the config's sources (``--data`` points them at other files: a directory holding
files of the same names, or files matched to the sources by name), mapped by the config's mapper exactly as
the pipeline maps them, and run one at a time, in file order, through a
:class:`~processors.dedupe.Deduper` built from the config's ``dedupe`` section: its blocking passes,
comparisons, model file, thresholds and vetoes. Nothing is retuned.

The truth is either

- a CSV of true pairs: two id columns (``--id-columns a,b``, else the first two columns), one pair a row;
  a column named ``match``, ``label`` or ``is_match`` keeps only the rows it marks true (1, true, yes, y);
- or the ``truth.jsonl`` of ``crmflow demo-data`` (records of one ``cluster`` are one entity).

True clusters are the connected components of the true pairs over the records read; a record in no pair is
its own entity. So the labels must list every duplicate among the records evaluated: label a sample, then
point ``--data`` at that sample's files.

Reported: pairwise precision, recall and F1; pair completeness (the share of true pairs that share an open
block: the best recall the blocking allows) and reduction ratio (1 - compared pairs / all pairs); and the
worst errors with their evidence: the false merges the scorer was surest of and the misses it was surest
were two entities (or never compared), each with the rule, score, threshold, shared block kinds and a
per-field comparison whose values are masked (:mod:`crmflow.pii`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Final

from crmflow.config import MigrationConfig
from crmflow.exceptions import ConfigError
from crmflow.pii import partial_email, partial_phone, partial_text
from processors.dedupe.blocking import BlockKeyer
from processors.dedupe.config import DedupeConfig, DedupeEntity
from processors.dedupe.deduper import Deduper
from processors.dedupe.features import ID_FIELDS, Features
from processors.dedupe.quality import pairwise_scores
from processors.exceptions import RecordRejected
from processors.mapping import build_mappers
from producers.readers.base import Record
from producers.sources import SourceSpec, source_specs

Pair = tuple[str, str]
_TRUE: Final = frozenset({"1", "true", "yes", "y", "t", "match"})
_LABEL_COLUMNS: Final = ("match", "label", "is_match")
#: Feature key → how its value is shown in evidence (never in clear).
_SHOWN: Final[dict[str, str]] = {
    "fn": "first_name", "ln": "last_name", "em": "email", "ph": "phone", "st": "street", "ci": "city",
    "pc": "postal_code", "co": "country", "bd": "birth_date", "ni": "national_id", "tx": "tax_id",
    "la": "legacy_account_number", "cr": "company_registration_number", "pa": "parent", "jt": "job_title",
}  # fmt: skip


class TruthFileError(ConfigError):
    """The truth file cannot be read or names no usable id columns."""


def _pair(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def read_truth(path: Path, entity: DedupeEntity = "account", id_columns: Sequence[str] | None = None) -> set[Pair]:
    """The true pairs of ``path``: a CSV of id pairs, or a demo ``truth.jsonl`` (pairs within a cluster)."""
    try:
        if path.suffix == ".jsonl":
            return _demo_truth_pairs(path, entity)
        return _csv_truth_pairs(path, id_columns)
    except OSError as exc:
        raise TruthFileError(f"{path}: cannot read the truth file ({type(exc).__name__})") from None


def _demo_truth_pairs(path: Path, entity: DedupeEntity) -> set[Pair]:
    id_field = ID_FIELDS[entity]
    clusters: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                t = json.loads(line)
            except ValueError:
                raise TruthFileError(f"{path}:{number}: not a JSON line of a crmflow demo truth file") from None
            if t.get("entity") == entity and t.get("outcome") == "ok" and t.get("cluster"):
                clusters.setdefault(t["cluster"], []).append(str(t["clean"][id_field]))
    return {_pair(a, b) for members in clusters.values() for a, b in combinations(members, 2)}


def read_unscored(path: Path, entity: DedupeEntity = "account") -> frozenset[str]:
    """Ids a demo ``truth.jsonl`` marks rejected (an orphan, a bad value): they never reach the target and the
    truth names no entity for them, so they are matched as the stream matches them but not scored. Empty for a
    CSV of pairs, whose records are all scored."""
    if path.suffix != ".jsonl":
        return frozenset()
    out: set[str] = set()
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                t = json.loads(line)
                if t.get("entity") == entity and t.get("outcome") != "ok" and t.get("source_key"):
                    out.add(str(t["source_key"]))
    except (OSError, ValueError):
        raise TruthFileError(f"{path}: cannot read the truth file") from None
    return frozenset(out)


def _csv_truth_pairs(path: Path, id_columns: Sequence[str] | None) -> set[Pair]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = csv.reader(text.splitlines(), dialect)
    header = [h.strip() for h in next(rows, [])]
    if len(header) < 2:
        raise TruthFileError(f"{path}:1: a truth CSV needs a header with two id columns")
    if id_columns:
        missing = [c for c in id_columns if c not in header]
        if len(id_columns) != 2 or missing:
            raise TruthFileError(f"{path}:1: --id-columns must name two columns of the header {header}; "
                                 f"not found: {missing or id_columns}")  # fmt: skip
        a_col, b_col = header.index(id_columns[0]), header.index(id_columns[1])
    else:
        a_col, b_col = 0, 1
    label = next((header.index(c) for c in header if c.lower() in _LABEL_COLUMNS), None)
    pairs: set[Pair] = set()
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(a_col, b_col):
            raise TruthFileError(f"{path}:{number}: {len(row)} field(s), the id columns need {max(a_col, b_col) + 1}")
        if label is not None and (len(row) <= label or row[label].strip().lower() not in _TRUE):
            continue
        a, b = row[a_col].strip(), row[b_col].strip()
        if a and b and a != b:
            pairs.add(_pair(a, b))
    return pairs


# ------------------------------------------------------------------------------------------ records


def _sources_for(config: MigrationConfig, entity: str, data: Sequence[Path]) -> list[SourceSpec]:
    specs = [s for s in source_specs(config) if s.entity == entity]
    if not specs:
        raise ConfigError(f"the config maps no source to {entity}")
    if not data:
        return specs
    if len(data) == 1 and data[0].is_dir():
        out = []
        for spec in specs:
            if spec.path is None:
                raise ConfigError(f"sources.{spec.name}: --data replaces file paths; this source is a table")
            out.append(dataclasses.replace(spec, path=data[0] / spec.path.name))
        return out
    files = {p.name: p for p in data}
    if len(specs) == 1 and len(data) == 1:
        return [dataclasses.replace(specs[0], path=data[0])]
    out = [
        dataclasses.replace(s, path=files[s.path.name]) for s in specs if s.path is not None and s.path.name in files
    ]
    if not out:
        names = ", ".join(s.path.name for s in specs if s.path is not None)
        raise ConfigError(f"--data: none of the files is named as a {entity} source of the config ({names})")
    return out


@dataclass(slots=True)
class Loaded:
    """Clean records in read order and what was skipped on the way (the pipeline's rejects)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    unreadable: int = 0


def load_records(config: MigrationConfig, entity: DedupeEntity, data: Sequence[Path] = ()) -> Loaded:
    """Read the entity's sources (pointed at ``data``) and map every record as the processor would."""
    mapper = build_mappers(config, [entity])[entity]
    out = Loaded()
    for spec in _sources_for(config, entity, data):
        with spec.open_reader(None) as reader:
            for item in reader:
                if not isinstance(item, Record):
                    out.unreadable += 1
                    continue
                meta = {"run_id": "dedupe-evaluate", "source": spec.name, "source_position": item.position}
                try:
                    out.records.append(mapper(item.fields, meta))
                except RecordRejected:
                    out.rejected += 1
    return out


# ------------------------------------------------------------------------------------------ scoring


def true_clusters(ids: Iterable[str], pairs: Iterable[Pair]) -> dict[str, str]:
    """Record id → its entity (the smallest id of its connected component over the true pairs)."""
    parent = {i: i for i in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        if a in parent and b in parent:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {i: find(i) for i in parent}


def _mask(key: str, value: Any) -> str:
    text = str(value)
    if key == "em":
        return partial_email(text)
    if key == "ph":
        return partial_phone(text)
    if key == "bd":
        return text[:4] + "-**-**"
    if key in ("pc",):
        return text[:2] + "***"
    if key in ("co",):
        return text
    return partial_text(text)


def pair_evidence(deduper: Deduper, keyer: BlockKeyer, first: Features, second: Features) -> dict[str, Any]:
    """Why the scorer decided what it did on one pair (``first`` the record of the smaller id, as the deduper
    orders them): rule, score, threshold, shared block kinds, and each field masked with its level/bits."""
    scorer = deduper.scorer
    comparison = scorer.compare(first, second)
    shared = sorted({k.partition("|")[0] for k in set(keyer.raw_keys(first)) & set(keyer.raw_keys(second))})
    fields: list[dict[str, Any]] = []
    if scorer.fellegi_sunter:
        for name, key, level, bits in scorer.field_levels(first, second):
            x, y = first.get(key), second.get(key)
            fields.append({"field": name, "a": None if x is None else _mask(key, x),
                           "b": None if y is None else _mask(key, y), "level": level,
                           "bits": None if bits is None else round(bits, 2)})  # fmt: skip
    else:
        for key, name in _SHOWN.items():
            x, y = first.get(key), second.get(key)
            if x is None and y is None:
                continue
            agree = None if x is None or y is None else str(x).casefold() == str(y).casefold()
            fields.append({"field": name, "a": None if x is None else _mask(key, x),
                           "b": None if y is None else _mask(key, y), "equal": agree})  # fmt: skip
    threshold = scorer.threshold_bits if scorer.fellegi_sunter else deduper.config.match_threshold
    return {
        "rule": comparison.rule,
        "matched": comparison.matched,
        "score": round(comparison.score, 3),
        "threshold": round(threshold, 3),
        "veto": comparison.veto,
        "name_similarity": round(comparison.name.combined, 3),
        "swapped_names": comparison.name.swapped,
        "shared_blocks": shared,
        "fields": fields,
    }


def blocking_quality(deduper: Deduper, true_pairs: set[Pair], n: int) -> tuple[dict[str, Any], set[Pair]]:
    """Pair completeness and reduction ratio of the open blocks, and the candidate pairs themselves."""
    cap = deduper.config.max_block_size
    candidates: set[Pair] = set()
    for ids in deduper.state.blocks.values():
        if len(ids) < cap:
            candidates.update(_pair(x, y) for x, y in combinations(ids, 2))
    found = len(true_pairs & candidates)
    all_pairs = n * (n - 1) / 2
    return {
        "pair_completeness": round(found / len(true_pairs), 5) if true_pairs else 1.0,
        "reduction_ratio": round(1 - len(candidates) / all_pairs, 6) if all_pairs else 1.0,
        "candidate_pairs": len(candidates),
    }, candidates


def evaluate_records(
    records: Sequence[Mapping[str, Any]],
    true_pairs: set[Pair],
    config: DedupeConfig,
    *,
    worst: int = 10,
    parents: Mapping[str, str] | None = None,
    unscored: Collection[str] = (),
) -> dict[str, Any]:
    """Deduplicate ``records`` in order with ``config`` and score the clusters against ``true_pairs``; records
    in ``unscored`` take part in matching (they can link others, as in the stream) but are not scored."""
    entity = config.entity
    id_field = ID_FIELDS[entity]
    deduper = Deduper(config)
    feats: dict[str, Features] = {}
    for record in records:
        parent = parents.get(str(record.get("customer_id"))) if parents is not None else None
        deduper.process(record, parent_golden_id=parent)
        rid = str(record[id_field])
        feats[rid] = deduper.state.records[rid]
    ids = [i for i in feats if i not in unscored]
    known = {p for p in true_pairs if p[0] in feats and p[1] in feats}
    truth = true_clusters(ids, known)
    closure = {_pair(x, y) for members in _members(truth).values() for x, y in combinations(members, 2)}
    assignment = {rid: cluster for rid, cluster in deduper.state.clusters.items() if rid in truth}
    report: dict[str, Any] = {"entity": entity, "records": len(ids), "labelled_pairs": len(true_pairs),
                              "labelled_pairs_unknown_ids": len(true_pairs) - len(known),
                              "unscored_records": len(feats) - len(ids)}  # fmt: skip
    report.update(pairwise_scores(assignment, truth).as_dict())
    blocking, candidates = blocking_quality(deduper, closure, len(ids))
    report.update(blocking)
    predicted = {_pair(x, y) for members in _members(assignment).values() for x, y in combinations(members, 2)}
    keyer = BlockKeyer(config.model_copy(update={"hash_block_keys": False}))
    false_merges = [(p, pair_evidence(deduper, keyer, feats[p[0]], feats[p[1]])) for p in predicted - closure]
    false_merges.sort(key=lambda item: (-item[1]["score"], item[0]))
    misses = []
    for p in closure - predicted:
        ev = pair_evidence(deduper, keyer, feats[p[0]], feats[p[1]])
        ev["compared"] = p in candidates
        misses.append((p, ev))
    misses.sort(key=lambda item: (item[1]["compared"], item[1]["score"], item[0]))
    report["false_merges"] = [{"a": a, "b": b, **ev} for (a, b), ev in false_merges[:worst]]
    report["misses"] = [{"a": a, "b": b, **ev} for (a, b), ev in misses[:worst]]
    report["misses_never_compared"] = sum(1 for _, ev in misses if not ev["compared"])
    return report


def _members(assignment: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rid, cluster in assignment.items():
        out.setdefault(cluster, []).append(rid)
    return out


def golden_ids(records: Sequence[Mapping[str, Any]], config: DedupeConfig) -> dict[str, str]:
    """Account id → golden id after deduplicating ``records`` (the parents contacts are compared under)."""
    deduper = Deduper(config)
    for record in records:
        deduper.process(record)
    return dict(deduper.state.clusters)


def iter_text(report: Mapping[str, Any]) -> Iterator[str]:
    """The report as lines of text (what the CLI prints without ``--json``)."""
    r = report
    yield (f"{r['entity']}: {r['records']:,} records, {r['labelled_pairs']:,} labelled pairs "
           f"({r['labelled_pairs_unknown_ids']:,} naming records not read)")  # fmt: skip
    if r.get("unscored_records"):
        yield f"not scored: {r['unscored_records']:,} records the truth marks rejected (matched, not counted)"
    yield f"precision {r['precision']:.4f}  recall {r['recall']:.4f}  F1 {r['f1']:.4f}"
    yield (f"pairs: true {r['true_pairs']:,}, predicted {r['predicted_pairs']:,}, correct {r['correct_pairs']:,}; "
           f"clusters: true {r['true_clusters']:,}, predicted {r['predicted_clusters']:,}")  # fmt: skip
    yield (
        f"blocking: pair completeness {r['pair_completeness']:.4f}, reduction ratio {r['reduction_ratio']:.6f} "
        f"({r['candidate_pairs']:,} pairs compared); misses never compared: {r['misses_never_compared']:,}"
    )
    for title, key in (("worst false merges", "false_merges"), ("worst misses", "misses")):
        if r[key]:
            yield f"{title}:"
        for e in r[key]:
            veto = f", veto {e['veto']}" if e["veto"] else ""
            if key == "false_merges":
                where = "" if e["matched"] else " (linked through other records)"
            else:
                where = " (compared)" if e["compared"] else " (never compared)"
            yield (f"  {e['a']} ~ {e['b']}{where}: {e['rule']} score {e['score']} / threshold {e['threshold']}{veto}; "
                   f"blocks {','.join(e['shared_blocks']) or '-'}")  # fmt: skip
            parts = []
            for f in e["fields"]:
                mark = f.get("bits", f.get("equal"))
                parts.append(f"{f['field']} {f['a'] or '∅'}|{f['b'] or '∅'} {mark if mark is not None else ''}".strip())
            yield "    " + "; ".join(parts)
