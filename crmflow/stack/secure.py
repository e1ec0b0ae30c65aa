"""The secure local stack (``crmflow stack up --secure``, ``CRMFLOW_STACK=local-secure``): TLS and
authentication everywhere, and one least-privilege identity per stage.

- Kafka: one SASL_SSL listener (SCRAM-SHA-512, client certificate required), the StandardAuthorizer with
  ``allow.everyone.if.no.acl.found=false``; the admin ``crmflow_admin`` is the only super user. The
  controller listener speaks SASL_SSL with PLAIN (SCRAM credentials live in the metadata log, which a
  controller cannot read before it authenticates), and the admin's SCRAM credential is written at
  ``kafka-storage format --add-scram`` time, so the broker can talk to itself from the first start. The stage
  principals (``crmflow_snapshot``, ``_cdc``, ``_process``, ``_sink``, ``_ops``) are upserted with the
  admin API at every start, with the ACLs of :mod:`crmflow.stack.acls` for ``secure_topic_prefixes``.
- Schema registry: Apicurio Registry 3 authenticates only through an OIDC server (its "basic auth" is the
  client-credentials grant against Keycloak), so a second Java server would be needed. Instead Debian's
  nginx terminates TLS and checks ``auth_basic`` in front of it; Apicurio listens on 127.0.0.1 on a port only
  nginx uses (``registry_port + 1`` unless ``secure_registry_backend_port`` says otherwise).
- PostgreSQL: ``ssl=on``, ``pg_hba.conf`` with ``hostssl ... scram-sha-256`` lines only (nothing for
  plain TCP), ``password_encryption=scram-sha-256``; the roles of :mod:`crmflow.stack.roles`.

Everything secret lives under ``<home>/secure/`` (mode 0700): the certificates (:mod:`crmflow.stack.certs`),
``secrets.json`` with the generated passwords and ``crmflow.env``, the connection settings of the contract
(``CRMFLOW_KAFKA_*``, ``CRMFLOW_<STAGE>_KAFKA_SASL_*``, ``CRMFLOW_REGISTRY_*``, ``CRMFLOW_POSTGRES_*``,
``CRMFLOW_TARGET_DSN``, ``CRMFLOW_LEGACY_DSN``), both 0600. The common ``CRMFLOW_KAFKA_SASL_*`` are the
admin's, for tools and test fixtures; every stage has its own principal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from crmflow.exceptions import StackError
from crmflow.settings import StackSettings
from crmflow.stack import acls, roles, tools
from crmflow.stack.base import Endpoints, PartStatus
from crmflow.stack.certs import Certs, ensure_certs
from crmflow.stack.local import SINGLE_BROKER, LocalStack, _groups_loaded, _Postgres, new_cluster_id
from crmflow.stack.process import ManagedProcess, tail

log = logging.getLogger(__name__)
#: The advisory lock key that serialises the role setup of concurrent `stack up --secure` runs.
_SETUP_LOCK = 0x63726D666C6F77  # "crmflow"

MECHANISM = "SCRAM-SHA-512"
ADMIN = "crmflow_admin"
USERS: dict[acls.Principal, str] = {p: f"crmflow_{p}" for p in acls.PRINCIPALS}
REGISTRY_USER = "crmflow"


@dataclass(frozen=True)
class Secrets:
    """The generated passwords, made once per home and kept in ``secure/secrets.json`` (0600)."""

    kafka: dict[str, str]
    registry: str
    postgres: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> Secrets:
        """The saved passwords, or new ones (saved by :meth:`save` when the stack first starts)."""
        if path.exists():
            d = json.loads(path.read_text())
            return cls(d["kafka"], d["registry"], d["postgres"])
        return cls(
            kafka={u: secrets.token_urlsafe(24) for u in (ADMIN, *USERS.values())},
            registry=secrets.token_urlsafe(24),
            postgres={u: secrets.token_urlsafe(24) for u in ("admin", roles.CAPTURE_ROLE, roles.SINK_ROLE)},
        )

    def save(self, path: Path) -> None:
        if not path.exists():
            write_private(path, json.dumps({"kafka": self.kafka, "registry": self.registry, "postgres": self.postgres}))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


def sibling_settings(settings: StackSettings, offset: int = 100) -> StackSettings:
    """Settings of a secure stack that can run next to ``settings``'s stack: every port + ``offset``, its own
    home (``<home>/secure-sibling``) sharing the downloaded jars. The test suite's secure part runs on it."""
    home = settings.home.expanduser().resolve()
    sibling = home / "secure-sibling"
    sibling.mkdir(parents=True, exist_ok=True)
    dist = sibling / "dist"
    if not dist.exists() and (home / "dist").is_dir():
        dist.symlink_to(home / "dist")
    return settings.model_copy(update={
        "stack": "local-secure", "home": sibling, "kafka_port": settings.kafka_port + offset,
        "kafka_controller_port": settings.kafka_controller_port + offset,
        "registry_port": settings.registry_port + offset, "postgres_port": settings.postgres_port + offset,
    })


class SecureStack(LocalStack):
    mode = "local-secure"

    def __init__(self, settings: StackSettings) -> None:
        self.secure_dir = settings.home.expanduser().resolve() / "secure"
        self.secrets = Secrets.load(self.secure_dir / "secrets.json")
        settings = settings.model_copy(update={"postgres_password": SecretStr(self.secrets.postgres["admin"])})
        super().__init__(settings)
        self.run_dir = self.secure_dir / "run"
        self.kafka_dir = self.secure_dir / "kafka"
        self.backend_port = settings.secure_registry_backend_port or settings.registry_port + 1
        self.kafka = ManagedProcess("kafka", self.run_dir, marker=str(self.kafka_dir / "server.properties"))
        self.registry = ManagedProcess("registry", self.run_dir, marker=f"-Dcrmflow.home={self.secure_dir}")
        self.nginx = ManagedProcess("registry-proxy", self.run_dir, marker=str(self.secure_dir / "nginx.conf"))
        self.pg = _SecurePostgres(settings, self.secure_dir)
        self.certs = Certs(self.secure_dir / "tls")
        self.env_file = self.secure_dir / "crmflow.env"

    # -- endpoints and client settings --------------------------------------------------------------
    def endpoints(self) -> Endpoints:
        """The connection models of this stack: SASL_SSL with every stage's principal, the registry's basic
        auth and CA, the admin DSN and the two least-privilege roles, all ``verify-full``."""
        client = self.client_settings()
        s = self.s
        return Endpoints.from_settings(
            client, bootstrap_servers=f"127.0.0.1:{s.kafka_port}",
            registry_url=f"https://127.0.0.1:{s.registry_port}/apis/ccompat/v7",
            postgres_dsn=SecretStr(self.postgres_dsn("postgres", s.postgres_user, self.secrets.postgres["admin"])),
        )

    def client_settings(self) -> StackSettings:
        """These settings with the contract's connection settings of this stack (what ``crmflow.env`` says)."""
        values: dict[str, Any] = {}
        for key, value in self.env().items():
            name = key.removeprefix("CRMFLOW_").lower()
            if name in StackSettings.model_fields and name not in ("stack", "home") and not name.endswith("_port"):
                field = StackSettings.model_fields[name]
                values[name] = SecretStr(value) if "SecretStr" in str(field.annotation) else value
        return self.s.model_copy(update=values)

    def postgres_dsn(self, database: str, user: str, password: str) -> str:
        return make_conninfo(host="127.0.0.1", port=str(self.s.postgres_port), dbname=database, user=user,
                             password=password, sslmode="verify-full", sslrootcert=str(self.certs.ca))

    def kafka_config(self, principal: acls.Principal | None = None, **extra: Any) -> dict[str, Any]:
        """librdkafka settings for ``principal`` (the admin when None), from the connection model."""
        kafka = self.endpoints().kafka
        return {**(kafka.for_stage(principal) if principal else kafka).client_config(), **extra}

    def registry_auth(self) -> tuple[str, str]:
        return REGISTRY_USER, self.secrets.registry

    def env(self) -> dict[str, str]:
        """The contract's ``CRMFLOW_*`` settings for this stack (what ``crmflow.env`` holds)."""
        s, c = self.s, self.certs
        bootstrap = f"127.0.0.1:{s.kafka_port}"
        registry_url = f"https://127.0.0.1:{s.registry_port}/apis/ccompat/v7"
        admin_dsn = self.postgres_dsn("postgres", s.postgres_user, self.secrets.postgres["admin"])
        out = {
            "CRMFLOW_STACK": self.mode, "CRMFLOW_HOME": str(self.home),
            "CRMFLOW_KAFKA_PORT": str(s.kafka_port), "CRMFLOW_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port),
            "CRMFLOW_REGISTRY_PORT": str(s.registry_port), "CRMFLOW_POSTGRES_PORT": str(s.postgres_port),
            "CRMFLOW_BOOTSTRAP_SERVERS": bootstrap,
            "CRMFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CRMFLOW_KAFKA_SASL_MECHANISM": MECHANISM,
            "CRMFLOW_KAFKA_SASL_USERNAME": ADMIN, "CRMFLOW_KAFKA_SASL_PASSWORD": self.secrets.kafka[ADMIN],
            "CRMFLOW_KAFKA_SSL_CA_LOCATION": str(c.ca), "CRMFLOW_KAFKA_SSL_CERTIFICATE_LOCATION": str(c.client_cert),
            "CRMFLOW_KAFKA_SSL_KEY_LOCATION": str(c.client_key),
        }
        for principal, user in USERS.items():
            stage = principal.upper()
            out[f"CRMFLOW_{stage}_KAFKA_SASL_USERNAME"] = user
            out[f"CRMFLOW_{stage}_KAFKA_SASL_PASSWORD"] = self.secrets.kafka[user]
        out |= {
            "CRMFLOW_REGISTRY_URL": registry_url, "CRMFLOW_REGISTRY_USERNAME": REGISTRY_USER,
            "CRMFLOW_REGISTRY_PASSWORD": self.secrets.registry, "CRMFLOW_REGISTRY_CA_LOCATION": str(c.ca),
            "CRMFLOW_POSTGRES_DSN": admin_dsn, "CRMFLOW_POSTGRES_SSLMODE": "verify-full",
            "CRMFLOW_POSTGRES_SSLROOTCERT": str(c.ca),
            "CRMFLOW_TARGET_DSN": self.postgres_dsn(s.target_database, roles.SINK_ROLE,
                                                    self.secrets.postgres[roles.SINK_ROLE]),
            "CRMFLOW_LEGACY_DSN": self.postgres_dsn(s.legacy_database, roles.CAPTURE_ROLE,
                                                    self.secrets.postgres[roles.CAPTURE_ROLE]),
        }
        return out

    # -- lifecycle ----------------------------------------------------------------------------------
    # -- lifecycle: LocalStack.up() with these steps -----------------------------------------------------
    def _prepare(self) -> None:
        tools.nginx()
        self.secure_dir.mkdir(parents=True, exist_ok=True)
        self.secure_dir.chmod(0o700)
        saved = self.secure_dir / "secrets.json"
        if not saved.exists() and (self.pg.initialised() or (self.kafka_dir / "data" / "meta.properties").exists()):
            # The data was made with passwords that are gone: new ones would be refused everywhere.
            raise StackError(f"{saved} is missing but the secure stack's data exists; to start over run "
                             f"`crmflow stack down --secure` and remove {self.secure_dir} and {self.pg.root}")
        self.secrets.save(saved)
        ensure_certs(self.certs.dir)

    def _starters(self) -> list[tuple[ManagedProcess, Callable[[], None]]]:
        return [*super()._starters(), (self.nginx, self._start_nginx)]

    def _ports(self) -> dict[str, int]:
        return {**super()._ports(), "CRMFLOW_SECURE_REGISTRY_BACKEND_PORT": self.backend_port}

    def _part_settings(self, part: str) -> tuple[str, ...]:
        # Apicurio listens on the backend port, nginx (TLS, basic auth) on the registry's.
        return {"registry": ("CRMFLOW_SECURE_REGISTRY_BACKEND_PORT",),
                "registry-proxy": ("CRMFLOW_REGISTRY_PORT",)}.get(part) or super()._part_settings(part)

    def _postgres_ready(self, ep: Endpoints) -> None:
        self._setup_postgres(ep)

    def _kafka_answers(self, ep: Endpoints) -> bool:
        # As the admin: the stage principals exist only once _setup_kafka made them.
        return self._kafka_ready()

    def _groups_loaded(self) -> bool:  # as the admin: the stages' principals may describe their own groups only
        return _groups_loaded(self.kafka_config())

    def _kafka_ready_hook(self) -> None:
        self._setup_kafka()

    def _registry_parts(self) -> list[ManagedProcess]:
        return [self.registry, self.nginx]

    def _ready(self) -> None:
        # shell-quoted: DSNs hold spaces, and the file is meant for `set -a; . crmflow.env; set +a`
        write_private(self.env_file, "".join(f"{k}={shlex.quote(v)}\n" for k, v in self.env().items()))

    def down(self) -> None:
        self.nginx.stop()
        super().down()

    def status(self) -> list[PartStatus]:
        kafka, _, postgres = super().status()
        registry = PartStatus("registry", self.registry.running(), f"127.0.0.1:{self.backend_port} (behind the proxy)",
                              self.registry.pid(), str(self.registry.log_file))
        proxy = PartStatus("registry-proxy", self.nginx.running(), self.endpoints().registry_url, self.nginx.pid(),
                           str(self.nginx.log_file))
        return [kafka, registry, proxy, postgres]

    def logs(self, part: str, lines: int = 50) -> str:
        if part == "registry-proxy":
            return tail(self.nginx.log_file, lines)
        return super().logs(part, lines)

    def grant(self, topic_prefix: str) -> int:
        """Create the stage principals' ACLs for ``topic_prefix`` (see :mod:`crmflow.stack.acls`)."""
        from confluent_kafka.admin import AdminClient

        return acls.apply_acls(AdminClient(self.kafka_config(log_level=0)), topic_prefix, USERS)

    def prepare_target(self, database: str) -> str:
        """Make another target database (created by the admin, e.g. a test's) the sink role's, as
        ``crm_target`` is; returns the sink role's DSN of it."""
        ep = self.endpoints()
        with ep.postgres.connect(autocommit=True) as conn:
            for stmt in roles.database_sql(database, roles.SINK_ROLE):
                conn.execute(stmt)
        with ep.postgres.connect(database, autocommit=True) as conn:
            for stmt in roles.target_sql():
                conn.execute(stmt)
        return self.postgres_dsn(database, roles.SINK_ROLE, self.secrets.postgres[roles.SINK_ROLE])

    def create_publication(self, publication: str, tables: list[str], database: str | None = None) -> None:
        """As the admin (the tables' owner): the CDC publication of ``tables``, owned by the capture role."""
        ep = self.endpoints()
        with ep.postgres.connect(database or ep.legacy_database, autocommit=True) as conn:
            for stmt in roles.publication_sql(publication, tables):
                conn.execute(stmt)

    # -- Kafka --------------------------------------------------------------------------------------
    def _start_kafka(self) -> None:
        s = self.s
        libs = tools.fetch_kafka(self.dist, s.kafka_version)
        data = self.kafka_dir / "data"
        props = self.kafka_dir / "server.properties"
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        write_private(props, _server_properties(s, data, self.certs, self.secrets.kafka[ADMIN]))
        java = tools.java()
        log4j = f"-Dlog4j2.configurationFile={tools.STACK_PKG_DIR / 'log4j2.yaml'}"
        if not (data / "meta.properties").exists():
            scram = f"{MECHANISM}=[name={ADMIN},password={self.secrets.kafka[ADMIN]}]"
            res = subprocess.run(
                [java, log4j, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", "-t", new_cluster_id(),
                 "-c", str(props), "--add-scram", scram],
                capture_output=True, text=True, check=False,
            )
            if res.returncode != 0:
                out = (res.stdout + res.stderr).replace(self.secrets.kafka[ADMIN], "***")
                raise StackError(f"formatting Kafka's log dir {data} failed:\n{out}")
        self.kafka.start(
            [java, f"-Xmx{s.kafka_heap}", "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-Djava.awt.headless=true", log4j, "-cp", f"{libs}/*", "kafka.Kafka", str(props)],
            cwd=self.kafka_dir,
        )

    def _kafka_ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            return bool(AdminClient(self.kafka_config(log_level=0)).list_topics(timeout=3).brokers)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def _setup_kafka(self) -> None:
        """Upsert the stage principals' SCRAM credentials, then their ACLs for the configured prefixes."""
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialAlteration,
            UserScramCredentialUpsertion,
        )

        admin = AdminClient(self.kafka_config(log_level=0))
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(u, info, self.secrets.kafka[u].encode()) for u in USERS.values()]
        for user, fut in admin.alter_user_scram_credentials(upserts).items():
            try:
                fut.result()
            except Exception as exc:
                raise StackError(f"creating Kafka user {user} failed: {exc}") from exc
        for prefix in self.s.secure_topic_prefixes:
            acls.apply_acls(admin, prefix, USERS)

    # -- registry behind nginx ----------------------------------------------------------------------
    def _start_registry(self) -> None:
        s = self.s
        jar = tools.fetch_apicurio(self.dist, s.apicurio_version)
        self.registry.start(
            [tools.java(), f"-Xmx{s.registry_heap}", f"-Dcrmflow.home={self.secure_dir}",
             f"-Dquarkus.http.port={self.backend_port}", "-Dquarkus.http.host=127.0.0.1",
             "-Dquarkus.log.level=WARN", "-Dquarkus.log.category.\"io.apicurio\".level=INFO", "-jar", str(jar)],
            cwd=jar.parent,
        )

    def _start_nginx(self) -> None:
        nginx = tools.nginx()
        htpasswd = self.secure_dir / "htpasswd"
        hashed = subprocess.run([tools.require("openssl", "openssl"), "passwd", "-6", "-stdin"],
                                input=self.secrets.registry, capture_output=True, text=True, check=True).stdout
        write_private(htpasswd, f"{REGISTRY_USER}:{hashed.strip()}\n")
        temp = self.secure_dir / "nginx-temp"
        temp.mkdir(parents=True, exist_ok=True)
        conf = self.secure_dir / "nginx.conf"
        write_private(conf, _nginx_conf(self.s.registry_port, self.backend_port, self.certs, htpasswd, temp,
                                        self.run_dir / "nginx.master.pid", self.nginx.log_file))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.nginx.start([nginx, "-p", str(self.secure_dir), "-e", str(self.nginx.log_file), "-c", str(conf)],
                         cwd=self.secure_dir)

    # -- PostgreSQL roles ---------------------------------------------------------------------------
    def _setup_postgres(self, ep: Endpoints) -> None:
        # One setup at a time: two `stack up` at once (the test workers' fixtures) would otherwise alter the
        # same roles together, and PostgreSQL refuses the second ("tuple concurrently updated"). The lock is
        # the session's, released when ``lock`` closes.
        with ep.postgres.connect(autocommit=True) as lock:
            lock.execute("select pg_advisory_lock(%s)", (_SETUP_LOCK,))
            self._setup_roles(ep)

    def _setup_roles(self, ep: Endpoints) -> None:
        pw = self.secrets.postgres
        with ep.postgres.connect(autocommit=True) as conn:
            for stmt in [*roles.role_sql(roles.CAPTURE_ROLE, pw[roles.CAPTURE_ROLE], replication=True),
                         *roles.role_sql(roles.SINK_ROLE, pw[roles.SINK_ROLE], replication=False),
                         *roles.database_sql(ep.legacy_database, roles.CAPTURE_ROLE),
                         *roles.database_sql(ep.target_database, roles.SINK_ROLE)]:
                conn.execute(stmt)
        with ep.postgres.connect(ep.legacy_database, autocommit=True) as conn:
            for stmt in roles.legacy_sql(self.s.postgres_user):
                conn.execute(stmt)
        with ep.postgres.connect(ep.target_database, autocommit=True) as conn:
            for stmt in roles.target_sql():
                conn.execute(stmt)


class _SecurePostgres(_Postgres):
    """The private cluster with TLS required: its own data dir, certificates copied in for its OS user."""

    def __init__(self, s: StackSettings, secure_dir: Path) -> None:
        super().__init__(s, secure_dir)
        # As root the cluster lives where the postgres OS user can enter (/var/tmp), named after the port AND
        # this home: its passwords are in this home's secrets.json, so another home must never find it.
        home_tag = hashlib.sha256(str(secure_dir.resolve()).encode()).hexdigest()[:8]
        default = Path(f"/var/tmp/crmflow-postgres-secure-{s.postgres_port}-{home_tag}") if self.as_root \
            else secure_dir / "postgres"
        self.root = default.resolve()
        self.data = self.root / "data"
        self.sock = self.root / "run"
        self.log_file = self.root / "postgres.log"
        self.certs = Certs(secure_dir / "tls")

    def write_settings(self) -> None:
        super().write_settings()
        for name, src in (("server.crt", self.certs.server_cert), ("server.key", self.certs.server_key)):
            dst = self.data / name
            shutil.copyfile(src, dst)
            dst.chmod(0o600)
        with (self.data / "crmflow.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                       "ssl_min_protocol_version = 'TLSv1.2'\npassword_encryption = 'scram-sha-256'\n")
        # TLS only over TCP; the socket in the private run dir also asks for a password.
        (self.data / "pg_hba.conf").write_text(
            "# crmflow secure stack: rewritten at every start\n"
            "local   all          all                    scram-sha-256\n"
            "hostssl all          all          127.0.0.1/32 scram-sha-256\n"
            "hostssl replication  all          127.0.0.1/32 scram-sha-256\n"
        )
        if self.as_root:
            subprocess.run(["chown", "-R", f"{self.s.postgres_os_user}:", str(self.data)], check=True)


def _server_properties(s: StackSettings, data: Path, certs: Certs, admin_password: str) -> str:
    scram = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" '
             f'password="{admin_password}";')
    plain = (f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{ADMIN}" '
             f'password="{admin_password}" user_{ADMIN}="{admin_password}";')
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
        f"listeners=SASL_SSL://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
        f"advertised.listeners=SASL_SSL://127.0.0.1:{s.kafka_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL",
        "inter.broker.listener.name=SASL_SSL",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        "sasl.mechanism.controller.protocol=PLAIN",
        f"listener.name.sasl_ssl.sasl.enabled.mechanisms={MECHANISM}",
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config={scram}",
        "listener.name.sasl_ssl.ssl.client.auth=required",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={plain}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={certs.server_pem}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={certs.ca}",
        "ssl.endpoint.identification.algorithm=https",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:{ADMIN}",
        f"log.dirs={data}",
        "num.partitions=1",
        "auto.create.topics.enable=false",
        *SINGLE_BROKER,
        "",
    ])


def _nginx_conf(port: int, backend: int, certs: Certs, htpasswd: Path, temp: Path, pid: Path, log_file: Path) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""  # the workers read the 0600 htpasswd
    temps = "".join(f"    {kind}_temp_path {temp / kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                           "uwsgi", "scgi"))
    return f"""# crmflow secure stack: TLS and basic auth in front of Apicurio Registry. Rewritten at every start.
{user}worker_processes 1;
daemon off;
pid {pid};
error_log {log_file} warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temps}    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs.server_cert};
        ssl_certificate_key {certs.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        auth_basic "crmflow schema registry";
        auth_basic_user_file {htpasswd};
        client_max_body_size 16m;
        location / {{
            proxy_pass http://127.0.0.1:{backend};
            proxy_set_header Host $host:$server_port;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"""
