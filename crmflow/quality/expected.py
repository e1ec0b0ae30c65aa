"""What the target should hold, recomputed from the sources with the processor's own code.

Each source is read again with the producer's readers (:mod:`producers.sources`), filtered by the same
segment filter, its duplicate keys decided by the same :class:`~producers.keys.KeyIndex` (the first record of
a key wins), and each record is mapped by the same compiled :class:`~processors.mapping.Mapper` and masked by
the same :class:`~processors.masking.Masker` the processor runs. Nothing here re-implements a rule.

A run's scope: with a run id whose snapshot checkpoint of a source is not complete (``migrate --limit``), the
source is read only up to the checkpoint's mark, which is exactly what the run read. A source the run never
read is out of scope. Without a run id every source is read in full.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from processors.exceptions import RecordRejected
from processors.mapping import MapFn, build_mappers
from processors.masking import Masker
from producers.checkpoint import CheckpointStore
from producers.keys import KeyIndex
from producers.readers.base import FileMark, KeyMark, Mark, Record
from producers.runs import default_state_dir
from producers.sources import SourceSpec, source_specs

Outcome = Literal["mapped", "rejected", "filtered", "duplicate", "malformed"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Expected:
    """One source record and what the pipeline should have made of it.

    ``record`` is the mapped target record (masked as the profile masks it) when ``outcome`` is mapped;
    ``unmasked`` the same record before masking (the matcher's view, for golden records)."""

    entity: str
    source: str
    key: str
    position: str
    outcome: Outcome
    record: dict[str, Any] | None = None
    unmasked: dict[str, Any] | None = None
    rule: str | None = None
    field: str | None = None


def _before(mark: Mark, end: Mark) -> bool:
    """Whether an item whose following mark is ``mark`` lies within a read that stopped at ``end``."""
    if isinstance(mark, FileMark) and isinstance(end, FileMark):
        return mark.offset <= end.offset
    if isinstance(mark, KeyMark) and isinstance(end, KeyMark):
        return mark.rows <= end.rows
    return True


def scoped_specs(cfg: Any, run_id: str | None, state_dir: Path | None = None) -> list[tuple[SourceSpec, Mark | None]]:
    """The config's sources a run read, each with the mark where its read stopped (None: the whole source)."""
    specs = source_specs(cfg)
    if run_id is None:
        return [(s, None) for s in specs]
    store = CheckpointStore(state_dir or default_state_dir())
    out: list[tuple[SourceSpec, Mark | None]] = []
    for spec in specs:
        checkpoint = store.load(run_id, spec.name)
        if checkpoint is None:
            continue
        out.append((spec, None if checkpoint.complete else checkpoint.mark))
    return out


class Recomputer:
    """Maps source records exactly as the processor does (build once per config)."""

    def __init__(self, cfg: Any, *, masker: Masker | None = None) -> None:
        self.cfg = cfg
        self.mappers: dict[str, MapFn] = build_mappers(cfg)
        self.masker = masker if masker is not None else Masker.from_config(cfg)
        self.dedupe = bool(getattr(cfg, "dedupe_enabled", False))

    def map(self, entity: str, source: str, rec: Record, run_id: str | None) -> Expected:
        mapper = self.mappers.get(entity)
        if mapper is None:
            return Expected(entity, source, rec.key, rec.position, "rejected", rule="unknown_source")
        meta = {"run_id": run_id, "source": source, "source_position": rec.position, "mapped_at": _EPOCH}
        try:
            mapped = mapper(rec.fields, meta)
        except RecordRejected as rej:
            return Expected(entity, source, rec.key, rec.position, "rejected", rule=rej.rule, field=rej.field)
        masked = self.masker.mask(entity, mapped) if self.masker.active else mapped
        return Expected(entity, source, rec.key, rec.position, "mapped", masked, mapped)


def expected_records(
    cfg: Any,
    recomputer: Recomputer,
    scope: Sequence[tuple[SourceSpec, Mark | None]],
    run_id: str | None = None,
) -> Iterator[Expected]:
    """Every in-scope source record with its expected outcome, source by source in config order."""
    keys = KeyIndex()
    for spec, end in scope:
        reader = spec.open_reader(None)
        with reader:
            index = keys.source_index(spec.name, reader.name)
            for item in reader:
                if end is not None and not _before(item.mark, end):
                    break
                if not isinstance(item, Record):
                    yield Expected(spec.entity, spec.name, "", item.position, "malformed", rule=item.rule)
                    continue
                position = item.position
                n = int(position[position.rindex(":") + 1 :])
                _, duplicate, _ = keys.claim(spec.entity, item.key, index, n)
                if spec.segment is not None and not spec.segment(item.fields):
                    yield Expected(spec.entity, spec.name, item.key, position, "filtered")
                elif duplicate is not None:
                    yield Expected(spec.entity, spec.name, item.key, position, "duplicate", rule="duplicate_key")
                else:
                    yield recomputer.map(spec.entity, spec.name, item, run_id)


def id_of(entity_id_field: str, record: Mapping[str, Any]) -> str:
    return str(record.get(entity_id_field))
