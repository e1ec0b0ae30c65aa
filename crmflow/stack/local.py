"""The local stack: Kafka (KRaft), Apicurio Registry and a private PostgreSQL cluster, no Docker.

Layout under ``settings.home``::

    dist/       Kafka jars and the Apicurio assembly, fetched from Maven Central once
    kafka/      server.properties, data/ (the formatted log dir)
    run/        <part>.pid and <part>.log of the Java processes
    postgres/   the private cluster (data/, run/ for its socket, postgres.log) — under /var/tmp as root,
                because PostgreSQL refuses to run as root and its OS user cannot enter /root
"""

from __future__ import annotations

import base64
import logging
import os
import pwd
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from crmflow.connections import KafkaConnection, RegistryConnection
from crmflow.exceptions import StackError
from crmflow.settings import StackSettings
from crmflow.stack import tools
from crmflow.stack.base import Endpoints, PartStatus, Stack, wait_until
from crmflow.stack.process import ManagedProcess, tail

log = logging.getLogger(__name__)

#: server.properties lines of a one-broker cluster, shared by the plain and the secure stack: internal topics with
#: one replica, no initial rebalance delay, a week of retention.
SINGLE_BROKER: tuple[str, ...] = (
    "offsets.topic.replication.factor=1",
    "offsets.topic.num.partitions=8",
    "transaction.state.log.replication.factor=1",
    "transaction.state.log.min.isr=1",
    "transaction.state.log.num.partitions=4",
    "share.coordinator.state.topic.replication.factor=1",
    "share.coordinator.state.topic.min.isr=1",
    "group.initial.rebalance.delay.ms=0",
    "log.retention.hours=168",
    "log.segment.bytes=268435456",
)


class LocalStack(Stack):
    mode = "local"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.home = settings.home.expanduser().resolve()
        self.dist = self.home / "dist"
        self.run_dir = self.home / "run"
        self.kafka = ManagedProcess("kafka", self.run_dir, marker=str(self.home / "kafka" / "server.properties"))
        self.registry = ManagedProcess("registry", self.run_dir, marker=f"-Dquarkus.http.port={settings.registry_port}")
        self.pg = _Postgres(settings, self.home)

    # -- endpoints ---------------------------------------------------------------------------------
    def endpoints(self) -> Endpoints:
        s = self.s
        dsn = make_conninfo("", host="127.0.0.1", port=s.postgres_port, user=s.postgres_user,
                            password=s.postgres_password.get_secret_value(), dbname="postgres")
        return Endpoints.from_settings(s, bootstrap_servers=f"127.0.0.1:{s.kafka_port}",
                                       registry_url=f"http://127.0.0.1:{s.registry_port}/apis/ccompat/v7",
                                       postgres_dsn=SecretStr(dsn))

    # -- lifecycle ---------------------------------------------------------------------------------
    def fetch(self) -> None:
        """Download what is missing (Maven Central); a no-op when the cache is complete."""
        tools.java()
        tools.fetch_kafka(self.dist, self.s.kafka_version)
        tools.fetch_apicurio(self.dist, self.s.apicurio_version)

    def up(self) -> Endpoints:
        """Start what is not running and wait until every part answers. A variant (the secure stack) adds its
        steps through the hooks below; the order of starting and waiting is the same for both."""
        self.check_ports()
        self.fetch()
        self._prepare()
        ep = self.endpoints()
        started = time.monotonic()
        # Start every part before waiting on any: the JVMs warm up in parallel.
        for part, start in self._starters():
            if not part.running():
                start()
        self.pg.start()
        timeout = self.s.ready_timeout_s
        wait_until("postgres", lambda: self.pg.accepts(ep), timeout_s=timeout,
                   log_tail=lambda: tail(self.pg.log_file), alive=self.pg.running)
        self.pg.ensure_databases(ep)
        self._postgres_ready(ep)
        wait_until("kafka", lambda: self._kafka_answers(ep), timeout_s=timeout,
                   log_tail=lambda: tail(self.kafka.log_file),
                   alive=lambda: self.kafka.alive_or_starting(started))
        self._kafka_ready_hook()
        registry_parts = self._registry_parts()
        wait_until("registry", lambda: _registry_ready(ep.registry), timeout_s=timeout,
                   log_tail=lambda: "".join(tail(p.log_file) for p in registry_parts),
                   alive=lambda: all(p.alive_or_starting(started) for p in registry_parts))
        # Last, as the registry took seconds: by then a broker that kept groups from earlier runs is loading them.
        wait_until("kafka's group coordinator", self._groups_loaded, timeout_s=timeout,
                   log_tail=lambda: tail(self.kafka.log_file), alive=lambda: self.kafka.alive_or_starting(started))
        self._ready()
        log.info("%s stack ready in %.1fs", self.mode, time.monotonic() - started)
        return ep

    # -- hooks of up(): the plain stack needs none of them ---------------------------------------------
    def _prepare(self) -> None:
        """Before anything starts."""

    def _starters(self) -> list[tuple[ManagedProcess, Callable[[], None]]]:
        return [(self.kafka, self._start_kafka), (self.registry, self._start_registry)]

    def check_ports(self) -> None:
        """Before anything starts: a StackError naming the variable of a port another process holds, for every
        part that is not running yet (instead of that part failing with it in its log), and a warning for a
        port in the ephemeral range, where a client connection may take it at any moment."""
        ports = self._ports()
        for setting, port in ports.items():
            if hint := tools.port_hint(port):
                log.warning("%s=%d: %s", setting, port, hint)
        parts = [p.name for p, _ in self._starters() if not p.running()]
        for part in parts + ([] if self.pg.running() else ["postgres"]):
            for setting in self._part_settings(part):
                tools.ensure_port_free(ports[setting], setting, part)

    def _ports(self) -> dict[str, int]:
        """The ports the stack's parts listen on, by the variable that sets each."""
        s = self.s
        return {"CRMFLOW_KAFKA_PORT": s.kafka_port, "CRMFLOW_KAFKA_CONTROLLER_PORT": s.kafka_controller_port,
                "CRMFLOW_REGISTRY_PORT": s.registry_port, "CRMFLOW_POSTGRES_PORT": s.postgres_port}

    def _part_settings(self, part: str) -> tuple[str, ...]:
        """The variables of :meth:`_ports` whose port ``part`` listens on."""
        return {"kafka": ("CRMFLOW_KAFKA_PORT", "CRMFLOW_KAFKA_CONTROLLER_PORT"),
                "registry": ("CRMFLOW_REGISTRY_PORT",), "postgres": ("CRMFLOW_POSTGRES_PORT",)}.get(part, ())

    def _postgres_ready(self, ep: Endpoints) -> None:
        """Once PostgreSQL accepts connections and the stack's databases exist."""

    def _kafka_answers(self, ep: Endpoints) -> bool:
        return _kafka_ready(ep.kafka)

    def _kafka_ready_hook(self) -> None:
        """Once Kafka answers."""

    def _groups_loaded(self) -> bool:
        return _groups_loaded(self.endpoints().kafka.for_stage("ops").client_config())

    def _registry_parts(self) -> list[ManagedProcess]:
        """The processes the registry's URL depends on (their logs are shown if it never answers)."""
        return [self.registry]

    def _ready(self) -> None:
        """Once every part answers."""

    def down(self) -> None:
        self.registry.stop()
        self.kafka.stop()
        self.pg.stop()

    def status(self) -> list[PartStatus]:
        ep = self.endpoints()
        return [
            PartStatus("kafka", self.kafka.running(), ep.kafka.describe(), self.kafka.pid(), str(self.kafka.log_file)),
            PartStatus("registry", self.registry.running(), ep.registry_url, self.registry.pid(),
                       str(self.registry.log_file)),
            PartStatus("postgres", self.pg.running(), ep.redacted_postgres(), self.pg.pid(), str(self.pg.log_file)),
        ]

    def logs(self, part: str, lines: int = 50) -> str:
        files = {"kafka": self.kafka.log_file, "registry": self.registry.log_file, "postgres": self.pg.log_file}
        if part not in files:
            raise StackError(f"unknown part {part!r}; expected one of: {', '.join(files)}")
        return tail(files[part], lines)

    # -- parts -------------------------------------------------------------------------------------
    def _start_kafka(self) -> None:
        s = self.s
        libs = tools.fetch_kafka(self.dist, s.kafka_version)
        kdir = self.home / "kafka"
        data = kdir / "data"
        props = kdir / "server.properties"
        kdir.mkdir(parents=True, exist_ok=True)
        props.write_text(_server_properties(s, data))
        java = tools.java()
        classpath = f"{libs}/*"
        log4j = f"-Dlog4j2.configurationFile={tools.STACK_PKG_DIR / 'log4j2.yaml'}"
        if not (data / "meta.properties").exists():
            cluster_id = new_cluster_id()
            res = subprocess.run(
                [java, log4j, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                 "-c", str(props)],
                capture_output=True, text=True, check=False,
            )
            if res.returncode != 0:
                raise StackError(f"formatting Kafka's log dir failed:\n{res.stdout}{res.stderr}")
        self.kafka.start(
            [java, f"-Xmx{s.kafka_heap}", "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-Djava.awt.headless=true", log4j, "-cp", classpath, "kafka.Kafka", str(props)],
            cwd=kdir,
        )

    def _start_registry(self) -> None:
        s = self.s
        jar = tools.fetch_apicurio(self.dist, s.apicurio_version)
        self.registry.start(
            [tools.java(), f"-Xmx{s.registry_heap}", f"-Dquarkus.http.port={s.registry_port}",
             "-Dquarkus.http.host=127.0.0.1", "-Dquarkus.log.level=WARN",
             "-Dquarkus.log.category.\"io.apicurio\".level=INFO", "-jar", str(jar)],
            cwd=jar.parent,
        )


def new_cluster_id() -> str:
    """A KRaft cluster id (URL-safe base64 of a random UUID) that does not start with "-": StorageTool's
    argument parser would take such an id for an option (1 run in 64 failed to format the log dir)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _server_properties(s: StackSettings, data: Path) -> str:
    # One node, both roles. Small internal topics: the default 50 offset partitions cost seconds
    # of start-up on two cores and buy nothing on one broker.
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=1",
        "auto.create.topics.enable=true",
        *SINGLE_BROKER,
        "",
    ])


def _kafka_ready(kafka: KafkaConnection) -> bool:
    try:
        md = AdminClient({**kafka.for_stage("ops").client_config(), "log_level": 0}).list_topics(timeout=2)
        return bool(md.brokers)
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False


def _groups_loaded(client_config: dict[str, Any]) -> bool:
    """Whether the group coordinator has loaded every partition of ``__consumer_offsets``. Until it has, it
    lists no group (first with no error at all, then COORDINATOR_LOAD_IN_PROGRESS: seconds on a broker that
    kept many groups from earlier runs), so a group listing taken then misses every group. Listing groups
    cannot tell, so one group id that lives on each partition is described: a partition not loaded yet answers
    NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS, a loaded one the (dead) group."""
    try:
        admin = AdminClient({**client_config, "log_level": 0})
        md = admin.list_topics(timeout=2)
        if not md.brokers:
            return False
        offsets = md.topics.get("__consumer_offsets")
        if offsets is None:  # a new cluster: nothing to load
            return True
        probes = _group_per_partition(len(offsets.partitions))
        for future in admin.describe_consumer_groups(probes, request_timeout=2).values():
            future.result()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False


def _group_per_partition(partitions: int) -> list[str]:
    """A group id for each partition of ``__consumer_offsets``, placed as the broker places them: Java's
    ``String.hashCode`` of the id, its absolute value (0 for the smallest int), modulo the partitions."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        group = f"crmflow-stack-probe-{n}"
        h = java_hash(group)
        found.setdefault(0 if h == -(1 << 31) else abs(h) % partitions, group)
        n += 1
    return [found[p] for p in range(partitions)]


def java_hash(text: str) -> int:
    """Java's ``String.hashCode`` of an ASCII string (one UTF-16 unit a character), a signed 32-bit int."""
    h = 0
    for ch in text:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _registry_ready(registry: RegistryConnection) -> bool:
    try:
        with registry.http_client(timeout_s=2) as http:
            return http.get("/subjects").status_code == 200
    except httpx.HTTPError:
        return False


class _Postgres:
    """A private cluster run with pg_ctl. As root it runs as ``settings.postgres_os_user``."""

    def __init__(self, s: StackSettings, home: Path) -> None:
        self.s = s
        self.as_root = os.geteuid() == 0
        default = Path(f"/var/tmp/crmflow-postgres-{s.postgres_port}") if self.as_root else home / "postgres"
        self.root = (s.postgres_dir or default).expanduser().resolve()
        self.data = self.root / "data"
        self.sock = self.root / "run"
        self.log_file = self.root / "postgres.log"

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self.as_root:
            argv = ["runuser", "-u", self.s.postgres_os_user, "--", *argv]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        if check and res.returncode != 0:
            raise StackError(f"{' '.join(argv)} failed:\n{res.stdout}{res.stderr}\n{tail(self.log_file)}")
        return res

    def _ensure_os_user(self) -> None:
        name = self.s.postgres_os_user
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)
        subprocess.run(["chown", "-R", f"{name}:", str(self.root)], check=True)

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        bindir = tools.postgres_bindir()
        self.sock.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / ".pwfile"
        pwfile.write_text(self.s.postgres_password.get_secret_value() + "\n")
        pwfile.chmod(0o600)
        if self.as_root:
            self._ensure_os_user()
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", self.s.postgres_user,
                   f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                   "-E", "UTF8", "--no-locale"])
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# crmflow local stack: settings rewritten at every start\n")
            conf.write("include_if_exists = 'crmflow.conf'\n")

    def write_settings(self) -> None:
        """(Re)write the stack's settings, so a changed port or setting applies on the next start."""
        (self.data / "crmflow.conf").write_text("\n".join([
            f"port = {self.s.postgres_port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.sock}'",
            "wal_level = logical",
            "max_replication_slots = 20",
            "max_wal_senders = 20",
            "max_connections = 200",
            "shared_buffers = 256MB",
            # A migration writes the target in bulk (about 2.7 KB of WAL per record): with the default 1GB, WAL
            # volume forces a checkpoint every few hundred thousand records, and each one makes the next change of
            # every page write it whole (full-page images). PostgreSQL's advice for populating a database.
            "max_wal_size = 4GB",
            "checkpoint_timeout = 15min",
            # Segments in the data dir, not /dev/shm: a container's /dev/shm is small, and anything that
            # clears it (IPC clean-up on logout) would break every new connection.
            "dynamic_shared_memory_type = mmap",
            "logging_collector = off",
            "",
        ]))

    def running(self) -> bool:
        return self.pid() is not None

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, IndexError, ProcessLookupError, PermissionError):
            return None

    def start(self) -> None:
        if not self.initialised():
            self.init()
        if self.running():
            return
        self.write_settings()
        if self.as_root:
            self._ensure_os_user()
        bindir = tools.postgres_bindir()
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file), "-w", "-t",
                   str(int(self.s.ready_timeout_s)), "start"])

    def stop(self) -> None:
        if not self.running():
            return
        bindir = tools.postgres_bindir()
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def accepts(self, ep: Endpoints) -> bool:
        try:
            with ep.postgres.connect(connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def ensure_databases(self, ep: Endpoints) -> None:
        with ep.postgres.connect(autocommit=True) as conn:
            have = {r[0] for r in conn.execute("select datname from pg_database")}
            for db in (ep.target_database, ep.legacy_database):
                if db not in have:
                    conn.execute(f'create database "{db}"')
