"""The processor's work as pure batch functions: raw legacy records → mapped entities, and clean accounts →
golden records. No Kafka here; an engine (the transactional runtime, or faust) feeds batches in and sends
what comes out.

- Raw records (``<prefix>.raw.<source>``) are mapped by the compiled mappers. Mapped records go to
  ``<prefix>.mapped.<entity>`` keyed by the source key, masked in the staging and test profiles. With
  deduplication on, clean accounts go unmasked to ``<prefix>.dedupe.account`` instead, keyed by
  :func:`~processors.dedupe.shard_key`, so every possible duplicate of a person reaches one partition;
  with a ``cipher`` (:mod:`processors.sealing`) they are sealed there, and so is every state write.
- Clean accounts (``<prefix>.dedupe.account``) are resolved by one :class:`~processors.dedupe.Deduper`
  per partition; each becomes a golden-record update on the mapped account topic (same shard key, so the
  sink sees one cluster's updates in order). The deduper's writes come out as state writes of the
  partition (the records' features and the golden values, in the order that keeps any prefix a valid
  state); the engine persists them with the outputs and offsets of the same batch.
- With contact deduplication on as well (``dedupe.contacts``), clean contacts take the same path through
  their own topic (``<prefix>.dedupe.contact``, keyed by the contact's shard key), their own deduper per
  partition and their own changelog (``<prefix>.dedupe.contact.state``): each becomes a golden-contact
  update on the mapped contact topic (``contact_golden_id``, ``merged_contact_golden_ids``,
  ``match_evidence``; ``golden_id`` stays the parent account's, which the sink fills). The parent feature
  of a contact is its own ``customer_id``, not the parent account's golden id: that lives in the state of
  the account partitions, which a contact partition cannot read (two duplicate contacts of two merged
  accounts therefore meet only on their other fields, as the contact comparisons weigh them).

- Change events of captured tables (``<prefix>.cdc.<schema>.<table>``, :mod:`processors.cdc`) become the
  LegacyRecords of their table source and are mapped the same way; the mapped record carries the change's
  ``source_lsn`` and ``unchanged_fields``, and a DELETE becomes a record with ``deleted`` set (its id only).

A record that cannot be mapped or resolved becomes a :class:`~crmflow.runtime.Rejection` naming the stage,
rule and field: it never fails its batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from crmflow.pii import SealedDataError, StateCipher
from crmflow.runtime import BatchStage, InRecord, OutRecord, Rejection, StageOutput, StateWrite
from crmflow.runtime.stage import Decoder, Encoder
from crmflow.topics import SOURCE_COMMIT_HEADER
from processors.batch import MapFn, map_batch
from processors.cdc import CdcSource, ChangeFormatError, delete_record, envelope_to_legacy
from processors.dedupe import DedupeConfig, DedupeError, Deduper, DedupeResult, shard_key
from processors.dedupe.state import WriteBehind
from processors.dedupe.stream import golden_account, golden_contact
from processors.masking import Masker

STAGE = "process"
DEDUPE_STAGE = "dedupe"


@dataclass
class Resolver:
    """The deduplication of one entity: its dedupe topic (input, keyed by shard key), the changelog of its
    state, its matcher, and one deduper per partition of the topic (with the write-behind buffer whose
    flushes are the partition's state writes)."""

    entity: str
    topic: str
    changelog: str
    config: DedupeConfig
    shards: dict[int, tuple[Deduper, WriteBehind]] = field(default_factory=dict)


class ProcessStage(BatchStage):
    """Cleanse and map raw records and, with a matcher, resolve clean accounts into golden records."""

    name = STAGE
    skip_tombstones = True  # the tombstone after a CDC delete (raw and dedupe topics have none)

    def __init__(
        self,
        *,
        raw_topics: Mapping[str, str],
        mappers: Mapping[str, MapFn],
        masker: Masker,
        mapped_topics: Mapping[str, str],
        decoders: Mapping[str, Decoder],
        encoders: Mapping[str, Encoder],
        dedupe: DedupeConfig | None = None,
        dedupe_topic: str | None = None,
        changelog: str | None = None,
        contact_dedupe: DedupeConfig | None = None,
        contact_topic: str | None = None,
        contact_changelog: str | None = None,
        cdc_topics: Mapping[str, CdcSource] | None = None,
        run_id: str = "cdc",
        cipher: StateCipher | None = None,
    ) -> None:
        """``raw_topics``: topic → source name's entity; ``mapped_topics``: entity → topic; ``decoders`` per
        input topic, ``encoders`` per output topic. ``dedupe`` with ``dedupe_topic`` and ``changelog`` turns on
        the resolution of accounts; ``contact_dedupe`` (a contact matcher) with ``contact_topic`` and
        ``contact_changelog`` that of contacts (only with accounts'). ``cdc_topics``: change topic → the table
        source it feeds; ``run_id`` is the run id of the changes' records. ``cipher`` seals the state writes
        (each with its key as context) and opens the restored ones."""
        self._cdc = dict(cdc_topics or {})
        self._cdc_run = run_id
        self._raw_entities = dict(raw_topics)
        self._mappers = mappers
        self._masker = masker
        self._mapped = dict(mapped_topics)
        self._decoders = dict(decoders)
        self._encoders = dict(encoders)
        resolvers: list[Resolver] = []
        if dedupe is not None and dedupe_topic and changelog:
            resolvers.append(Resolver("account", dedupe_topic, changelog, dedupe))
            if contact_dedupe is not None and contact_topic and contact_changelog:
                if contact_dedupe.entity != "contact":
                    raise ValueError("contact_dedupe must be a contact matcher (DedupeConfig.for_contacts())")
                resolvers.append(Resolver("contact", contact_topic, contact_changelog, contact_dedupe))
        #: Dedupe topic → its resolver; and entity → the same.
        self._resolvers = {r.topic: r for r in resolvers}
        self._by_entity = {r.entity: r for r in resolvers}
        self.changelogs = {r.topic: r.changelog for r in resolvers}
        # Accounts first: with dedupe an account reaches its mapped topic one hop after its children (through the
        # dedupe topic), so while the accounts' raw and dedupe topics hold a backlog the other topics wait, and a
        # snapshot's children find their golden account written instead of being parked and written twice
        # (100k customers: 5,000 parked instead of 100,000).
        if "account" in self._by_entity:
            self.first_topics = [t for t, e in self._raw_entities.items() if e == "account"] + [
                self._by_entity["account"].topic]
        self._source_entities: dict[str, str] = {}
        self._dedupe_partitions = 1
        self._cipher = cipher
        self._commits: dict[int, bytes] = {}  # batch index → the change's source commit time (the header value)

    def with_partitions(self, partitions: int) -> ProcessStage:
        """How many partitions the dedupe topic gets when the runtime has to create it."""
        self._dedupe_partitions = partitions
        return self

    def internal_topics(self) -> Mapping[str, int]:
        return dict.fromkeys(self._resolvers, self._dedupe_partitions)

    def with_sources(self, source_entities: Mapping[str, str]) -> ProcessStage:
        """Which entity each source name feeds (the raw records carry their source name)."""
        self._source_entities = dict(source_entities)
        return self

    # ------------------------------------------------------------------------------------- contract

    @property
    def topics(self) -> Sequence[str]:
        return [*self._raw_entities, *self._cdc, *self._resolvers]

    def decoder(self, topic: str) -> Decoder:
        return self._decoders[topic]

    def encoder(self, topic: str) -> Encoder:
        return self._encoders[topic]

    def entity_of(self, record: InRecord) -> str:
        resolver = self._resolvers.get(record.topic)
        if resolver is not None:
            return resolver.entity
        cdc = self._cdc.get(record.topic)
        return cdc.entity if cdc is not None else self._raw_entities.get(record.topic, "unknown")

    def process(self, batch: Sequence[InRecord]) -> StageOutput:
        out = StageOutput()
        raw = [(i, r) for i, r in enumerate(batch) if r.topic not in self._resolvers]
        if raw:
            self._map(batch, raw, out)
        for topic, resolver in self._resolvers.items():
            clean = [(i, r) for i, r in enumerate(batch) if r.topic == topic]
            if clean:
                self._resolve(resolver, clean, out)
        return out

    # ---------------------------------------------------------------------------------------- state

    def restore(self, topic: str, partition: int, entries: Mapping[bytes, bytes]) -> None:
        """The deduper of dedupe topic ``topic``'s ``partition``, rebuilt from its persisted records and golden
        values (the partition of that topic's own changelog)."""
        resolver = self._resolvers.get(topic)
        if resolver is None:
            return
        cipher = self._cipher
        try:
            store = {key.decode(): orjson.loads(value if cipher is None else cipher.open(value, key))
                     for key, value in entries.items()}
        except SealedDataError as exc:
            raise SealedDataError(f"dedupe state of partition {partition} ({resolver.changelog}): {exc}") from None
        buffer = WriteBehind(store)
        resolver.shards[partition] = (Deduper.over_store(resolver.config, buffer), buffer)

    def release(self, topic: str, partitions: Iterable[int]) -> None:
        resolver = self._resolvers.get(topic)
        if resolver is None:
            return
        for p in partitions:
            resolver.shards.pop(p, None)

    def _shard(self, resolver: Resolver, partition: int) -> tuple[Deduper, WriteBehind]:
        held = resolver.shards.get(partition)
        if held is None:  # an engine that never restored it: the partition starts empty
            self.restore(resolver.topic, partition, {})
            held = resolver.shards[partition]
        return held

    # -------------------------------------------------------------------------------------- mapping

    def _changes(
        self, raw: list[tuple[int, InRecord]], out: StageOutput
    ) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, int], dict[str, list[tuple[int, bytes, dict[str, Any]]]]]:
        """The LegacyRecords of ``raw`` (change events converted), the LSN of each change by batch index, and
        per entity the deletes' records (not mapped: they carry the id only); unreadable changes are rejected.
        The source commit time of each change (op c, u, d; not a snapshot read) goes to ``self._commits``."""
        legacy: list[tuple[int, dict[str, Any]]] = []
        lsns: dict[int, int] = {}
        deletes: dict[str, list[tuple[int, bytes, dict[str, Any]]]] = {}
        for index, rec in raw:
            cdc = self._cdc.get(rec.topic)
            if cdc is None:
                legacy.append((index, rec.value))
                continue
            try:
                change = envelope_to_legacy(rec.value, source=cdc.source, entity=cdc.entity, key=cdc.key,
                                            run_id=self._cdc_run, origin=rec.origin)
            except ChangeFormatError as exc:
                out.rejections.append(Rejection(index, STAGE, "cdc_format", str(exc), None, cdc.entity,
                                                self._cdc_run, rec.origin))
                out.count(STAGE, cdc.entity, "rejected")
                continue
            committed = (rec.value.get("source") or {}).get("ts_ms")
            if committed is not None and rec.value.get("op") != "r":
                self._commits[index] = str(committed).encode()
            if change.deleted:
                out.count(STAGE, cdc.entity, "in")
                if cdc.entity in self._mapped:
                    deletes.setdefault(cdc.entity, []).append(
                        (index, change.record["source_key"].encode(), delete_record(cdc.entity, change)))
                continue
            lsns[index] = change.lsn
            legacy.append((index, {**change.record, "_unchanged": change.unchanged}))
        return legacy, lsns, deletes

    def _map(self, batch: Sequence[InRecord], raw: list[tuple[int, InRecord]], out: StageOutput) -> None:
        self._commits = {}
        if self._cdc:
            legacy, lsns, deletes = self._changes(raw, out)
        else:
            legacy, lsns, deletes = [(i, r.value) for i, r in raw], {}, {}
        outcome = map_batch(legacy, self._mappers, self._source_entities)
        for entity, gone in deletes.items():  # in batch order with the entity's other changes: order per key
            outcome.mapped[entity] = sorted([*outcome.mapped.get(entity, []), *gone], key=lambda row: row[0])
        counts: dict[str, int] = {}
        for _, value in legacy:
            entity = self._source_entities.get(value.get("source", ""), "unknown")
            counts[entity] = counts.get(entity, 0) + 1
        for entity, n in counts.items():
            out.count(STAGE, entity, "in", n)
        for entity, rows in outcome.mapped.items():
            if lsns:
                rows = [(i, key, {**record, "source_lsn": lsns[i]} if i in lsns else record)
                        for i, key, record in rows]
            resolver = self._by_entity.get(entity)
            if resolver is not None:
                # Unmasked: the matcher needs the real values; the resolution masks its output. A delete goes
                # to the mapped topic (the sink drops the record from its golden row), and to every partition
                # of the dedupe topic: it carries the id only, not the names its shard key is made of, and the
                # partition whose deduper knows the record forgets it.
                for i, key, record in rows:
                    if record.get("deleted"):
                        out.records.append(OutRecord(self._mapped[entity], key, record, _commit(self._commits, i)))
                        out.records.extend(OutRecord(resolver.topic, key, record, partition=p)
                                           for p in range(self._dedupe_partitions))
                    else:
                        shard = shard_key(record, "contact" if entity == "contact" else "account")
                        out.records.append(OutRecord(resolver.topic, shard.encode(), record,
                                                     _commit(self._commits, i)))
            else:
                topic = self._mapped[entity]
                mask = self._masker.active
                for i, key, record in rows:
                    masked = mask and not record.get("deleted")  # a delete holds no personal data
                    out.records.append(OutRecord(topic, key, self._masker.mask(entity, record) if masked else record,
                                                 _commit(self._commits, i)))
            out.count(STAGE, entity, "out", len(rows))
        for rej in outcome.rejected:
            out.rejections.append(Rejection(rej.index, rej.stage, rej.rule, rej.error, rej.field, rej.entity,
                                            rej.run_id, rej.position))
            out.count(STAGE, rej.entity or "unknown", "rejected")
        del batch  # the indexes in ``outcome`` are indexes into it

    # ----------------------------------------------------------------------------------- resolution

    def _resolve(self, resolver: Resolver, clean: list[tuple[int, InRecord]], out: StageOutput) -> None:
        """Resolve the clean records of one dedupe topic: one golden update each on the entity's mapped topic,
        and the state writes of every partition they touched."""
        entity = resolver.entity
        mapped_topic = self._mapped[entity]
        golden = golden_contact if entity == "contact" else golden_account
        touched: list[int] = []
        sent = 0
        for index, rec in clean:
            deduper, _ = self._shard(resolver, rec.partition)
            if rec.partition not in touched:
                touched.append(rec.partition)
            if rec.value.get("deleted"):
                rid = rec.value.get(deduper.id_field)
                if rid is not None and deduper.forget(str(rid)) is not None:
                    out.count(DEDUPE_STAGE, entity, "forgotten")
                continue
            try:
                # A contact's parent feature is its own customer_id (see the module docs).
                result = deduper.process(rec.value)
            except DedupeError as exc:
                out.rejections.append(Rejection(index, DEDUPE_STAGE, "dedupe", str(exc), entity=entity,
                                                run_id=rec.value.get("run_id"),
                                                source_position=rec.value.get("source_position")))
                out.count(DEDUPE_STAGE, entity, "rejected")
                continue
            _count_decisions(result, out, entity)
            value = golden(rec.value, result)
            if self._masker.active:
                value = self._masker.mask(entity, value)
            out.records.append(OutRecord(mapped_topic, rec.key, value, _passed_on(rec)))
            sent += 1
        cipher = self._cipher
        for partition in touched:
            for key, state in self._shard(resolver, partition)[1].flush():
                k = key.encode()
                data = None if state is None else orjson.dumps(state)
                if data is not None and cipher is not None:
                    data = cipher.seal(data, k)
                out.state.append(StateWrite(resolver.topic, partition, k, data))
        out.count(DEDUPE_STAGE, entity, "in", sum(1 for _, rec in clean if not rec.value.get("deleted")))
        out.count(DEDUPE_STAGE, entity, "out", sent)
        out.count(DEDUPE_STAGE, entity, "merged", out.decisions.get((entity, "joined"), 0))


def _count_decisions(result: DedupeResult, out: StageOutput, entity: str) -> None:
    """Tally one record's decisions (what ``crmflow_dedupe_decisions_total`` counts)."""

    def add(decision: str, n: int = 1) -> None:
        key = (entity, decision)
        out.decisions[key] = out.decisions.get(key, 0) + n

    add("updated" if result.updated else "joined" if result.merged_into is not None else "founded")
    for ev in result.evidence:
        if ev.get("decision") in ("vetoed", "refused"):
            add(ev["decision"])
    if result.cluster_merges:
        add("cluster_merge", len(result.cluster_merges))
    if result.closed_blocks:
        add("closed_block", result.closed_blocks)


def _commit(commits: Mapping[int, bytes], index: int) -> tuple[tuple[str, bytes], ...] | None:
    """The headers of the mapped record of batch index ``index``: its change's source commit time, if any."""
    ms = commits.get(index)
    return None if ms is None else ((SOURCE_COMMIT_HEADER, ms),)


def _passed_on(rec: InRecord) -> tuple[tuple[str, bytes], ...] | None:
    """The source commit header of a record that went through the dedupe topic, for its resolved account."""
    for name, value in rec.headers or ():
        if name == SOURCE_COMMIT_HEADER and value is not None:
            return ((name, value.encode() if isinstance(value, str) else value),)
    return None
