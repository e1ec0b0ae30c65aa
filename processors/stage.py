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

- Change events of captured tables (``<prefix>.cdc.<schema>.<table>``, :mod:`processors.cdc`) become the
  LegacyRecords of their table source and are mapped the same way; the mapped record carries the change's
  ``source_lsn`` and ``unchanged_fields``, and a DELETE becomes a record with ``deleted`` set (its id only).

A record that cannot be mapped or resolved becomes a :class:`~crmflow.runtime.Rejection` naming the stage,
rule and field: it never fails its batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
from processors.dedupe.stream import golden_account
from processors.masking import Masker

STAGE = "process"
DEDUPE_STAGE = "dedupe"


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
        cdc_topics: Mapping[str, CdcSource] | None = None,
        run_id: str = "cdc",
        cipher: StateCipher | None = None,
    ) -> None:
        """``raw_topics``: topic → source name's entity; ``mapped_topics``: entity → topic; ``decoders`` per
        input topic, ``encoders`` per output topic. ``dedupe`` with ``dedupe_topic`` and ``changelog`` turns on
        the resolution of accounts. ``cdc_topics``: change topic → the table source it feeds; ``run_id`` is
        the run id of the changes' records. ``cipher`` seals the state writes (each with its key as context)
        and opens the restored ones."""
        self._cdc = dict(cdc_topics or {})
        self._cdc_run = run_id
        self._raw_entities = dict(raw_topics)
        self._mappers = mappers
        self._masker = masker
        self._mapped = dict(mapped_topics)
        self._decoders = dict(decoders)
        self._encoders = dict(encoders)
        self._dedupe = dedupe
        self._dedupe_topic = dedupe_topic if dedupe is not None else None
        self.changelog = changelog if dedupe is not None else None
        self.state_topic = self._dedupe_topic
        self._shards: dict[int, tuple[Deduper, WriteBehind]] = {}
        self._stores: dict[int, dict[str, Any]] = {}
        self._source_entities: dict[str, str] = {}
        self._dedupe_partitions = 1
        self._cipher = cipher
        self._commits: dict[int, bytes] = {}  # batch index → the change's source commit time (the header value)

    def with_partitions(self, partitions: int) -> ProcessStage:
        """How many partitions the dedupe topic gets when the runtime has to create it."""
        self._dedupe_partitions = partitions
        return self

    def internal_topics(self) -> Mapping[str, int]:
        return {self._dedupe_topic: self._dedupe_partitions} if self._dedupe_topic else {}

    def with_sources(self, source_entities: Mapping[str, str]) -> ProcessStage:
        """Which entity each source name feeds (the raw records carry their source name)."""
        self._source_entities = dict(source_entities)
        return self

    # ------------------------------------------------------------------------------------- contract

    @property
    def topics(self) -> Sequence[str]:
        return [*self._raw_entities, *self._cdc, *([self._dedupe_topic] if self._dedupe_topic else [])]

    def decoder(self, topic: str) -> Decoder:
        return self._decoders[topic]

    def encoder(self, topic: str) -> Encoder:
        return self._encoders[topic]

    def entity_of(self, record: InRecord) -> str:
        if record.topic == self._dedupe_topic:
            return "account"
        cdc = self._cdc.get(record.topic)
        return cdc.entity if cdc is not None else self._raw_entities.get(record.topic, "unknown")

    def process(self, batch: Sequence[InRecord]) -> StageOutput:
        out = StageOutput()
        raw = [(i, r) for i, r in enumerate(batch) if r.topic != self._dedupe_topic]
        if raw:
            self._map(batch, raw, out)
        if self._dedupe_topic is not None:
            clean = [(i, r) for i, r in enumerate(batch) if r.topic == self._dedupe_topic]
            if clean:
                self._resolve(clean, out)
        return out

    # ---------------------------------------------------------------------------------------- state

    def restore(self, partition: int, entries: Mapping[bytes, bytes]) -> None:
        """The partition's deduper, rebuilt from its persisted records and golden values."""
        if self._dedupe is None:
            return
        cipher = self._cipher
        try:
            store = {key.decode(): orjson.loads(value if cipher is None else cipher.open(value, key))
                     for key, value in entries.items()}
        except SealedDataError as exc:
            raise SealedDataError(f"dedupe state of partition {partition} ({self.changelog}): {exc}") from None
        self._stores[partition] = store
        buffer = WriteBehind(store)
        self._shards[partition] = (Deduper.over_store(self._dedupe, buffer), buffer)

    def release(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._shards.pop(p, None)
            self._stores.pop(p, None)

    def _shard(self, partition: int) -> tuple[Deduper, WriteBehind]:
        held = self._shards.get(partition)
        if held is None:  # an engine that never restored it: the partition starts empty
            self.restore(partition, {})
            held = self._shards[partition]
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
            if entity == "account" and self._dedupe_topic is not None:
                # Unmasked: the matcher needs the real values; the resolution masks its output. A delete goes
                # to the mapped topic (deduplication of changes is not built yet).
                for i, key, record in rows:
                    if record.get("deleted"):
                        out.records.append(OutRecord(self._mapped[entity], key, record, _commit(self._commits, i)))
                    else:
                        out.records.append(OutRecord(self._dedupe_topic, shard_key(record).encode(), record,
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

    def _resolve(self, clean: list[tuple[int, InRecord]], out: StageOutput) -> None:
        account_topic = self._mapped["account"]
        touched: list[int] = []
        sent = 0
        for index, rec in clean:
            deduper, _ = self._shard(rec.partition)
            if rec.partition not in touched:
                touched.append(rec.partition)
            try:
                result = deduper.process(rec.value)
            except DedupeError as exc:
                out.rejections.append(Rejection(index, DEDUPE_STAGE, "dedupe", str(exc), entity="account",
                                                run_id=rec.value.get("run_id"),
                                                source_position=rec.value.get("source_position")))
                out.count(DEDUPE_STAGE, "account", "rejected")
                continue
            _count_decisions(result, out)
            account = golden_account(rec.value, result)
            if self._masker.active:
                account = self._masker.mask("account", account)
            out.records.append(OutRecord(account_topic, rec.key, account, _passed_on(rec)))
            sent += 1
        cipher = self._cipher
        for partition in touched:
            for key, value in self._shard(partition)[1].flush():
                k = key.encode()
                data = None if value is None else orjson.dumps(value)
                if data is not None and cipher is not None:
                    data = cipher.seal(data, k)
                out.state.append(StateWrite(partition, k, data))
        out.count(DEDUPE_STAGE, "account", "in", len(clean))
        out.count(DEDUPE_STAGE, "account", "out", sent)
        out.count(DEDUPE_STAGE, "account", "merged", out.decisions.get(("account", "joined"), 0))


def _count_decisions(result: DedupeResult, out: StageOutput) -> None:
    """Tally one record's decisions (what ``crmflow_dedupe_decisions_total`` counts)."""

    def add(decision: str, n: int = 1) -> None:
        key = ("account", decision)
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
