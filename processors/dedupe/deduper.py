"""The deduper: one record at a time, in arrival order, against the state of the records seen before.

Per record (:meth:`Deduper.process`):

1. its features and block keys; the records sharing an open block are its candidates;
2. each candidate is compared (:class:`~processors.dedupe.scoring.Scorer`); matches are grouped by the
   candidate's cluster, the strongest match per cluster kept (deterministic before fuzzy, then score);
3. the record joins the clusters it matched, strongest first. Joining a cluster is refused when the
   union would hold two conflicting birth dates (only while the birth-date veto is on) or exceed
   ``max_cluster_size``; when the record matches several
   clusters they are merged (the record bridges them);
4. the golden id of a cluster is the **smallest external id of its members** (string order), so it is a
   function of the cluster, not of which member arrived first: a record that matched nothing founds a
   cluster under its own id; one that joined clusters gives the union the smallest of their golden ids
   and its own id. Every other golden id involved is absorbed (its members re-pointed) and reported as
   ``(absorbed, survivor)``, including the golden id of a cluster joined by a record with a smaller id.
   A golden id therefore only ever disappears into a smaller one, and never comes back.

Arrival order (which can differ between two runs of the same data: the records of a shard come from
several raw partitions) decides neither the golden ids nor the golden records (survivorship is a maximum
over a total order, see :mod:`processors.dedupe.golden`) nor, as long as no block is closed and no join
is refused, the clusters: those are then the connected components of the match graph, and every pair
sharing an open block is compared (in id order, so the comparison is the same whichever came first).
A closed block (its first ``max_block_size`` arrivals are its members) and a refused join (birth dates,
cluster size; the first cluster to take a bridging record keeps it, clusters are never split) still
depend on arrival order; they are rare (none in the shuffled runs of the demo data's 20,000 customers).

A record whose id is already known is an update (CDC): its features and block memberships are
replaced, its cluster's golden record is rebuilt from the members, and it may bridge to further
clusters. Clusters are never split: a wrong merge needs an operator, which is why every merge and
every vetoed near-merge is returned as evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from processors.dedupe.blocking import BlockKeyer, block_passes
from processors.dedupe.config import DedupeConfig
from processors.dedupe.exceptions import DedupeStateError, RecordWithoutId
from processors.dedupe.features import FIELDS, ID_FIELDS, Features, extract
from processors.dedupe.golden import Golden, Survivor, golden_record
from processors.dedupe.scoring import Comparison, Scorer
from processors.dedupe.state import SEQ, DedupeState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DedupeResult:
    """What processing one record decided.

    ``merged_into``: the golden id of the cluster the record joined (its own id when it is the cluster's
    smallest, the joined clusters then absorbed), None when it founded a cluster (or, for an update,
    matched no further cluster). ``evidence``: one plain dict per merge decision and per vetoed
    or refused near-merge (rule, score, matched record id, its golden id, decision). ``cluster_merges``:
    ``(absorbed golden id, surviving golden id)`` pairs the sink must re-point children for.
    ``closed_blocks``: how many of the record's block keys were closed (oversized).
    """

    record_id: str
    golden_id: str
    golden_record: dict[str, Any]
    merged_into: str | None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    cluster_merges: list[tuple[str, str]] = field(default_factory=list)
    closed_blocks: int = 0
    updated: bool = False
    absorbed: list[str] = field(default_factory=list)


def _strength(c: Comparison) -> tuple[int, float]:
    return (0 if c.rule == "fuzzy" else 1, c.score)


def _strongest_first(item: tuple[str, tuple[Comparison, str]]) -> tuple[int, float, str]:
    """Sort key of matched clusters: deterministic before fuzzy, higher score first, then golden id."""
    deterministic, score = _strength(item[1][0])
    return (-deterministic, -score, item[0])


class Deduper:
    """Incremental entity resolution of one entity over a :class:`DedupeState`; not thread-safe."""

    def __init__(self, config: DedupeConfig | None = None, state: DedupeState | None = None, *,
                 next_seq: int | None = None) -> None:  # fmt: skip
        self.config = config or DedupeConfig()
        self.state = state if state is not None else DedupeState()
        self.id_field = ID_FIELDS[self.config.entity]
        self.keyer = BlockKeyer(self.config)
        self.scorer = Scorer(self.config)
        self.survivor = Survivor(self.config)
        known = FIELDS[self.config.entity]
        wanted = {c.field for c in self.config.effective_comparisons()} | set(self.config.effective_vetoes())
        wanted |= {p.field for spec in block_passes(self.config) for p in spec.parts}
        #: Fields the config compares or blocks on that have no built-in feature key.
        self.extra_fields = tuple(sorted(f for f in wanted if f not in known))
        #: Arrival number of the next new record (see :data:`~processors.dedupe.state.SEQ`); by default one
        #: past the state's last (a scan: pass it when the state is large).
        if next_seq is None:
            next_seq = 1 + max((f.get(SEQ, -1) for f in self.state.records.values()), default=-1)
        self.next_seq = next_seq
        #: Whether the blocks are derived in memory (:meth:`over_store`): their keys' order then matters nowhere.
        self.derived_blocks = False

    @classmethod
    def over_store(cls, config: DedupeConfig, store: MutableMapping[str, Any]) -> Deduper:
        """A deduper whose records and golden values persist in ``store`` (one faust Table's shard) and whose
        blocks and clusters are derived from them (:meth:`DedupeState.persisted`)."""
        deduper = cls(config, DedupeState(), next_seq=0)
        # Its blocks are derived in memory and never stored: an unkeyed digest of their keys would hide nothing
        # (the features they are made of are in the same memory) and cost a BLAKE2b hash per key per record.
        # Under a pepper (sealed state, or dedupe.block_key_env) they stay keyed hashes, as documented.
        deduper.keyer = BlockKeyer(config, hashed=config.block_key_secret is not None)
        deduper.derived_blocks = True
        deduper.state, deduper.next_seq = DedupeState.persisted(store, deduper.keyer.keys, config.max_block_size)
        return deduper

    def process(self, record: Mapping[str, Any], *, parent_golden_id: str | None = None) -> DedupeResult:
        """Resolve one clean record (an ``account`` or ``contact`` dict as the mapper produces it).

        For contacts, ``parent_golden_id`` (the parent account's golden id, when known) replaces
        ``customer_id`` as the parent feature, so contacts of merged accounts meet.
        """
        rid = record.get(self.id_field)
        if not rid:
            raise RecordWithoutId(self.config.entity, self.id_field, record.get("source_position"))
        rid = str(rid)
        feats = extract(record, self.config.entity, self.extra_fields)
        if parent_golden_id is not None:
            feats["pa"] = parent_golden_id
        st = self.state
        old = st.records.get(rid)
        if old is not None and SEQ in old:
            feats[SEQ] = old[SEQ]
        else:
            feats[SEQ] = self.next_seq
            self.next_seq += 1
        candidates, closed = self._block(rid, feats, old)
        st.records[rid] = feats
        own_gid = st.clusters.get(rid)
        if own_gid is not None and own_gid not in st.goldens:
            # A crash cut the changelog between this record's writes; its replay founds the cluster anew.
            own_gid = None
        evidence: list[dict[str, Any]] = []
        matches = self._match(rid, feats, candidates, own_gid, evidence)

        if own_gid is None:
            golden = self.survivor.single(rid, feats)
        else:
            evidence.append({"rule": "external_id", "score": None, "matched_id": rid, "golden_id": own_gid,
                             "decision": "updated"})  # fmt: skip
            golden = self.survivor.rebuild((m, self._features(m)) for m in self._golden(own_gid)["members"])
        joined: list[str] = []
        for gid, (comparison, cand) in sorted(matches.items(), key=_strongest_first):
            other = self._golden(gid)
            ev = comparison.evidence(cand, gid)
            refusal = self._refusal(golden, other)
            if refusal is None:
                golden = self.survivor.merge(golden, other, self._features)
                joined.append(gid)
            ev["decision"] = "merged" if refusal is None else "refused"
            ev["veto"] = ev["veto"] or refusal
            evidence.append(ev)

        if joined or own_gid:
            involved = sorted({*joined, *([own_gid] if own_gid else [])})
            # The smallest member id of the union: each involved golden id is its cluster's smallest member.
            survivor = min(involved[0], rid)
            merges = [(gid, survivor) for gid in involved if gid != survivor]
            absorbed = [self._golden(gid)["members"] for gid, _ in merges]
            # Every golden id the cluster ever absorbed stays in its golden value, so an update of the cluster
            # (a record replayed after a crash cut between the state and the output, for one) still tells the
            # sink which accounts to fold into it; the sink's merge is idempotent.
            history = sorted({g for gid in involved for g in self._golden(gid).get("absorbed", ())}
                             | {gid for gid, _ in merges})  # fmt: skip
            if history:
                golden["absorbed"] = history
        else:  # most records: a cluster of their own, nothing absorbed
            survivor, merges, absorbed = rid, [], []
        # Write order matters when the state is a changelog a crash may cut anywhere (see state.py): the
        # new golden value first, then the members pointing at it, the absorbed golden values last. Any
        # prefix of these writes leaves every cluster reference resolvable.
        st.goldens[survivor] = golden
        for members in absorbed:
            for member in members:
                if member != rid:
                    st.clusters[member] = survivor
        st.clusters[rid] = survivor
        for gid, _ in merges:
            del st.goldens[gid]
        if merges:
            log.debug("clusters merged", extra={"stage": "dedupe", "entity": self.config.entity,
                                                "merges": len(merges)})  # fmt: skip
        return DedupeResult(
            record_id=rid,
            golden_id=survivor,
            golden_record=golden_record(survivor, golden),
            merged_into=survivor if joined else None,
            evidence=evidence,
            cluster_merges=merges,
            closed_blocks=closed,
            updated=old is not None,
            absorbed=golden.get("absorbed", []),
        )

    def forget(self, rid: str) -> str | None:
        """Remove a source record deleted at the source: from its blocks (a later record no longer meets it),
        and from its cluster, whose golden value is rebuilt from the members left (or dropped with its last
        member). The cluster keeps its golden id even when that was the deleted record's, as the target's row
        does; a cluster whose remaining members no longer match each other is not split. Returns the golden id
        of the cluster it left, or None when this deduper does not know the record."""
        st = self.state
        feats = st.records.get(rid)
        if feats is None:
            return None
        self._leave_blocks(rid, self.keyer.keys(feats))
        gid = st.clusters.get(rid)
        old = st.goldens.get(gid) if gid is not None else None
        if gid is not None and old is not None:
            members = [m for m in old["members"] if m != rid]
            if members:
                golden = self.survivor.rebuild((m, self._features(m)) for m in members)
                if old.get("absorbed"):
                    golden["absorbed"] = old["absorbed"]
                st.goldens[gid] = golden
            else:
                del st.goldens[gid]
        if rid in st.clusters:
            del st.clusters[rid]
        del st.records[rid]
        return gid

    def features_of(self, record: Mapping[str, Any]) -> Features:
        """The feature dict this deduper extracts from a clean record (training, evaluation)."""
        return extract(record, self.config.entity, self.extra_fields)

    def golden(self, golden_id: str) -> dict[str, Any] | None:
        """The current golden record of ``golden_id`` (None if there is no such cluster)."""
        value = self.state.goldens.get(golden_id)
        return None if value is None else golden_record(golden_id, value)

    # ------------------------------------------------------------------------------------------ steps

    def _block(self, rid: str, feats: Features, old: Features | None) -> tuple[set[str], int]:
        """Candidates from the record's open blocks; joins the open blocks, leaves blocks of old keys."""
        st, cap = self.state, self.config.max_block_size
        keys = self.keyer.key_set(feats) if self.derived_blocks else self.keyer.keys(feats)
        candidates: set[str] = set()
        closed = 0
        in_memory = type(st.blocks) is dict
        for key in keys:
            ids = st.blocks.get(key)
            if ids is None:
                st.blocks[key] = [rid]
            elif len(ids) >= cap:
                closed += 1
            else:
                candidates.update(ids)
                if old is not None and rid in ids:  # (a new record is in no block yet)
                    continue
                if in_memory:
                    ids.append(rid)
                else:  # a stored mapping persists what is assigned to it, not a change of a value read
                    st.blocks[key] = [*ids, rid]
        if old is not None:
            self._leave_blocks(rid, set(self.keyer.keys(old)).difference(keys))
        candidates.discard(rid)
        return candidates, closed

    def _leave_blocks(self, rid: str, keys: Iterable[str]) -> None:
        """Take ``rid`` out of the blocks of ``keys``; a block left empty goes."""
        blocks = self.state.blocks
        for key in keys:
            ids = blocks.get(key)
            if ids is not None and rid in ids:
                rest = [i for i in ids if i != rid]
                if rest:
                    blocks[key] = rest
                else:
                    del blocks[key]

    def _match(
        self, rid: str, feats: Features, candidates: set[str], own_gid: str | None, evidence: list[dict[str, Any]]
    ) -> dict[str, tuple[Comparison, str]]:
        """The strongest match per candidate cluster (other than the record's own); vetoes go to evidence."""
        st = self.state
        best: dict[str, tuple[Comparison, str]] = {}
        for cand in sorted(candidates):
            cand_feats = st.records.get(cand)
            gid = st.clusters.get(cand)
            if cand_feats is None or gid is None or gid not in st.goldens:
                # Only a record whose processing a crash cut short: its replay comes and re-links it.
                continue
            # In id order, whichever of the two arrived first: the decision is a function of the pair.
            first, second = (feats, cand_feats) if rid < cand else (cand_feats, feats)
            comparison = self.scorer.match(first, second)
            if comparison is None:
                continue
            if comparison.veto is not None:
                evidence.append({**comparison.evidence(cand, gid), "decision": "vetoed"})
                continue
            if gid == own_gid:
                continue
            held = best.get(gid)
            if held is None or _strength(comparison) > _strength(held[0]):
                best[gid] = (comparison, cand)
        return best

    def _refusal(self, a: Golden, b: Golden) -> str | None:
        """Why clusters ``a`` and ``b`` must not be merged (None when they may be)."""
        if self.scorer.births_conflict([*a["births"], *b["births"]]):
            return "birth_date"
        if len({*a["members"], *b["members"]}) > self.config.max_cluster_size:
            return "cluster_size"
        return None

    def _features(self, rid: str) -> Features:
        feats = self.state.records.get(rid)
        if feats is None:
            raise DedupeStateError(f"record {rid} is in a block or cluster but has no features")
        return feats

    def _golden(self, gid: str) -> Golden:
        golden = self.state.goldens.get(gid)
        if golden is None:
            raise DedupeStateError(f"cluster {gid} has members but no golden value")
        return golden
