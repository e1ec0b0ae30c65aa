"""The ``target`` section of the migration config, which the sink owns, and what the sink reads of the
composed config (:class:`SinkConfig`, a protocol: the stage does not import the composed config above it)."""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import ConfigDict, Field, SecretStr

from crmflow.configbase import EnvVarName, FrozenModel, KafkaConfig, RunConfig, secret_from_env

__all__ = ["SinkConfig", "TargetConfig"]


class TargetConfig(FrozenModel):
    """Where the mapped records land. ``dsn_env`` names the variable holding the DSN; when it is named and
    unset, every command refuses to run (never a silent fallback). Without ``dsn_env``, the target is the
    crmflow stack's own target database (``crmflow stack up``), and every command says so.
    ``schema`` is the PostgreSQL schema the CRM tables live in: two migrations that must not touch each
    other's rows name different schemas."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    kind: Literal["postgres"] = "postgres"
    dsn_env: EnvVarName | None = Field(
        default=None, description="env var holding the target database's DSN; omitted: the crmflow stack's"
    )
    schema_name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = Field(
        default="crm", alias="schema", description="PostgreSQL schema of the CRM tables"
    )
    batch_size: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)
    deletes: Literal["hard", "soft"] = Field(
        default="hard",
        description="what a source delete (change data capture) does: hard deletes the row and its children, "
        "soft sets their deleted_at",
    )

    @property
    def uses_stack(self) -> bool:
        """True when no ``dsn_env`` is named: the target is the crmflow stack's database."""
        return self.dsn_env is None

    def dsn(self) -> SecretStr:
        """The DSN from ``dsn_env``; ConfigError naming the variable when it is unset (or not named)."""
        return secret_from_env(self.dsn_env)


class SinkConfig(Protocol):
    """The parts of the migration config the sink reads (:class:`crmflow.config.MigrationConfig` implements it)."""

    @property
    def file(self) -> Path | None: ...

    @property
    def run(self) -> RunConfig: ...

    @property
    def kafka(self) -> KafkaConfig: ...

    @property
    def entities(self) -> Container[str]: ...

    @property
    def target(self) -> TargetConfig | None: ...
