"""Is each part of the stack reachable? Checked before a run starts and watched while it runs.

A part that is down before anything moves is an :class:`InfrastructureError` at once, naming the part
and the fix (``crmflow stack up`` for the local stack). During a run, :class:`KafkaWatch` probes the
broker in a thread; when it has been unreachable for ``grace_s`` it sets ``failed``, and the
orchestration stops the stages and tells the user how to resume. A broker back within the grace period
costs nothing: librdkafka reconnects and the stages carry on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx
import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from crmflow.connections import (
    KafkaConnection,
    PostgresConnection,
    RegistryConnection,
    as_kafka,
    as_postgres,
    as_registry,
    kafka_config,
)
from crmflow.exceptions import ConfigError, InfrastructureError
from crmflow.metrics import DEPENDENCY_UP
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints

log = logging.getLogger(__name__)


def fix_hint(part: str) -> str:
    """What to do when ``part`` is down, for the stack mode in use."""
    mode = stack_settings().stack
    if mode == "local":
        return "start it with `crmflow stack up` (see `crmflow stack status`)"
    if mode == "docker":
        return "start the containers again with `crmflow stack up`"
    env = {"Kafka": "CRMFLOW_BOOTSTRAP_SERVERS", "schema registry": "CRMFLOW_REGISTRY_URL"}.get(part, "the DSN")
    return f"check that it runs and that {env} points at it"


def kafka_reachable(kafka: KafkaConnection | str, timeout_s: float = 5.0, *, strict: bool = False) -> str | None:
    """None when a broker answers a metadata request; else a short reason (naming the setting to fix when
    the cluster refused the credentials or TLS; with ``strict`` that refusal is raised as a ConfigError)."""
    conn = as_kafka(kafka)
    admin = AdminClient(kafka_config(conn))
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        refusal = conn.explain(err)
        if refusal is not None and strict:
            raise refusal from None
        return str(refusal) if refusal is not None else str(getattr(err, "str", lambda: str(err))())
    return None


def registry_reachable(registry: RegistryConnection | str, timeout_s: float = 5.0, *,
                       strict: bool = False) -> str | None:
    conn = as_registry(registry)
    try:
        with conn.http_client(timeout_s) as http:
            resp = http.get("/subjects")
    except httpx.HTTPError as exc:
        return exc.__class__.__name__
    refusal = conn.explain(resp.status_code)
    if refusal is not None and strict:
        raise refusal
    if refusal is not None:
        return str(refusal)
    return None if resp.status_code < 500 else f"HTTP {resp.status_code}"


def postgres_reachable(dsn: PostgresConnection | str, timeout_s: float = 5.0, *, strict: bool = False) -> str | None:
    try:
        with as_postgres(dsn).connect(connect_timeout=max(1, int(timeout_s))):
            return None
    except ConfigError as exc:  # refused credentials or TLS: the message names the setting
        if strict:
            raise
        return str(exc)
    except psycopg.OperationalError as exc:
        # The first line only: psycopg's message names host and port, never the password.
        return str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"


def require_reachable(ep: Endpoints, target_dsn: PostgresConnection | str) -> None:
    """Raise :class:`InfrastructureError` for the first part that does not answer, or a ConfigError naming
    the setting for one that refused crmflow's credentials or TLS (retrying cannot fix that)."""
    target = as_postgres(target_dsn)
    checks: list[tuple[str, str, Callable[[], str | None]]] = [
        ("Kafka", ep.bootstrap_servers, lambda: kafka_reachable(ep.kafka.for_stage("ops"), strict=True)),
        ("schema registry", ep.registry_url, lambda: registry_reachable(ep.registry, strict=True)),
        ("PostgreSQL", target.describe(), lambda: postgres_reachable(target, strict=True)),
    ]
    for part, where, probe in checks:
        reason = probe()
        DEPENDENCY_UP.labels(dependency=part.lower().replace(" ", "_")).set(0 if reason else 1)
        if reason:
            raise InfrastructureError(f"{part} at {where}", reason, fix_hint(part))


class KafkaWatch:
    """Probes the broker every ``interval_s`` in a daemon thread; ``failed`` is set once it has been
    unreachable for ``grace_s`` in a row. ``down_for()`` says how long the current outage has lasted."""

    def __init__(
        self,
        kafka: KafkaConnection | str,
        grace_s: float,
        interval_s: float = 2.0,
        on_fail: Callable[[KafkaWatch], None] | None = None,
    ) -> None:
        self.kafka = as_kafka(kafka)
        self.bootstrap_servers = self.kafka.bootstrap_servers
        self.on_fail = on_fail
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.failed = threading.Event()
        self.reason = ""
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-watch", daemon=True)

    def __enter__(self) -> KafkaWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def down_for(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def error(self) -> InfrastructureError:
        return InfrastructureError(f"Kafka at {self.bootstrap_servers}",
                                   f"unreachable for {self.down_for():.0f}s: {self.reason}", fix_hint("Kafka"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            reason = kafka_reachable(self.kafka, timeout_s=min(5.0, self.interval_s * 2))
            DEPENDENCY_UP.labels(dependency="kafka").set(0 if reason else 1)
            if reason is None:
                if self._down_since is not None:
                    log.info("Kafka is reachable again after %.0fs", self.down_for())
                self._down_since = None
                continue
            self.reason = reason
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("Kafka at %s is unreachable (%s); waiting up to %.0fs for it to come back",
                            self.bootstrap_servers, reason, self.grace_s)
            if self.down_for() >= self.grace_s:
                self.failed.set()
                if self.on_fail is not None:
                    self.on_fail(self)
                return
