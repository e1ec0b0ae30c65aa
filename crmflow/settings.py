"""Settings of the local stack and of how crmflow reaches Kafka, the registry and PostgreSQL.

Every value can be set by an environment variable prefixed ``CRMFLOW_`` (``CRMFLOW_STACK=external``,
``CRMFLOW_KAFKA_PORT=29092``...). ``CRMFLOW_STACK`` picks where the services come from:

- ``local``: crmflow starts Kafka, Apicurio Registry and PostgreSQL itself, from Maven Central jars and
  Debian's PostgreSQL binaries, under ``home`` (no Docker);
- ``local-secure``: the same, with TLS, SASL/SCRAM and ACLs, the registry behind nginx, and
  least-privilege roles (``crmflow stack up --secure``, :mod:`crmflow.stack.secure`);
- ``docker``: the same three parts as containers through testcontainers;
- ``external``: an existing cluster named by ``bootstrap_servers``, ``registry_url`` and ``postgres_dsn``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from crmflow.exceptions import ConfigError

StackMode = Literal["local", "local-secure", "docker", "external"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


def _default_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crmflow"


class StackSettings(BaseSettings):
    """Where the stack runs and how to reach it. Frozen; unknown ``CRMFLOW_*`` keys are ignored."""

    model_config = SettingsConfigDict(env_prefix="CRMFLOW_", frozen=True, extra="ignore")

    stack: StackMode = "local"
    home: Path = Field(default_factory=_default_home, description="cache dir: jars, data, logs, pids")

    kafka_version: str = "4.1.1"
    apicurio_version: str = "3.0.9"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    registry_port: int = 18081
    postgres_port: int = 15432
    postgres_user: str = "crmflow"
    postgres_password: SecretStr = SecretStr("crmflow")
    postgres_os_user: str = Field(
        default="crmflow", description="OS user that runs PostgreSQL when crmflow runs as root"
    )
    postgres_dir: Path | None = Field(
        default=None, description="data dir of the private cluster; default under home (or /var/tmp as root)"
    )
    target_database: str = "crm_target"
    legacy_database: str = "crm_legacy"
    ready_timeout_s: float = 120.0
    kafka_heap: str = "768m"
    registry_heap: str = "384m"
    secure_registry_backend_port: int | None = Field(
        default=None, description="local-secure: Apicurio's own port behind nginx; default registry_port + 1"
    )
    secure_topic_prefixes: tuple[str, ...] = Field(
        default=("crmflow", "crmflow.demo"),
        description="local-secure: topic prefixes whose stage ACLs `stack up` grants (more: `crmflow stack acls`)",
    )

    # external mode (also filled in by the docker mode once its containers run)
    bootstrap_servers: str | None = None
    registry_url: str | None = None
    postgres_dsn: SecretStr | None = Field(
        default=None, description="DSN of any database on the server; crmflow derives the others from it"
    )
    postgres_sslmode: SslMode | None = Field(default=None, description="applies when the DSN sets no sslmode")
    postgres_sslrootcert: str | None = None
    # least-privilege database roles (every stack): the sink's and the capture's DSN, else derived from the above
    target_dsn: SecretStr | None = Field(default=None, description="the sink's role on the target database")
    legacy_dsn: SecretStr | None = Field(default=None, description="the snapshot/CDC role on the legacy database")

    # Kafka TLS and SASL (crmflow.connections.KafkaConnection)
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    kafka_ssl_certificate_location: str | None = None
    kafka_ssl_key_location: str | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_oauth_token_endpoint_url: str | None = None
    kafka_oauth_client_id: str | None = None
    kafka_oauth_client_secret: SecretStr | None = None
    kafka_oauth_scope: str | None = None
    # per-stage Kafka principals; a stage without its own uses the common CRMFLOW_KAFKA_SASL_*
    snapshot_kafka_sasl_username: str | None = None
    snapshot_kafka_sasl_password: SecretStr | None = None
    cdc_kafka_sasl_username: str | None = None
    cdc_kafka_sasl_password: SecretStr | None = None
    process_kafka_sasl_username: str | None = None
    process_kafka_sasl_password: SecretStr | None = None
    sink_kafka_sasl_username: str | None = None
    sink_kafka_sasl_password: SecretStr | None = None
    ops_kafka_sasl_username: str | None = None
    ops_kafka_sasl_password: SecretStr | None = None

    # the schema registry's auth (crmflow.connections.RegistryConnection)
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    registry_bearer_token: SecretStr | None = None
    registry_bearer_logical_cluster: str = ""
    registry_ca_location: str | None = None


def load_stack_settings(**overrides: Any) -> StackSettings:
    """``StackSettings`` from the environment; a bad value is a ConfigError naming the variable (never
    echoing the value: it may be a secret)."""
    try:
        return StackSettings(**overrides)
    except ValidationError as exc:
        bad = "; ".join(f"CRMFLOW_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid setting: {bad}") from None


@lru_cache(maxsize=1)
def stack_settings() -> StackSettings:
    return load_stack_settings()
