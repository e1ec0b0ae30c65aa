"""Is each part of the stack reachable? Checked before a run starts and watched while it runs.

A part that is down before anything moves is an :class:`InfrastructureError` at once, naming the part
and the fix (``crmflow stack up`` for the local stack). During a run, :class:`KafkaWatch` probes every
part in a thread, reports each outage (``crmflow_dependency_up``, a warning when it starts and one when it
ends) while the stages retry with backoff; only when the broker has been unreachable for ``grace_s`` does
it set ``failed``, and the orchestration stops the stages and tells the user how to resume. A part back
within that time costs nothing: the clients reconnect and the stages carry on.
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
    """Probes the broker, and the registry and the target database when given, every ``interval_s`` in a daemon
    thread. Each probe sets ``crmflow_dependency_up{dependency}``; an outage is logged when it starts (the
    stages wait with backoff meanwhile) and when it ends, with its length, and kept in ``outages``. Only
    Kafka's can be final: ``failed`` is set once the broker has been unreachable for ``grace_s`` in a row.
    ``down_for()`` says how long the broker's current outage has lasted."""

    def __init__(
        self,
        kafka: KafkaConnection | str,
        grace_s: float,
        interval_s: float = 2.0,
        on_fail: Callable[[KafkaWatch], None] | None = None,
        *,
        registry: RegistryConnection | str | None = None,
        target: PostgresConnection | str | None = None,
    ) -> None:
        self.kafka = as_kafka(kafka)
        self.bootstrap_servers = self.kafka.bootstrap_servers
        self.on_fail = on_fail
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.failed = threading.Event()
        self.reason = ""
        timeout = min(5.0, interval_s * 2)
        conn = self.kafka
        self._probes: dict[str, tuple[str, Callable[[], str | None]]] = {
            "kafka": (f"Kafka at {conn.bootstrap_servers}", lambda: kafka_reachable(conn, timeout))}
        if registry:
            reg = as_registry(registry)
            self._probes["schema_registry"] = (f"the schema registry at {reg.url}",
                                               lambda: registry_reachable(reg, timeout))
        if target:
            db = as_postgres(target)
            self._probes["postgresql"] = (f"PostgreSQL at {db.describe()}", lambda: postgres_reachable(db, timeout))
        self._since: dict[str, float] = {}
        #: Every outage seen: dependency and how long it lasted (seconds), in the order they ended.
        self.outages: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dependency-watch", daemon=True)

    def __enter__(self) -> KafkaWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def down_for(self, dependency: str = "kafka") -> float:
        since = self._since.get(dependency)
        return 0.0 if since is None else time.monotonic() - since

    def error(self) -> InfrastructureError:
        return InfrastructureError(f"Kafka at {self.bootstrap_servers}",
                                   f"unreachable for {self.down_for():.0f}s: {self.reason}", fix_hint("Kafka"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for dependency, (what, probe) in self._probes.items():
                reason = probe()
                DEPENDENCY_UP.labels(dependency=dependency).set(0 if reason else 1)
                if reason is None:
                    if dependency in self._since:
                        took = self.down_for(dependency)
                        self.outages.append((dependency, round(took, 1)))
                        log.warning("%s is reachable again after %.0fs; the stages carry on", what, took)
                        del self._since[dependency]
                    continue
                if dependency not in self._since:
                    self._since[dependency] = time.monotonic()
                    wait = f"up to {self.grace_s:.0f}s" if dependency == "kafka" else "as long as it takes"
                    log.warning("%s is unreachable (%s); the stages retry with backoff, waiting %s for it to "
                                "come back", what, reason, wait)
                if dependency == "kafka":
                    self.reason = reason
                    if self.down_for() >= self.grace_s:
                        self.failed.set()
                        if self.on_fail is not None:
                            self.on_fail(self)
                        return
