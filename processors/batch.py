"""One batch of raw records → mapped entities and dead letters. Pure: no Kafka, no faust.

The faust agent (``processors.worker``) decodes, calls :func:`map_batch`, encodes and sends; keeping this
part free of I/O lets unit tests drive it with plain dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from processors.exceptions import RecordRejected

MapFn = Callable[[Mapping[str, str | None], Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Rejected:
    index: int
    entity: str | None
    stage: str
    rule: str
    field: str | None
    error: str
    position: str | None
    run_id: str | None = None


@dataclass
class BatchOutcome:
    """Per entity, (index in the batch, key, mapped record); rejects keep their batch index."""

    mapped: dict[str, list[tuple[int, bytes, dict[str, Any]]]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


def map_batch(
    records: Sequence[tuple[int, Mapping[str, Any]]],
    mappers: Mapping[str, MapFn],
    source_entities: Mapping[str, str],
) -> BatchOutcome:
    """Map each ``(index, LegacyRecord)``; ``source_entities`` says which target entity a source feeds."""
    out = BatchOutcome()
    for index, rec in records:
        source = rec["source"]
        position = rec.get("position")
        entity = source_entities.get(source)
        if entity is None or entity not in mappers:
            out.rejected.append(Rejected(index, None, "process", "unknown_source", None,
                                         f"no entity mapping for source {source!r}", position, rec.get("run_id")))
            continue
        meta = {"run_id": rec.get("run_id"), "source": source, "source_position": position,
                "unchanged": rec.get("_unchanged")}
        try:
            mapped = mappers[entity](rec["fields"], meta)
        except RecordRejected as rej:
            out.rejected.append(Rejected(index, entity, rej.stage, rej.rule, rej.field, rej.message, position,
                                         rec.get("run_id")))
            continue
        key = str(rec["source_key"]).encode()
        out.mapped.setdefault(entity, []).append((index, key, mapped))
    return out
