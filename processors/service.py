"""The processor as a service: its stage built from a migration config, run by an engine.

The default engine is the core's transactional batch runtime (:mod:`crmflow.runtime`): exactly-once
between the raw, dedupe and mapped topics. ``faust`` runs the same stage as a faust-streaming app
(:mod:`processors.faust_engine`), at-least-once, for teams that already operate faust.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Literal

from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.dlq import DeadLetterWriter
from crmflow.pii import StateCipher
from crmflow.runtime import RuntimeOptions, TransactionalRuntime
from crmflow.runtime.stage import Decoder, Encoder
from crmflow.serialization import AvroCodec, AvroDecoder, JsonCodec, load_schema, topic_subject
from crmflow.stack import Endpoints
from crmflow.topics import cdc_topic
from processors.cdc import CdcSource
from processors.config import ProcessorConfig
from processors.debezium import debezium_decoder
from processors.mapping import build_mappers
from processors.masking import Masker, state_cipher_of
from processors.sealing import SealedDecoder, SealedEncoder
from processors.stage import ProcessStage

log = logging.getLogger(__name__)

Engine = Literal["batch", "faust"]


def group_id(cfg: ProcessorConfig) -> str:
    """The processor's consumer group: one per config (topic prefix), shared by all its workers."""
    return f"crmflow-process-{cfg.kafka.topic_prefix}"


def changelog_topic(cfg: ProcessorConfig, entity: str = "account") -> str:
    """The compacted changelog of an entity's dedupe state, co-partitioned with its dedupe topic."""
    return f"{cfg.kafka.dedupe_topic(entity)}.state"


def dedupe_entities(cfg: ProcessorConfig) -> list[str]:
    """The entities the processor resolves in the stream, each through its own dedupe topic: none (dedupe off),
    ``account``, or ``account`` and ``contact``."""
    if cfg.dedupe is None or not cfg.dedupe_enabled:
        return []
    return ["account", "contact"] if dedupes_contacts(cfg) else ["account"]


def dedupes_contacts(cfg: ProcessorConfig) -> bool:
    """Whether the processor resolves contacts in the stream (dedupe on, ``dedupe.contacts``, contacts mapped)."""
    return (cfg.dedupe is not None and cfg.dedupe_enabled and cfg.dedupe.resolves_contacts
            and any(src.entity == "contact" for src in cfg.sources.values()))


def default_instance() -> str:
    """A worker's instance name when none is given: the host name (a pod's name in Kubernetes)."""
    return socket.gethostname()


def cdc_sources(cfg: ProcessorConfig) -> dict[str, CdcSource]:
    """Change topic → table source, for every table source whose table the ``cdc`` section captures, or a
    Debezium connector (the ``debezium`` section) does (a table without a schema is in ``public``)."""
    out: dict[str, CdcSource] = {}
    for name, src in cfg.sources.items():
        if src.kind != "table" or not src.table:
            continue
        table = src.table if "." in src.table else f"public.{src.table}"
        if cfg.cdc is not None and table in cfg.cdc.tables:
            out[cdc_topic(cfg.kafka.topic_prefix, table)] = CdcSource(name, src.entity, src.key)
        if cfg.debezium is not None and table in cfg.debezium.tables:
            out[cfg.debezium.topic(table)] = CdcSource(name, src.entity, src.key)
    return out


def build_stage(cfg: ProcessorConfig, registry: SchemaRegistryClient) -> ProcessStage:
    """The processor's stage for ``cfg``: decoders of the raw (and dedupe) topics, encoders of its outputs."""
    k = cfg.kafka
    mappers = build_mappers(cfg)
    raw = {k.raw_topic(name): src.entity for name, src in cfg.sources.items()}
    legacy = AvroDecoder(registry, load_schema("legacy/legacy_record"))
    decoders: dict[str, Decoder] = dict.fromkeys(raw, legacy)
    cdc = cdc_sources(cfg)
    envelope = AvroDecoder(registry)  # change envelopes in their writer's shape (one schema per table version)
    decoders.update(dict.fromkeys(cdc, envelope))
    if cfg.debezium is not None:  # Debezium's own messages, decoded into the same envelope
        debezium = debezium_decoder(cfg.debezium.format, registry)
        theirs = {cfg.debezium.topic(t) for t in cfg.debezium.tables}
        decoders.update({topic: debezium for topic in cdc if topic in theirs})
    mapped = {entity: k.mapped_topic(entity) for entity in mappers}
    encoders: dict[str, Encoder] = {
        topic: AvroCodec(registry, topic_subject(topic), load_schema(f"target/{entity}"))
        for entity, topic in mapped.items()
    }
    masker = Masker.from_config(cfg)
    dedupe_topic = contact_topic = None
    cipher: StateCipher | None = None
    matcher = contact_matcher = None
    if cfg.dedupe is not None and cfg.dedupe_enabled:
        cipher = state_cipher_of(cfg, masker.profile)
        entities = dedupe_entities(cfg)
        for entity in entities:  # the clean records' topics, sealed like the state when there is a cipher
            topic = k.dedupe_topic(entity)
            # JSON: only this stage reads the topic, and an Avro round trip costs ten times the CPU. Avro values
            # (what crmflow wrote here before) still decode, resolved to the entity's schema.
            schema = load_schema(f"target/{entity}")
            codec = decoder = JsonCodec(schema, avro=AvroDecoder(registry, schema))
            if cipher is None:
                encoders[topic], decoders[topic] = codec, decoder
            else:
                encoders[topic] = SealedEncoder(codec, cipher, topic)
                decoders[topic] = SealedDecoder(decoder, cipher, topic)
        dedupe_topic = k.dedupe_topic("account")
        matcher = cfg.dedupe.matcher()
        if cipher is not None:
            if matcher.block_key_secret is None:  # block keys as keyed hashes, never plain ones
                matcher = matcher.model_copy(update={"block_key_secret": cipher.block_key_secret()})
            log.info("dedupe topics and state sealed under pii key %s", cipher.key_id, extra={"stage": "process"})
        if "contact" in entities:
            contact_topic = k.dedupe_topic("contact")
            contact_matcher = cfg.dedupe.contact_matcher(matcher)
    stage = ProcessStage(
        raw_topics=raw, mappers=mappers, masker=masker, mapped_topics=mapped, decoders=decoders,
        encoders=encoders, dedupe=matcher, dedupe_topic=dedupe_topic, changelog=changelog_topic(cfg),
        contact_dedupe=contact_matcher, contact_topic=contact_topic,
        contact_changelog=changelog_topic(cfg, "contact"), cdc_topics=cdc, run_id=f"{cfg.run.name}-cdc",
        cipher=cipher,
    )
    partitions = (cfg.dedupe.partitions if cfg.dedupe is not None else None) or k.partitions
    return stage.with_sources({name: src.entity for name, src in cfg.sources.items()}).with_partitions(partitions)


def consumer_overrides(cfg: ProcessorConfig) -> dict[str, Any]:
    """The processors' consumer settings from the config: their group's assignor (``kafka.assignor``)."""
    return {"partition.assignment.strategy": cfg.kafka.assignor}


def build_runtime(
    cfg: ProcessorConfig,
    endpoints: Endpoints,
    *,
    instance: str | None = None,
    batch_size: int = 2000,
    batch_timeout_s: float = 0.25,
    linger_s: float | None = 0.02,
) -> TransactionalRuntime:
    """The default engine: the transactional batch runtime running :func:`build_stage`'s stage."""
    registry = endpoints.registry.client()
    stage = build_stage(cfg, registry)
    group = group_id(cfg)
    opts = RuntimeOptions(
        kafka=endpoints.kafka.for_stage("process"), group_id=group,
        transactional_id=f"{group}-{instance or default_instance()}", dlq_topic=cfg.kafka.dlq_topic,
        batch_size=batch_size, batch_timeout_s=batch_timeout_s, linger_s=linger_s,
        replication_factor=cfg.kafka.replication_factor,
        # Range by default (kafka.assignor): every worker gets its share of every topic, the dedupe topics
        # included. Cooperative-sticky gave a worker that joined a moment later the first half of the partitions
        # in topic-name order (all the dedupe partitions), and the other one sat idle. Range is eager, but a
        # worker keeps the state of the partitions that come back to it unchanged (crmflow.runtime.loop), so a
        # rebalance restores only what moved.
        client_config=consumer_overrides(cfg),
    )
    return TransactionalRuntime(stage, opts, DeadLetterWriter(None, registry, cfg.kafka.dlq_topic))
