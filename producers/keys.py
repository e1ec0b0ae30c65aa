"""Primary keys seen in a run: the first record of a key lands, every later one is a ``duplicate_key``.

The target upserts by the entity's id, so two source records with one key (twice in one file, or in two
sources feeding one entity) would leave only the last in the target and the first nowhere. The snapshot
claims each record's key in a :class:`KeyIndex` per entity, over every source of the run, and
dead-letters a record whose key an earlier record already claimed, naming both positions.

Keys are compared after the whitespace rule (the cleansed id is what the target keys on); empty keys are
not claimed (the processor rejects a record without an id). Filtered records claim their key too, so
the phases of a phased migration agree on which record of a key is the first.

**Resuming.** A :class:`KeyLog` per (run, source) persists the claimed keys next to the checkpoint,
append-only (one JSON line per key, ``[key, n]``, after a header line naming the source and entity), and
is fsync'ed before each checkpoint is written, so it holds at least every key of the checkpointed prefix.
It may hold more (keys read after the last checkpoint, before a crash): re-reading such a record finds
its own claim (same source, same position) and is not a duplicate. Memory: one dict entry per key (about
150 bytes; 1M keys ~ 150 MB); the log is about 20 bytes per key.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from producers.sources import normalize_ws

log = logging.getLogger(__name__)

_N_BITS = 40  # a claim is source_index << 40 | n (line or row number)
SUFFIX = ".keys.jsonl"


@dataclass(frozen=True)
class Duplicate:
    """Where the key of a record was first read."""

    source: str
    position: str

    def reason(self, source: str, position: str) -> str:
        """PII-free: positions only, never the key's record."""
        if source == self.source:
            return f"key first read at {self.position}, again at {position}"
        return f"key first read at {self.position} (source {self.source}), again at {position} (source {source})"


def position_number(position: str) -> int:
    """The line or row number of a ``name:n`` position."""
    return int(position.rsplit(":", 1)[1])


@dataclass
class KeyIndex:
    """First claim of every key, per entity, over the sources of a run."""

    _first: dict[str, dict[str, int]] = field(default_factory=dict)
    _sources: list[tuple[str, str]] = field(default_factory=list)
    """(source name, reader name) per source index."""
    _index: dict[str, int] = field(default_factory=dict)

    def source_index(self, source: str, reader_name: str) -> int:
        idx = self._index.get(source)
        if idx is None:
            idx = self._index[source] = len(self._sources)
            self._sources.append((source, reader_name))
        return idx

    def claim(self, entity: str, key: str, source_index: int, n: int) -> tuple[str, Duplicate | None, bool]:
        """Claim ``key`` for the record ``n`` of a source. Returns the normalized key, the first claim when
        another record holds it (a duplicate, else None), and whether this claim is new (to be logged; False
        for the same record read again). An empty key is never claimed."""
        norm = normalize_ws(key)
        if not norm:
            return norm, None, False
        keys = self._first.get(entity)
        if keys is None:
            keys = self._first[entity] = {}
        me = source_index << _N_BITS | n
        first = keys.get(norm)
        if first is None:
            keys[norm] = me
            return norm, None, True
        if first == me:
            return norm, None, False
        source, name = self._sources[first >> _N_BITS]
        return norm, Duplicate(source, f"{name}:{first & ((1 << _N_BITS) - 1)}"), False

    def __len__(self) -> int:
        return sum(len(k) for k in self._first.values())


class KeyLog:
    """The append-only key file of one (run, source): ``<state>/<run>/<source>.keys.jsonl``; with
    ``path`` None (:meth:`disabled`) it keeps nothing."""

    def __init__(self, path: Path | None, source: str, entity: str, reader_name: str) -> None:
        self.path = path
        self.source, self.entity, self.reader_name = source, entity, reader_name
        self._pending: list[tuple[str, int]] = []
        self._fh: IO[bytes] | None = None

    @classmethod
    def disabled(cls) -> KeyLog:
        return cls(None, "", "", "")

    def add(self, key: str, n: int) -> None:
        if self.path is not None:
            self._pending.append((key, n))

    def sync(self) -> None:
        """Append the keys added since the last sync and fsync: call before saving the checkpoint."""
        if not self._pending or self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = self.path.open("ab")
            if new:
                head = {"source": self.source, "entity": self.entity, "name": self.reader_name}
                self._fh.write(orjson.dumps(head) + b"\n")
        # orjson: json.dumps with ensure_ascii=False builds an encoder per call, most of a snapshot's key logging
        dumps = orjson.dumps
        self._fh.write(b"".join(dumps([k, n]) + b"\n" for k, n in self._pending))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._pending.clear()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def load_logs(run_dir: Path, index: KeyIndex, order: list[str]) -> int:
    """Claim the keys of every key log under ``run_dir`` into ``index``; sources in ``order`` first, in that
    order (the config's), then the others. A torn last line (a crash mid-write) is ignored. Returns the
    number of keys loaded."""
    logs: list[tuple[int, str, Path]] = []
    for path in sorted(run_dir.glob(f"*{SUFFIX}")) if run_dir.is_dir() else []:
        try:
            with path.open(encoding="utf-8") as fh:
                head = json.loads(fh.readline())
            source = str(head["source"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("key log %s has no valid header; ignored", path)
            continue
        rank = order.index(source) if source in order else len(order)
        logs.append((rank, source, path))
    loaded = 0
    for _, _, path in sorted(logs):
        with path.open(encoding="utf-8") as fh:
            head = json.loads(fh.readline())
            idx = index.source_index(str(head["source"]), str(head["name"]))
            entity = str(head["entity"])
            for line in fh:
                if not line.endswith("\n"):
                    break  # torn by a crash; its key is re-claimed when the record is read again
                key, n = json.loads(line)
                index.claim(entity, str(key), idx, int(n))
                loaded += 1
    return loaded


__all__ = ["Duplicate", "KeyIndex", "KeyLog", "load_logs", "position_number"]
