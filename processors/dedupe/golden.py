"""Survivorship: the golden record of a cluster, built and merged without re-reading its members.

Fields are picked in groups (:data:`GROUPS`): every group's values come from one member, the one with the
highest *rank* under the group's criteria (``DedupeConfig.survivorship``). A rank is a JSON list
``[non-null fields, criterion values..., record id]``; the highest list wins, so a null never beats a
value and ties go to the larger record id. Because picking is a maximum over a total order, a golden
value can be merged with another one group by group (cluster merges cost O(fields), not O(members)),
and any order of arrivals and merges gives the same golden record.

A golden value (what the ``goldens`` table holds per golden id) is a plain dict::

    {"members": [record ids, sorted], "record": {target field: value}, "picks": {group: rank},
     "births": [distinct birth dates of the members]}

A one-member cluster (most of them) stores no ``picks``: they are its member's ranks, computed from its
features when it first merges (:meth:`Survivor.merge`), not for every record that arrives.

``births`` enforces the cluster invariant "at most one birth date": a record or cluster that would add
a second one is never merged in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from functools import lru_cache
from typing import Any, Final

from processors.dedupe.config import Criterion, DedupeConfig, DedupeEntity
from processors.dedupe.features import FIELDS, Features, first_name_form

Golden = dict[str, Any]

#: Field groups per entity: group name → feature keys picked together.
GROUPS: Final[dict[DedupeEntity, dict[str, tuple[str, ...]]]] = {
    "account": {
        "name": ("fn", "ln"),
        "address": ("st", "ci", "pc", "co", "rg"),
        "email": ("em",),
        "phone": ("ph",),
        "birth_date": ("bd",),
        "customer_since": ("cs",),
    },
    "contact": {"name": ("fn", "ln"), "email": ("em",), "phone": ("ph",), "job_title": ("jt",), "parent": ("pa",)},
}
_NULL_DATE_LATEST: Final = 10**7  # beyond any ordinal: a missing date is "latest" for `earliest`


@lru_cache(maxsize=1 << 15)
def _ordinal(iso: str | None) -> int:
    if not iso:
        return 0
    try:
        return date.fromisoformat(iso).toordinal()
    except ValueError:
        return 0


class Survivor:
    """Builds, merges and renders golden values for one config."""

    def __init__(self, config: DedupeConfig) -> None:
        self.config = config
        self.groups = GROUPS[config.entity]
        self.names = {key: field for field, key in FIELDS[config.entity].items()}
        self.group_fields = tuple((key, self.names[key]) for keys in self.groups.values() for key in keys)
        self.criteria: dict[str, tuple[Criterion, ...]] = {
            group: getattr(config.survivorship, group) for group in self.groups
        }
        prio = config.source_priority
        self.priority = {source: len(prio) - i for i, source in enumerate(prio)}
        self._rankings = tuple((group, keys, group == "name", self.criteria[group])
                               for group, keys in self.groups.items())  # fmt: skip

    def ranks(self, record_id: str, feats: Features) -> dict[str, list[Any]]:
        """The rank of one member for every group (higher wins)."""
        since = _ordinal(feats.get("cs"))
        values: dict[Criterion, int] = {
            "source_priority": self.priority.get(feats.get("src", ""), 0),
            "most_recent": since,
            "earliest": -since if since else -_NULL_DATE_LATEST,
        }
        first = feats.get("fn")
        full_first = 1 if first and len(first_name_form(first)) > 1 else 0
        out: dict[str, list[Any]] = {}
        held = feats.__contains__  # features hold non-null values only
        for group, keys, is_name, criteria in self._rankings:
            present = sum(map(held, keys))
            complete = present + full_first if is_name else present
            rank: list[Any] = [present]
            for criterion in criteria:
                rank.append(complete if criterion == "most_complete" else values[criterion])
            rank.append(record_id)
            out[group] = rank
        return out

    def single(self, record_id: str, feats: Features) -> Golden:
        """The golden value of a one-member cluster (without ``picks``: see the module docs)."""
        get = feats.get
        record = {field: get(key) for key, field in self.group_fields}
        first, last = record.get("first_name"), record.get("last_name")  # _full_name, inline: every record
        record["full_name"] = f"{first} {last}" if first and last else first or last or None
        birth = get("bd")
        return {
            "members": [record_id],
            "record": record,
            "births": [birth] if birth else [],
        }

    def picks(self, golden: Golden, features: Callable[[str], Features]) -> dict[str, list[Any]]:
        """The ``picks`` of a golden value; a one-member cluster's are its member's ranks (``features``: the
        features of a record id)."""
        picks = golden.get("picks")
        if picks is not None:
            return picks  # type: ignore[no-any-return]
        members = golden["members"]
        if len(members) != 1:
            raise ValueError(f"the golden value of a cluster of {len(members)} members has no picks")
        return self.ranks(members[0], features(members[0]))

    def merge(self, a: Golden, b: Golden, features: Callable[[str], Features]) -> Golden:
        """The golden value of the union of two clusters (new dicts; ``a`` and ``b`` are not changed).
        ``features``: a member's features, for the picks of a one-member cluster."""
        record = dict(a["record"])
        a_picks, b_picks = self.picks(a, features), self.picks(b, features)
        picks = dict(a_picks)
        for group, keys in self.groups.items():
            if b_picks[group] > a_picks[group]:
                picks[group] = b_picks[group]
                for key in keys:
                    field = self.names[key]
                    record[field] = b["record"].get(field)
        self._full_name(record)
        return {
            "members": sorted({*a["members"], *b["members"]}),
            "record": record,
            "picks": picks,
            "births": sorted({*a["births"], *b["births"]}),
        }

    def rebuild(self, members: Iterable[tuple[str, Features]]) -> Golden:
        """The golden value of a cluster from its members' features (after a member was updated)."""
        golden: Golden | None = None
        held = dict(members)
        for record_id, feats in held.items():
            one = self.single(record_id, feats)
            golden = one if golden is None else self.merge(golden, one, held.__getitem__)
        if golden is None:
            raise ValueError("a cluster has at least one member")
        return golden

    @staticmethod
    def _full_name(record: dict[str, Any]) -> None:
        parts = (record.get("first_name"), record.get("last_name"))
        record["full_name"] = " ".join(p for p in parts if p) or None


def golden_record(golden_id: str, golden: Golden) -> dict[str, Any]:
    """The golden record as the sink sees it: ``golden_id``, member count and the surviving fields.

    Dates are ISO strings (the state is JSON); the contact's parent is under ``customer_id``.
    """
    return {"golden_id": golden_id, "member_count": len(golden["members"]), **golden["record"]}
