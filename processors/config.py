"""The processor's config sections (``reference``, ``dedupe``) and what it reads of the composed config.

The processor depends on :class:`ProcessorConfig`, a protocol, not on the composed
:class:`crmflow.config.MigrationConfig` above it: the stages sit below the composed config and import only
the core. ``entities`` (the mappings, :mod:`processors.transforms.spec`) and ``pii`` (:mod:`crmflow.pii`) are
sections it reads too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import Field, SecretStr, model_validator

from crmflow.configbase import CurrencyCode, EnvVarName, FrozenModel, KafkaConfig, KeyPath, RunConfig
from crmflow.entities import EntityName
from crmflow.exceptions import ConfigError
from crmflow.pii import PiiConfig
from processors.dedupe.config import ContactMatching, DedupeConfig
from processors.transforms.base import ReferenceData
from processors.transforms.spec import EntityMapping

__all__ = ["CdcRef", "DebeziumInput", "DedupeSettings", "ProcessorConfig", "ReferenceConfig", "SourceRef"]


class ReferenceConfig(FrozenModel):
    currency_rates: dict[CurrencyCode, Annotated[Decimal, Field(gt=0)]] = Field(
        default_factory=dict, description="units of the base currency per unit of the keyed currency"
    )
    lookups: dict[str, dict[str, str]] = Field(default_factory=dict, description="named key → value tables")


class DedupeSettings(DedupeConfig):
    """The ``dedupe`` section: the matcher's settings (:class:`~processors.dedupe.config.DedupeConfig`) plus
    whether the stage runs and where the block-key pepper comes from. ::

        dedupe:
          enabled: true
          contacts: true                          # contacts into golden contacts too (false: accounts only; a
                                                  # section: on, with its own passes, comparisons, vetoes)
          source_priority: [crm_eu, customers]    # record `source` values, most trusted first
          match_threshold: 7.0
          weights: {birth_date: 5}
          block_key_env: CRMFLOW_BLOCK_KEY        # optional pepper for the hashed block keys

    It resolves the entity the config maps to ``account`` (from any source); the processor keeps one
    golden record per cluster and the target one account per golden record. With ``contacts`` (the default)
    it resolves the ``contact`` entity too, with the contact matcher these settings give
    (:meth:`~processors.dedupe.config.DedupeConfig.for_contacts`): the target then keeps one contact per
    golden contact.
    """

    enabled: bool = Field(default=True, description="run the deduplication stage")
    contacts: bool | ContactMatching = Field(
        default=True,
        description="resolve contacts in the stream too (one golden contact per cluster); false: accounts only; a "
        "section (blocking, comparisons, vetoes, match_probability...): on, with those contact settings",
    )
    block_key_env: EnvVarName | None = Field(
        default=None, description="env var holding the block-key pepper (never the pepper itself in the file)"
    )
    partitions: int | None = Field(
        default=None,
        ge=1,
        description="partitions of the dedupe topic (unset: kafka.partitions). A record meets only the records "
        "of its partition, and partitions follow the name initials, so duplicates whose initials differ (a "
        "first-letter typo, a nickname, a missing name part) meet only when fewer partitions hold them: 1 "
        "loses none, at the cost of one worker doing all the matching",
    )

    @model_validator(mode="after")
    def _no_secret_in_file(self) -> DedupeSettings:
        if self.block_key_secret is not None:
            raise ValueError("block_key_secret does not belong in the config file: name an env var in block_key_env")
        if self.entity != "account":
            raise ValueError("the dedupe section configures the account matcher; contacts are resolved with its "
                             "contact defaults, or a dedupe.contacts section")
        return self

    def matcher(self) -> DedupeConfig:
        """The deduper's config, with the pepper read from ``block_key_env`` (when named)."""
        data = self.model_dump(exclude={"enabled", "contacts", "block_key_env", "block_key_secret", "partitions"})
        secret: SecretStr | None = None
        if self.block_key_env:
            value = os.environ.get(self.block_key_env)
            if not value:
                raise ConfigError(f"environment variable {self.block_key_env} (dedupe.block_key_env) is not set")
            secret = SecretStr(value)
        return DedupeConfig(**data, block_key_secret=secret)

    @property
    def resolves_contacts(self) -> bool:
        """Whether contacts are resolved too: ``contacts`` true or a section."""
        return self.contacts is not False

    def contact_matcher(self, accounts: DedupeConfig | None = None) -> DedupeConfig:
        """The contact deduper's config: the contact defaults of ``accounts`` (default: :meth:`matcher`), with
        what a ``contacts`` section sets."""
        own = self.contacts if isinstance(self.contacts, ContactMatching) else None
        return (accounts if accounts is not None else self.matcher()).for_contacts(own)


class SourceRef(Protocol):
    """What the processor reads of a source: the entity it feeds; a table source's table and key column
    (its changes are read when the ``cdc`` section captures the table)."""

    @property
    def entity(self) -> EntityName: ...

    @property
    def kind(self) -> str: ...

    @property
    def table(self) -> str | None: ...

    @property
    def key(self) -> str: ...


class DebeziumInput(FrozenModel):
    """The ``debezium`` section: read the change topics a Debezium PostgreSQL connector writes instead of those of
    ``crmflow cdc`` (:mod:`processors.debezium`). A table source whose table is listed here is read from
    ``<topic_prefix>.<schema>.<table>`` as well as from its raw topic."""

    topic_prefix: str = Field(pattern=r"^[A-Za-z0-9._-]{1,200}$", description="the connector's topic.prefix")
    format: Literal["json", "avro"] = Field(
        default="json", description="json: JsonConverter (schemas.enable true or false); avro: AvroConverter through "
        "the schema registry (Confluent wire format)")  # fmt: skip
    tables: tuple[str, ...] = Field(min_length=1, description="the connector's tables, each schema.table")

    def topic(self, table: str) -> str:
        return f"{self.topic_prefix}.{table}"


class CdcRef(Protocol):
    """What the processor reads of the ``cdc`` section: the captured tables (``schema.table``)."""

    @property
    def tables(self) -> tuple[str, ...]: ...


class ProcessorConfig(Protocol):
    """The parts of the migration config the processor reads (:class:`crmflow.config.MigrationConfig`
    implements it). Read-only: the processor never changes its config."""

    @property
    def run(self) -> RunConfig: ...

    @property
    def kafka(self) -> KafkaConfig: ...

    @property
    def sources(self) -> Mapping[str, SourceRef]: ...

    @property
    def entities(self) -> Mapping[EntityName, EntityMapping]: ...

    @property
    def reference(self) -> ReferenceConfig: ...

    @property
    def pii(self) -> PiiConfig | None: ...

    @property
    def dedupe(self) -> DedupeSettings | None: ...

    @property
    def cdc(self) -> CdcRef | None: ...

    @property
    def debezium(self) -> DebeziumInput | None: ...

    @property
    def dedupe_enabled(self) -> bool: ...

    @property
    def file(self) -> Path | None: ...

    def line_of(self, path: KeyPath) -> int | None: ...

    def reference_data(self) -> ReferenceData: ...
