"""The same three services as containers, through testcontainers (for machines with a Docker engine).

Containers live as long as the Python process that started them (testcontainers' reaper removes them
after), which is what a pytest session wants. ``crmflow stack up`` with this mode keeps running in the
foreground until interrupted.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from crmflow.exceptions import MissingToolError
from crmflow.settings import StackSettings
from crmflow.stack.base import Endpoints, PartStatus, Stack, wait_until
from crmflow.stack.local import _kafka_ready, _registry_ready

log = logging.getLogger(__name__)

KAFKA_IMAGE = "apache/kafka:{version}"
REGISTRY_IMAGE = "apicurio/apicurio-registry:{version}"
POSTGRES_IMAGE = "postgres:16"


class DockerStack(Stack):
    mode = "docker"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self._containers: list[Any] = []
        self._endpoints: Endpoints | None = None

    def up(self) -> Endpoints:
        if self._endpoints:
            return self._endpoints
        try:
            from testcontainers.core.container import DockerContainer
            from testcontainers.kafka import KafkaContainer
            from testcontainers.postgres import PostgresContainer
        except ImportError as exc:  # the optional extra is missing
            raise MissingToolError("testcontainers", "pip install 'crmflow[docker]'") from exc

        s = self.s
        kafka = KafkaContainer(KAFKA_IMAGE.format(version=s.kafka_version)).with_kraft()
        registry = (
            DockerContainer(REGISTRY_IMAGE.format(version=s.apicurio_version))
            .with_exposed_ports(8080)
        )
        pw = s.postgres_password.get_secret_value()
        pg = PostgresContainer(POSTGRES_IMAGE, username=s.postgres_user, password=pw, dbname="postgres")
        pg.with_command("postgres -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 "
                        "-c max_wal_size=4GB -c checkpoint_timeout=15min")  # as the local stack's, see there
        for c in (kafka, registry, pg):
            c.start()
            self._containers.append(c)

        registry_url = (
            f"http://{registry.get_container_host_ip()}:{registry.get_exposed_port(8080)}/apis/ccompat/v7"
        )
        host, port = pg.get_container_host_ip(), pg.get_exposed_port(5432)
        ep = Endpoints.from_settings(
            s, bootstrap_servers=kafka.get_bootstrap_server(), registry_url=registry_url,
            postgres_dsn=SecretStr(make_conninfo("", host=host, port=port, user=s.postgres_user, password=pw,
                                                 dbname="postgres")),
        )
        t = s.ready_timeout_s
        wait_until("kafka", lambda: _kafka_ready(ep.kafka), timeout_s=t,
                   log_tail=lambda: _container_logs(kafka))
        wait_until("registry", lambda: _registry_ready(ep.registry), timeout_s=t,
                   log_tail=lambda: _container_logs(registry))
        with ep.postgres.connect(autocommit=True) as conn:
            for db in (ep.target_database, ep.legacy_database):
                if not conn.execute("select 1 from pg_database where datname = %s", (db,)).fetchone():
                    conn.execute(f'create database "{db}"')
        self._endpoints = ep
        return ep

    def endpoints(self) -> Endpoints:
        return self._endpoints or self.up()

    def down(self) -> None:
        while self._containers:
            self._containers.pop().stop()
        self._endpoints = None

    def status(self) -> list[PartStatus]:
        if not self._endpoints:
            return [PartStatus(n, False, "-") for n in ("kafka", "registry", "postgres")]
        ep = self._endpoints
        return [
            PartStatus("kafka", True, ep.kafka.describe()),
            PartStatus("registry", True, ep.registry_url),
            PartStatus("postgres", True, ep.redacted_postgres()),
        ]


def _container_logs(container: Any) -> str:
    out, err = container.get_logs()
    return str((out + err).decode("utf-8", "replace")[-4000:])
