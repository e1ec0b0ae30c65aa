"""An existing cluster: crmflow starts nothing and only checks that the services answer."""

from __future__ import annotations

from crmflow.exceptions import ConfigError
from crmflow.settings import StackSettings
from crmflow.stack.base import Endpoints, PartStatus, Stack, wait_until
from crmflow.stack.local import _kafka_ready, _registry_ready


class ExternalStack(Stack):
    mode = "external"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings

    def endpoints(self) -> Endpoints:
        s = self.s
        missing = [
            name
            for name, value in (
                ("CRMFLOW_BOOTSTRAP_SERVERS", s.bootstrap_servers),
                ("CRMFLOW_REGISTRY_URL", s.registry_url),
                ("CRMFLOW_POSTGRES_DSN", s.postgres_dsn),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"CRMFLOW_STACK=external needs {', '.join(missing)} to be set")
        return Endpoints.from_settings(s)

    def up(self) -> Endpoints:
        import psycopg

        ep = self.endpoints()

        def pg_ok() -> bool:
            try:
                with ep.postgres.connect(connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False

        def no_log() -> str:
            return "(external service: see its own logs)"

        t = self.s.ready_timeout_s
        wait_until("kafka", lambda: _kafka_ready(ep.kafka), timeout_s=t, log_tail=no_log)
        wait_until("registry", lambda: _registry_ready(ep.registry), timeout_s=t, log_tail=no_log)
        wait_until("postgres", pg_ok, timeout_s=t, log_tail=no_log)
        return ep

    def down(self) -> None:
        """Nothing to stop: crmflow did not start these services."""

    def status(self) -> list[PartStatus]:
        ep = self.endpoints()
        return [
            PartStatus("kafka", _kafka_ready(ep.kafka), ep.bootstrap_servers),
            PartStatus("registry", _registry_ready(ep.registry), ep.registry_url),
            PartStatus("postgres", True, ep.redacted_postgres(), detail="not probed"),
        ]
