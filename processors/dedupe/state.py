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
serialises JSON can hold them. The deduper never mutates a value it read: it builds a new value and
assigns it (``table[key] = value``), which is what a changelog-backed table needs to persist a change.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from processors.dedupe.exceptions import DedupeStateError


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
