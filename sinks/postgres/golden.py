"""Cluster merges of golden records in one batch of accounts (or contacts), resolved before any SQL runs.

An account record with dedupe on carries ``golden_id`` (its cluster's golden record) and
``merged_golden_ids`` (clusters its arrival merged into ``golden_id``); a contact with contact dedupe on
carries the same as ``contact_golden_id`` and ``merged_contact_golden_ids``
(:data:`crmflow.entities.GOLDEN_ID_FIELDS`), and goes through the same plan. Within a batch merges can chain
(A into S in one record, S into R in a later one), and a record re-delivered after its cluster was merged
may still carry an absorbed golden id. :func:`plan_goldens` follows both (the batch's merges and the
chains already in ``crm.golden_merges``) to each golden id's final survivor, so the sink stages every
record under the golden id whose row will still exist when the batch commits, and re-points each absorbed
row straight to that row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crmflow.entities import GOLDEN_ID_FIELDS

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GoldenMerge:
    """One absorbed golden id: ``survivor`` is the golden id of the record that bridged the clusters
    (logged as such), ``final`` the end of the chain whose row takes over its children and xref rows."""

    seq: int
    absorbed: str
    survivor: str
    final: str
    record_id: str | None
    run_id: str | None
    evidence: str | None


@dataclass
class GoldenPlan:
    """``golden``: seq → golden id to stage instead of the record's own (only those that changed);
    ``stale``: seqs whose golden id was absorbed by an earlier batch (xref entry only, no row values);
    ``merges``: the absorbed golden ids of the batch, first mention first; ``dedupe``: some record of
    the batch has a golden id."""

    dedupe: bool = False
    golden: dict[int, str] = field(default_factory=dict)
    stale: set[int] = field(default_factory=set)
    merges: list[GoldenMerge] = field(default_factory=list)

    def params(self) -> dict[str, list[str | None]]:
        """The arrays :data:`~sinks.postgres.tables.MERGE_GOLDENS_SQL` takes."""
        return {
            "absorbed": [m.absorbed for m in self.merges],
            "survivor": [m.survivor for m in self.merges],
            "final": [m.final for m in self.merges],
            "record": [m.record_id for m in self.merges],
            "run": [m.run_id for m in self.merges],
            "evidence": [m.evidence for m in self.merges],
        }


def golden_ids(values: Iterable[Mapping[str, Any]], entity: str = "account") -> list[str]:
    """Every golden id a batch of ``entity`` records mentions (own and merged), sorted; empty when dedupe is
    off."""
    own, merged, _ = GOLDEN_ID_FIELDS[entity]
    ids: set[str] = set()
    for value in values:
        gid = value.get(own)
        if gid:
            ids.add(str(gid))
            ids.update(str(a) for a in value.get(merged) or () if a)
    return sorted(ids)


def plan_goldens(records: Iterable[tuple[int, Mapping[str, Any]]], known: Mapping[str, str],
                 entity: str = "account") -> GoldenPlan:
    """Resolve the golden ids of ``records`` (``(seq, value)`` in batch order, of ``entity``) to their final
    survivors.

    ``known`` maps golden ids absorbed by earlier batches to the end of their chain in the database
    (``crm.golden_merges``). The batch's own merges are applied on top, in order; an id absorbed twice
    keeps its first survivor (a golden id is absorbed once)."""
    own, merged, record_id = GOLDEN_ID_FIELDS[entity]
    rows: list[tuple[int, str]] = []
    edges: dict[str, str] = dict(known)
    mentioned: list[tuple[int, str, str, Mapping[str, Any]]] = []
    in_batch: set[str] = set()
    for seq, value in records:
        gid = value.get(own)
        if not gid:
            continue
        gid = str(gid)
        rows.append((seq, gid))
        for absorbed in value.get(merged) or ():
            absorbed = str(absorbed)
            if not absorbed or absorbed == gid or absorbed in in_batch:
                continue
            in_batch.add(absorbed)
            edges[absorbed] = gid
            mentioned.append((seq, absorbed, gid, value))

    finals: dict[str, tuple[str, bool]] = {}

    def final(gid: str) -> tuple[str, bool]:
        """The end of ``gid``'s chain, and whether the chain passes a golden id absorbed before."""
        if gid in finals:
            return finals[gid]
        seen = [gid]
        cur = gid
        while (nxt := edges.get(cur)) is not None:
            if nxt in seen:  # corrupt input: a golden id absorbed into a cluster it absorbed
                logger.warning("golden ids %s merge into each other; stopping at %s", seen, cur)
                break
            seen.append(nxt)
            cur = nxt
        finals[gid] = (cur, any(g in known for g in seen))
        return finals[gid]

    plan = GoldenPlan(dedupe=bool(rows))
    for seq, gid in rows:
        target, stale = final(gid)
        if target != gid:
            plan.golden[seq] = target
        if stale:
            plan.stale.add(seq)
    for seq, absorbed, survivor, value in mentioned:
        target = final(survivor)[0]
        if target == absorbed:
            continue
        plan.merges.append(
            GoldenMerge(
                seq,
                absorbed,
                survivor,
                target,
                _opt_str(value.get(record_id)),
                _opt_str(value.get("run_id")),
                _json_or_none(value.get("match_evidence")),
            )
        )
    return plan


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _json_or_none(value: Any) -> str | None:
    """The evidence as given when it is JSON (the merge log must not fail a batch on it), else None."""
    if value is None:
        return None
    try:
        json.loads(value)
    except (TypeError, ValueError):
        return None
    return str(value)
