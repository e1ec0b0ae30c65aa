"""What every section of the migration config shares: the frozen model base, the value types, the run and
Kafka sections, and how a problem is reported (file, line, key path).

The sections live with the layer that owns them (``sources`` in :mod:`producers.config`, ``reference``
and ``dedupe`` in :mod:`processors.config`, ``target`` in :mod:`sinks.config`, ``pii`` in
:mod:`crmflow.pii`); :mod:`crmflow.config` composes them into one :class:`~crmflow.config.MigrationConfig`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr
from pydantic_core import PydanticCustomError

from crmflow import topics
from crmflow.exceptions import ConfigError

__all__ = [
    "ConfigLoadError", "CurrencyCode", "EnvVarName", "FrozenModel", "Identifier", "KafkaConfig", "KeyPath",
    "Problem", "RunConfig", "Severity", "expand_env", "format_path", "invalid", "secret_from_env",
]  # fmt: skip

Severity = Literal["error", "warning"]
KeyPath = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def invalid(message: str) -> PydanticCustomError:
    """A validation error with exactly this message (no template formatting)."""
    return PydanticCustomError("crmflow_config", message)


def _env_name(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        # Never echo it: it may be a DSN with a password pasted in by mistake.
        raise invalid("expected the NAME of an environment variable holding the DSN, never the DSN itself")
    return value


EnvVarName = Annotated[str, BeforeValidator(_env_name)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


@dataclass(frozen=True)
class Problem:
    """One finding of loading or checking a config; ``str()`` is ``file:line: severity: path: message``."""

    severity: Severity
    message: str
    path: str = ""
    file: Path | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else str(self.file or "<config>")
        return f"{where}: {self.severity}: {self.path + ': ' if self.path else ''}{self.message}"


class ConfigLoadError(ConfigError):
    """The config file cannot be read or is invalid; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is a ValueError."""

    def repl(match: re.Match[str]) -> str:
        name, default = match[1], match[2]
        value = os.environ.get(name)
        if value:
            return value
        if default is None:
            raise ValueError(f"environment variable {name} is not set and ${{{name}}} has no :-default")
        return default

    return _ENV_REF.sub(repl, text)


def format_path(path: KeyPath) -> str:
    """``('entities', 'account', 'fields', 2, 'transform')`` → ``entities.account.fields[2].transform``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def secret_from_env(name: str | None) -> SecretStr:
    """The value of the environment variable ``name``; ConfigError naming it when it is unset."""
    value = os.environ.get(name) if name else None
    if not value:
        raise ConfigError(f"environment variable {name} (dsn_env) is not set; export it with the DSN")
    return SecretStr(value)


class FrozenModel(BaseModel):
    """The base of every config section: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RunConfig(FrozenModel):
    name: Identifier = Field(description="names the run; ids and consumer groups derive from it")
    base_currency: CurrencyCode = "USD"


Assignor = Literal["range", "cooperative-sticky"]


class KafkaConfig(FrozenModel):
    topic_prefix: Identifier = "crmflow"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    assignor: Assignor = Field(
        default="range",
        description="how the processors' and the sinks' groups share partitions. range: each worker gets its "
        "share of every topic; a rebalance revokes every partition, and a processor keeps the state of those "
        "that come back to it. cooperative-sticky: a rebalance revokes only the partitions that move, but a "
        "worker that joins gets the first partitions in topic-name order (with dedupe: every dedupe partition)",
    )

    def raw_topic(self, source: str) -> str:
        return topics.raw_topic(self.topic_prefix, source)

    def mapped_topic(self, entity: str) -> str:
        return topics.mapped_topic(self.topic_prefix, entity)

    def dedupe_topic(self, entity: str) -> str:
        return topics.dedupe_topic(self.topic_prefix, entity)

    @property
    def dlq_topic(self) -> str:
        return topics.dlq_topic(self.topic_prefix)
