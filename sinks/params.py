"""What the sink runner is given (:class:`SinkParams`) and what it reports back (:class:`SinkStats`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crmflow.connections import KafkaConnection, PostgresConnection, RegistryConnection
from crmflow.exceptions import ConfigError
from crmflow.topics import dlq_topic, mapped_topic
from sinks.base import RetryPolicy
from sinks.config import SinkConfig

ENTITIES = ("account", "contact", "sale", "case")


@dataclass(frozen=True)
class SinkParams:
    """Everything the runner needs; ``topics`` maps each mapped topic to its entity.

    ``target_schema`` is the PostgreSQL schema of the CRM tables; ``system`` the source system writing
    (a config's run name): the target refuses records whose rows another system owns."""

    kafka: KafkaConnection | str  # a bare host:port or URL/DSN: tests and scripts
    registry: RegistryConnection | str
    target_dsn: PostgresConnection | str = field(repr=False)
    topics: Mapping[str, str]
    dlq_topic: str
    target_schema: str = "crm"
    deletes: str = "hard"  # target.deletes: hard or soft
    system: str | None = None
    group_id: str = "crmflow-sink"
    #: This sink's stable, unique name (its Kafka transactional id is ``<group_id>-<instance>``): a restart
    #: with the same name fences its predecessor at once. Default: host, process and a random suffix.
    instance: str | None = None
    batch_size: int = 1000
    max_batch_age_s: float = 1.0
    consume_batch: int = 1000
    poll_timeout_s: float = 0.2
    #: Natural batching: once a record is there, the longest to wait for more (a backlog fills a batch at
    #: once); None waits ``poll_timeout_s`` for a full batch.
    linger_s: float | None = 0.02
    orphan_timeout_s: float = 3600.0
    maintenance_interval_s: float = 5.0
    dlq_flush_timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    consumer_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_prefix(cls, prefix: str, **kwargs: Any) -> SinkParams:
        """Params reading ``<prefix>.mapped.<entity>`` for every entity, dead letters to ``<prefix>.dlq``."""
        defaults: dict[str, Any] = {"topics": {mapped_topic(prefix, e): e for e in ENTITIES},
                                    "dlq_topic": dlq_topic(prefix)}
        return cls(**{**defaults, **kwargs})

    @classmethod
    def from_config(
        cls,
        cfg: SinkConfig,
        *,
        kafka: KafkaConnection | str,
        registry: RegistryConnection | str,
        target_dsn: PostgresConnection | str | None = None,
        **kwargs: Any,
    ) -> SinkParams:
        """Params of a migration config: its mapped topics and DLQ, group ``crmflow-sink.<run name>``, the
        run name as the writing system, the target's schema, batch size and flush interval.

        ``target_dsn`` is the DSN :func:`crmflow.pipeline.targets.resolve_target` resolved; without it the
        DSN comes from the config's ``target.dsn_env``, and a config that names none is a ConfigError
        (never a silent fallback to some other database)."""
        if target_dsn is None:
            where = cfg.file or "the config"
            if cfg.target is None:
                raise ConfigError(f"{where}: key target is missing; the sink needs it")
            if not cfg.target.dsn_env:
                raise ConfigError(f"{where}: target.dsn_env is not set, so the target DSN must be given (resolve "
                                  "it with crmflow.pipeline.targets.resolve_target)")
            target_dsn = PostgresConnection.from_env(cfg.target.dsn_env, cfg.target.dsn())
        defaults: dict[str, Any] = {
            "group_id": f"crmflow-sink.{cfg.run.name}",
            "topics": {cfg.kafka.mapped_topic(e): e for e in ENTITIES if e in cfg.entities},
            "dlq_topic": cfg.kafka.dlq_topic,
            "system": cfg.run.name,
            "consumer_config": {"partition.assignment.strategy": cfg.kafka.assignor},
        }
        if cfg.target is not None:
            defaults.update(batch_size=cfg.target.batch_size, max_batch_age_s=cfg.target.flush_interval_s,
                            target_schema=cfg.target.schema_name, deletes=cfg.target.deletes)
        return cls(
            kafka=kafka,
            registry=registry,
            target_dsn=target_dsn,
            **{**defaults, **kwargs},
        )


@dataclass
class SinkStats:
    """What one run did. ``committed`` maps ``topic[partition]`` to the last committed offset."""

    consumed: int = 0
    written: int = 0
    unchanged: int = 0
    rejected: int = 0
    poison: int = 0
    parked: int = 0
    orphaned: int = 0
    resolved: int = 0  # parked records written once their account arrived
    held_dead_lettered: int = 0
    batches: int = 0
    committed: dict[str, int] = field(default_factory=dict)
