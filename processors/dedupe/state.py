"""The deduper's state: four plain key → value mappings, ready to be faust Tables.

=============  ==========================  =================================================================
mapping        key                         value
=============  ==========================  =================================================================
``blocks``     block key (``e:<digest>``)  list of record ids sharing the key (at most ``max_block_size``)
``records``    record (external) id        compact feature dict (:mod:`processors.dedupe.features`)
``clusters``   record id                   golden id of the record's cluster
``goldens``    golden id                   golden value: members, golden record, picks, births
=============  ==========================  =================================================================

Keys are strings and values JSON types (lists, dicts, strings, numbers, null), so any store that
serialises JSON can hold them. The deduper never mutates a value it read from a stored mapping: it builds a new
value and assigns it (``table[key] = value``), which is what a changelog-backed table needs to persist a change.
(Blocks held in a plain dict, as the stream's derived ones are, grow in place.)

In the stream processor only ``records`` and ``goldens`` are persisted (:meth:`DedupeState.persisted`):
they are views of ONE faust Table, keys prefixed ``r:`` and ``g:`` (and by partition: each partition is
an independent shard, whatever worker holds it). ``blocks`` and ``clusters`` are derived from them in
memory when a worker takes the partition: two changelog writes per account instead of nine. One table
means one changelog partition per shard, so the writes of a shard are persisted in the order they are
sent and a crash keeps a prefix of them. The deduper orders its writes so that every prefix is a state it
can continue from (a record's features before the golden value listing it, absorbed golden values
deleted last, a stale one told apart by its larger id); two tables would each keep a prefix of their own
and could leave a golden value listing a record whose features were never persisted.
:meth:`DedupeState.over` keeps all four mappings in one store (evaluation, tests).

:class:`WriteBehind` buffers one batch's writes and hands them out once per key, grouped in that same
safe order (blocks, records, golden values, clusters, then deletions): a batch of 2,000 accounts then
costs one changelog message per changed key instead of one per write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from processors.dedupe.exceptions import DedupeStateError

V = TypeVar("V")


class PrefixedView(MutableMapping[str, V], Generic[V]):
    """The entries of ``store`` whose keys start with ``prefix``, with the prefix taken off.

    Lookups cost one lookup of the store; iterating and ``len`` scan the whole store (evaluation and
    tests only).
    """

    __slots__ = ("_prefix", "_store")

    def __init__(self, store: MutableMapping[str, Any], prefix: str) -> None:
        self._store = store
        self._prefix = prefix

    def __getitem__(self, key: str) -> V:
        value: V = self._store[self._prefix + key]
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(self._prefix + key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (self._prefix + key) in self._store

    def __setitem__(self, key: str, value: V) -> None:
        self._store[self._prefix + key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        n = len(self._prefix)
        return (k[n:] for k in list(self._store) if k.startswith(self._prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: Feature key holding a record's arrival number in its shard: derived blocks are rebuilt in arrival order.
SEQ: Final = "#"

_DELETED: Any = object()
_MISSING: Any = object()
#: Flush order of the buffered writes by key prefix; deletions come after all of them.
_FLUSH_ORDER = ("b:", "r:", "g:", "c:")


class WriteBehind(MutableMapping[str, Any]):
    """Reads through to ``backing`` (keys prefixed by ``namespace``); writes wait for :meth:`flush`.

    The values handed out must not be mutated (the deduper never does): the buffer keeps references.
    """

    __slots__ = ("_backing", "_dirty", "_namespace", "_reads")

    def __init__(self, backing: MutableMapping[str, Any], namespace: str = "",
                 reads: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        """``reads``: a cheaper view of ``backing``'s data to read from (a faust Table's store dict: the
        table's own lookups cost several Python calls each)."""
        self._backing = backing
        self._namespace = namespace
        self._dirty: dict[str, Any] = {}
        self._reads: Mapping[str, Any] = backing if reads is None else reads

    def __getitem__(self, key: str) -> Any:
        value = self._dirty.get(key, _MISSING)
        if value is _MISSING:
            return self._reads[self._namespace + key]
        if value is _DELETED:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._dirty.get(key, _MISSING)
        if value is _MISSING:
            return self._reads.get(self._namespace + key, default)
        return default if value is _DELETED else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _MISSING) is not _MISSING

    def __setitem__(self, key: str, value: Any) -> None:
        self._dirty[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._dirty[key] = _DELETED

    def __iter__(self) -> Iterator[str]:
        n = len(self._namespace)
        stored = (k[n:] for k in list(self._backing) if k.startswith(self._namespace))
        keys = {*stored, *self._dirty}
        return (k for k in sorted(keys) if k in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def view(self, prefix: str) -> MutableMapping[str, Any]:
        """:class:`PrefixedView` of this buffer, in one call a lookup instead of two (the deduper's hot path)."""
        return _BufferView(self, prefix)

    @property
    def pending(self) -> int:
        """Buffered writes (one per key)."""
        return len(self._dirty)

    def flush(self) -> list[tuple[str, Any]]:
        """Apply the buffered writes to ``backing`` and return them, in the order the changelog must get
        them: ``(namespaced key, value)``, value None for a deletion."""
        groups: dict[str, list[tuple[str, Any]]] = {prefix: [] for prefix in _FLUSH_ORDER}
        deletes: list[tuple[str, Any]] = []
        for key, value in self._dirty.items():
            full = self._namespace + key
            if value is _DELETED:
                self._backing.pop(full, None)
                deletes.append((full, None))
                continue
            self._backing[full] = value
            groups.setdefault(key[:2], []).append((full, value))
        self._dirty.clear()
        return [w for prefix in groups for w in groups[prefix]] + deletes


class _BufferView(PrefixedView[Any]):
    """A :class:`PrefixedView` of a :class:`WriteBehind` whose reads and writes go to the buffer's dicts."""

    __slots__ = ("_dirty", "_full", "_reads")

    def __init__(self, buffer: WriteBehind, prefix: str) -> None:
        super().__init__(buffer, prefix)
        self._dirty = buffer._dirty
        self._reads = buffer._reads
        self._full = buffer._namespace + prefix  # the key in ``reads``

    def get(self, key: str, default: Any = None) -> Any:
        value = self._dirty.get(self._prefix + key, _MISSING)
        if value is _MISSING:
            return self._reads.get(self._full + key, default)
        return default if value is _DELETED else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        value = self._dirty.get(self._prefix + key, _MISSING)
        if value is _MISSING:
            return self._full + key in self._reads
        return value is not _DELETED

    def __setitem__(self, key: str, value: Any) -> None:
        self._dirty[self._prefix + key] = value


@dataclass(frozen=True, slots=True)
class DedupeState:
    """The mutable mappings a :class:`~processors.dedupe.deduper.Deduper` reads and writes.

    In tests and the evaluation they are plain dicts (the defaults); in the stream processor they are
    faust Tables of one partition.
    """

    blocks: MutableMapping[str, list[str]] = field(default_factory=dict)
    records: MutableMapping[str, dict[str, Any]] = field(default_factory=dict)
    clusters: MutableMapping[str, str] = field(default_factory=dict)
    goldens: MutableMapping[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def over(cls, store: MutableMapping[str, Any]) -> DedupeState:
        """A state whose four mappings live in one store (a faust Table), keys prefixed by mapping."""
        return cls(PrefixedView(store, "b:"), PrefixedView(store, "r:"), PrefixedView(store, "c:"),
                   PrefixedView(store, "g:"))  # fmt: skip

    @classmethod
    def persisted(
        cls, store: MutableMapping[str, Any], block_keys: Callable[[dict[str, Any]], list[str]], max_block_size: int
    ) -> tuple[DedupeState, int]:
        """A state whose records and golden values live in ``store`` (keys ``r:<id>``, ``g:<id>``) and whose
        blocks and clusters are derived from them, in memory: ``(state, next arrival number)``.

        Only what cannot be derived is persisted: two writes per record instead of one per block key as
        well. Blocks are rebuilt in arrival order (:data:`SEQ`), so a block keeps the members it had when
        it reached ``max_block_size``. A record's cluster is the golden value that lists it; when a crash
        cut a merge before the absorbed golden value was deleted, two list it, and the smaller golden id
        is the survivor (a cluster is only ever absorbed into a smaller one): the stale value is deleted.
        """
        views = store.view if isinstance(store, WriteBehind) else lambda p: PrefixedView(store, p)
        records: MutableMapping[str, dict[str, Any]] = views("r:")
        goldens: MutableMapping[str, dict[str, Any]] = views("g:")
        blocks: dict[str, list[str]] = {}
        clusters: dict[str, str] = {}
        arrivals = sorted((feats.get(SEQ, 0), rid, feats) for rid, feats in records.items())
        for _, rid, feats in arrivals:
            for key in block_keys(feats):
                ids = blocks.get(key)
                if ids is None:
                    blocks[key] = [rid]
                elif len(ids) < max_block_size:
                    ids.append(rid)
        stale = []
        for gid in sorted(goldens):
            members = goldens[gid]["members"]
            if any(m in clusters for m in members):
                stale.append(gid)
                continue
            for member in members:
                clusters[member] = gid
        for gid in stale:
            del goldens[gid]
        next_seq = arrivals[-1][0] + 1 if arrivals else 0
        return cls(blocks, records, clusters, goldens), next_seq

    def to_json(self) -> str:
        """All four mappings as one JSON document (keys sorted: equal states give equal text)."""
        return json.dumps(
            {
                "blocks": dict(self.blocks),
                "records": dict(self.records),
                "clusters": dict(self.clusters),
                "goldens": dict(self.goldens),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> DedupeState:
        """A state of plain dicts from :meth:`to_json` output."""
        data = json.loads(text)
        try:
            return cls(data["blocks"], data["records"], data["clusters"], data["goldens"])
        except (KeyError, TypeError) as exc:
            raise DedupeStateError(f"not a dedupe state document: missing {exc}") from None

    def sizes(self) -> dict[str, dict[str, float]]:
        """Entries and mean JSON bytes (key + value) per mapping: what a changelog topic would hold."""
        out: dict[str, dict[str, float]] = {}
        for name in ("blocks", "records", "clusters", "goldens"):
            mapping: MutableMapping[str, Any] = getattr(self, name)
            total = sum(len(k) + len(json.dumps(v, separators=(",", ":"))) for k, v in mapping.items())
            out[name] = {"entries": len(mapping), "mean_bytes": total / len(mapping) if mapping else 0.0}
        return out
