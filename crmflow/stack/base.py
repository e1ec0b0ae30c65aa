"""What every stack implementation offers, and the endpoints it hands to the rest of crmflow."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from crmflow.connections import KafkaConnection, PostgresConnection, RegistryConnection
from crmflow.exceptions import ConfigError, NotReadyError
from crmflow.settings import StackSettings


@dataclass(frozen=True)
class Endpoints:
    """How to reach the three services, as the connection models of :mod:`crmflow.connections`.

    ``postgres`` is the admin connection (any database on the server); ``target`` and ``legacy`` are what
    the sink resp. snapshot/CDC connect with: the least-privilege roles of ``CRMFLOW_TARGET_DSN`` and
    ``CRMFLOW_LEGACY_DSN`` when set, else ``postgres`` on the target resp. legacy database. The ``*_dsn``
    and ``bootstrap_servers``/``registry_url`` properties are read-only conveniences (tests, scripts); crmflow
    builds every client through the models' edge conversions.
    """

    kafka: KafkaConnection
    registry: RegistryConnection
    postgres: PostgresConnection
    target_database: str = "crm_target"
    legacy_database: str = "crm_legacy"
    target_role: PostgresConnection | None = None
    legacy_role: PostgresConnection | None = None

    @classmethod
    def from_settings(cls, s: StackSettings, *, bootstrap_servers: str | None = None, registry_url: str | None = None,
                      postgres_dsn: str | SecretStr | None = None) -> Endpoints:
        """The endpoints the ``CRMFLOW_*`` settings describe; the keyword arguments are what a stack knows
        of its own services and override ``CRMFLOW_BOOTSTRAP_SERVERS``/``_REGISTRY_URL``/``_POSTGRES_DSN``."""
        dsn = postgres_dsn or s.postgres_dsn
        if dsn is None:
            raise ConfigError("CRMFLOW_POSTGRES_DSN is not set; set it to the DSN of any database on the server")
        pg = {"sslmode": s.postgres_sslmode, "sslrootcert": s.postgres_sslrootcert}

        def role(value: SecretStr | None, setting: str) -> PostgresConnection | None:
            return None if value is None else PostgresConnection.from_dsn(value, setting=setting, **pg)

        return cls(
            kafka=KafkaConnection.from_settings(s, bootstrap_servers=bootstrap_servers),
            registry=RegistryConnection.from_settings(s, url=registry_url),
            postgres=PostgresConnection.from_dsn(dsn, setting="CRMFLOW_POSTGRES_DSN", **pg),
            target_database=s.target_database,
            legacy_database=s.legacy_database,
            target_role=role(s.target_dsn, "CRMFLOW_TARGET_DSN"),
            legacy_role=role(s.legacy_dsn, "CRMFLOW_LEGACY_DSN"),
        )

    @classmethod
    def plain(cls, bootstrap_servers: str, registry_url: str, postgres_dsn: str, **kwargs: Any) -> Endpoints:
        """Endpoints without TLS or auth beyond the DSN's password (tests, quick scripts)."""
        return cls(KafkaConnection(bootstrap_servers=bootstrap_servers), RegistryConnection(url=registry_url),
                   PostgresConnection.from_dsn(postgres_dsn), **kwargs)

    @property
    def target(self) -> PostgresConnection:
        """What the sink connects with."""
        if self.target_role is not None:
            return self.target_role
        return self.postgres.with_database(self.target_database, setting="CRMFLOW_POSTGRES_DSN (target database)")

    @property
    def legacy(self) -> PostgresConnection:
        """What snapshot and CDC connect with."""
        if self.legacy_role is not None:
            return self.legacy_role
        return self.postgres.with_database(self.legacy_database, setting="CRMFLOW_POSTGRES_DSN (legacy database)")

    def database(self, database: str) -> PostgresConnection:
        """The admin connection on another database of the same server."""
        return self.postgres.with_database(database)

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers

    @property
    def registry_url(self) -> str:
        return self.registry.url

    @property
    def postgres_dsn(self) -> str:
        """The admin DSN in clear: for a connect call only (tests, scripts)."""
        return self.postgres.conninfo()

    def dsn(self, database: str) -> str:
        """The admin DSN of another database on the same server, in clear: for a connect call only."""
        return self.postgres.conninfo(database)

    @property
    def target_dsn(self) -> str:
        return self.target.conninfo()

    @property
    def legacy_dsn(self) -> str:
        return self.legacy.conninfo()

    def redacted_postgres(self) -> str:
        """Host, port and user of PostgreSQL, without the password, for printing."""
        p = self.postgres
        return f"{p.user or '?'}@{p.host or '?'}:{p.port or 5432}"


@dataclass(frozen=True)
class PartStatus:
    name: str
    running: bool
    address: str
    pid: int | None = None
    detail: str = ""


class Stack(abc.ABC):
    """Lifecycle: ``up()`` starts (or finds running) every part and waits until each is ready, then
    returns the endpoints; calling it again is harmless. ``down()`` stops what ``up()`` started and leaves
    no process behind. ``status()`` and ``logs()`` never change anything."""

    mode: str

    @abc.abstractmethod
    def up(self) -> Endpoints: ...

    @abc.abstractmethod
    def down(self) -> None: ...

    @abc.abstractmethod
    def status(self) -> list[PartStatus]: ...

    @abc.abstractmethod
    def endpoints(self) -> Endpoints: ...

    def logs(self, part: str, lines: int = 50) -> str:
        return f"{self.mode} stack keeps no logs for {part}"


def wait_until(
    part: str,
    probe: Callable[[], bool],
    *,
    timeout_s: float,
    log_tail: Callable[[], str],
    alive: Callable[[], bool] = lambda: True,
    interval_s: float = 0.25,
) -> None:
    """Poll ``probe`` until it answers True; fail fast if the process died, else after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if probe():
            return
        if not alive():
            raise NotReadyError(f"{part} (process exited)", 0, log_tail())
        if time.monotonic() > deadline:
            raise NotReadyError(part, timeout_s, log_tail())
        time.sleep(interval_s)
