"""The ``sources`` section of the migration config, which the producer owns: what to read and how.

:func:`producers.sources.source_specs` turns these into the producer's :class:`~producers.sources.SourceSpec`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from crmflow.configbase import EnvVarName, FrozenModel, expand_env, invalid, secret_from_env
from crmflow.entities import EntityName
from producers.readers.dialect import check_delimiter, check_encoding
from producers.sources import normalize_ws

__all__ = ["CdcConfig", "ParentRef", "SegmentConfig", "SourceConfig"]


class SegmentConfig(FrozenModel):
    """Keep only records whose ``field`` (after the whitespace rule) is one of ``in``.

    The field name also matches in lower case (database columns), as in ``producers.sources``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    field: str
    values: tuple[str, ...] = Field(alias="in", min_length=1)

    def matches(self, raw: Mapping[str, str | None]) -> bool:
        value = raw[self.field] if self.field in raw else raw.get(self.field.lower())
        return value is not None and normalize_ws(str(value)) in self.values


class ParentRef(FrozenModel):
    """A child source's reference to its parent: the source field holding the parent entity's key."""

    entity: EntityName = "account"
    field: str


class SourceConfig(FrozenModel):
    kind: Literal["csv", "jsonl", "table"]
    entity: EntityName
    key: str = Field(description="the source's primary-key field")
    path: Path | None = Field(default=None, description="csv/jsonl: file; ${VAR:-default} expanded")
    dsn_env: EnvVarName | None = Field(default=None, description="table: env var holding the DSN")
    table: str | None = Field(default=None, description="table: [schema.]table")
    segment: SegmentConfig | None = None
    parent: ParentRef | None = None
    delimiter: str | None = Field(default=None, description="csv: field delimiter; unset: detected (, ; TAB |)")
    quotechar: str | None = Field(default=None, description="csv: quote character; unset: detected (\" or ')")
    encoding: str | None = Field(
        default=None, description="csv: text encoding (utf-8, cp1252, latin-1...); unset: utf-8, else cp1252"
    )
    dialect: Literal["auto", "excel", "excel-tab"] = Field(
        default="auto", description="csv: auto detects what is not declared; excel = comma, excel-tab = TAB"
    )

    @field_validator("delimiter", "quotechar")
    @classmethod
    def _one_char(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            return check_delimiter(value, str(info.field_name))
        except ValueError as exc:
            raise invalid(str(exc).split(": ", 1)[-1]) from None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_encoding(value)
        except ValueError as exc:
            raise invalid(str(exc).split(": ", 1)[-1]) from None

    @field_validator("path", mode="before")
    @classmethod
    def _expand(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        try:
            path = Path(expand_env(value))
        except ValueError as exc:
            raise invalid(str(exc)) from None
        base = (info.context or {}).get("base_dir")
        return path if path.is_absolute() or base is None else Path(os.path.normpath(Path(base) / path))

    @model_validator(mode="after")
    def _kind_fields(self) -> SourceConfig:
        if self.kind == "table" and (self.dsn_env is None or self.table is None):
            raise ValueError("a table source needs dsn_env and table")
        if self.kind != "table" and self.path is None:
            raise ValueError(f"a {self.kind} source needs path")
        if self.kind != "csv":
            declared = [k for k in ("delimiter", "quotechar", "encoding") if getattr(self, k) is not None]
            if self.dialect != "auto":
                declared.append("dialect")
            if declared:
                raise ValueError(f"{', '.join(declared)}: only csv sources have a dialect")
        return self

    def dsn(self) -> SecretStr:
        """The DSN from the environment; ConfigError naming the variable if it is unset."""
        return secret_from_env(self.dsn_env)


class CdcConfig(FrozenModel):
    """The ``cdc`` section: change capture from the legacy PostgreSQL database (`crmflow cdc`).

    Events go to ``<kafka.topic_prefix>.cdc.<schema>.<table>``. The slot and the publication are created only by
    ``crmflow cdc --init``; a later start finds them or stops with an error (never a silent new slot).
    """

    dsn_env: EnvVarName = Field(description="env var holding the legacy database's DSN (a replication-capable role)")
    tables: tuple[str, ...] = Field(min_length=1, description="captured tables, each schema.table, with a primary key")
    slot: str = Field(default="crmflow_cdc", pattern=r"^[a-z0-9_]{1,63}$", description="logical replication slot")
    publication: str = Field(default="crmflow_cdc", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    feedback_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="how often the confirmed LSN is sent (heartbeat), seconds"
    )
    stats_interval_s: float = Field(default=5.0, gt=0, description="how often slot lag / retained WAL are measured")
    capture_new_tables: bool = Field(
        default=True, description="capture a table added to the publication while running (its own topic)"
    )
    snapshot_chunk_size: int = Field(
        default=1000, ge=1, le=100_000,
        description="rows per chunk of a re-snapshot, and between checkpoints of the initial load",
    )
    reconnect_initial_s: float = Field(
        default=0.5, gt=0, le=60, description="first wait before reconnecting to a lost legacy database, seconds"
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, le=600, description="longest wait between reconnects (the wait doubles up to it)"
    )

    @field_validator("tables")
    @classmethod
    def _qualified(cls, tables: tuple[str, ...]) -> tuple[str, ...]:
        for table in tables:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*", table):
                raise invalid(f"{table!r}: expected schema.table in lower case (unquoted identifiers)")
        if len(set(tables)) != len(tables):
            raise invalid("a table is listed twice")
        return tables

    def dsn(self) -> SecretStr:
        """The DSN from the environment; ConfigError naming the variable if it is unset."""
        return secret_from_env(self.dsn_env)
