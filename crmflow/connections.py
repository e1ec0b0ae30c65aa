"""How crmflow reaches each external system: one frozen model per system, converted to a client's own
config only at the edge.

- :class:`KafkaConnection` → :meth:`~KafkaConnection.client_config` (librdkafka's dotted keys) for every
  Producer, Consumer and AdminClient; :meth:`~KafkaConnection.for_stage` picks a stage's own principal.
- :class:`RegistryConnection` → :meth:`~RegistryConnection.client_config` / :meth:`~RegistryConnection.client`
  (confluent-kafka's ``SchemaRegistryClient``) and :meth:`~RegistryConnection.http_client` (httpx).
- :class:`PostgresConnection` → :meth:`~PostgresConnection.conninfo` / :meth:`~PostgresConnection.connect`.

Every value comes from a ``CRMFLOW_*`` setting (:class:`crmflow.settings.StackSettings`), and every error
names the setting to fix. Secrets are :class:`~pydantic.SecretStr`: ``repr``, ``str`` and ``model_dump``
show ``**********``; only the edge conversions hold them in clear, for the one call that needs them.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from crmflow.exceptions import ConfigError
from crmflow.kafkalog import client_logging, redact
from crmflow.settings import SaslMechanism, SecurityProtocol, SslMode, StackSettings, load_stack_settings

if TYPE_CHECKING:
    import httpx
    import psycopg
    from confluent_kafka import KafkaError
    from confluent_kafka.schema_registry import SchemaRegistryClient

#: The Kafka principals of least privilege: one per stage, OPS for the CLI's admin work (topics, dlq, runs).
Stage = Literal["snapshot", "cdc", "process", "sink", "ops"]
STAGES: tuple[Stage, ...] = get_args(Stage)

log = logging.getLogger(__name__)

KAFKA = "CRMFLOW_KAFKA"  # the prefix of the common Kafka settings


class ConnectionModel(BaseModel):
    """The base of the connection models: frozen, unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SaslCredentials(ConnectionModel):
    """A SASL user and password (PLAIN or SCRAM)."""

    username: str
    password: SecretStr


# ---------------------------------------------------------------------------------------------------- Kafka


class KafkaConnection(ConnectionModel):
    """Kafka: the brokers, TLS and SASL. ``principal`` is the settings prefix the SASL user came from
    (``CRMFLOW_KAFKA`` or, after :meth:`for_stage`, ``CRMFLOW_SINK_KAFKA``...), so errors name it."""

    bootstrap_servers: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    oauth_token_endpoint_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_scope: str | None = None
    #: Per-stage principals (``CRMFLOW_<STAGE>_KAFKA_SASL_*``); :meth:`for_stage` applies one.
    stage_credentials: tuple[tuple[Stage, SaslCredentials], ...] = ()
    stage: Stage | None = None
    principal: str = KAFKA

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.bootstrap_servers.strip():
            raise ConfigError("CRMFLOW_BOOTSTRAP_SERVERS is empty; set it to host:port[,host:port...]")
        protocol = f"{KAFKA}_SECURITY_PROTOCOL={self.security_protocol}"
        if self.uses_sasl and self.sasl_mechanism is None:
            raise ConfigError(f"{KAFKA}_SASL_MECHANISM is required when {protocol} "
                              f"(one of {', '.join(get_args(SaslMechanism))})")
        if not self.uses_sasl and self.sasl_mechanism is not None:
            raise ConfigError(f"{KAFKA}_SASL_MECHANISM={self.sasl_mechanism} needs {KAFKA}_SECURITY_PROTOCOL="
                              f"SASL_SSL or SASL_PLAINTEXT, but {protocol}")
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            raise ConfigError(f"{KAFKA}_SSL_CERTIFICATE_LOCATION and {KAFKA}_SSL_KEY_LOCATION go together "
                              "(a client certificate needs its key); set both or neither")
        if self.sasl_mechanism == "OAUTHBEARER":
            missing = [f"{KAFKA}_OAUTH_{name.upper()}" for name, value in (
                ("token_endpoint_url", self.oauth_token_endpoint_url), ("client_id", self.oauth_client_id),
                ("client_secret", self.oauth_client_secret)) if not value]
            if missing:
                raise ConfigError(f"{', '.join(missing)} required when {KAFKA}_SASL_MECHANISM=OAUTHBEARER")
        elif self.uses_sasl and (self.stage is not None or not self.stage_credentials):
            self._require_credentials()
        return self

    def _require_credentials(self) -> None:
        if self.sasl_mechanism in (None, "OAUTHBEARER"):
            return
        missing = [f"{self.principal}_SASL_{n}" for n, v in (("USERNAME", self.sasl_username),
                                                              ("PASSWORD", self.sasl_password)) if not v]
        if missing:
            hint = f" (or {KAFKA}_SASL_*)" if self.principal != KAFKA else ""
            raise ConfigError(f"{' and '.join(missing)}{hint} required when {KAFKA}_SASL_MECHANISM="
                              f"{self.sasl_mechanism}")

    @classmethod
    def from_settings(cls, s: StackSettings, *, bootstrap_servers: str | None = None) -> KafkaConnection:
        """The connection the ``CRMFLOW_KAFKA_*`` settings describe; ``bootstrap_servers`` overrides
        ``CRMFLOW_BOOTSTRAP_SERVERS`` (a stack that knows its own brokers)."""
        servers = bootstrap_servers or s.bootstrap_servers
        if not servers:
            raise ConfigError("CRMFLOW_BOOTSTRAP_SERVERS is not set; set it to host:port[,host:port...]")
        stages: list[tuple[Stage, SaslCredentials]] = []
        for stage in STAGES:
            user = getattr(s, f"{stage}_kafka_sasl_username")
            password = getattr(s, f"{stage}_kafka_sasl_password")
            if bool(user) != bool(password):
                prefix = f"CRMFLOW_{stage.upper()}_KAFKA_SASL"
                raise ConfigError(f"{prefix}_USERNAME and {prefix}_PASSWORD go together; set both or neither")
            if user and password:
                stages.append((stage, SaslCredentials(username=user, password=password)))
        return cls(
            bootstrap_servers=servers, security_protocol=s.kafka_security_protocol,
            sasl_mechanism=s.kafka_sasl_mechanism, sasl_username=s.kafka_sasl_username,
            sasl_password=s.kafka_sasl_password, ssl_ca_location=s.kafka_ssl_ca_location,
            ssl_certificate_location=s.kafka_ssl_certificate_location, ssl_key_location=s.kafka_ssl_key_location,
            ssl_key_password=s.kafka_ssl_key_password, oauth_token_endpoint_url=s.kafka_oauth_token_endpoint_url,
            oauth_client_id=s.kafka_oauth_client_id, oauth_client_secret=s.kafka_oauth_client_secret,
            oauth_scope=s.kafka_oauth_scope, stage_credentials=tuple(stages),
        )

    @classmethod
    def from_env(cls, *, bootstrap_servers: str | None = None) -> KafkaConnection:
        """:meth:`from_settings` of the ``CRMFLOW_*`` environment variables as they are now."""
        return cls.from_settings(load_stack_settings(), bootstrap_servers=bootstrap_servers)

    def for_stage(self, stage: Stage) -> KafkaConnection:
        """This connection with ``stage``'s own principal (``CRMFLOW_<STAGE>_KAFKA_SASL_*``) when one is
        set, else with the common one; either way errors then name the stage."""
        if self.stage == stage:
            return self
        creds = dict(self.stage_credentials).get(stage)
        fields = self.model_dump()
        fields["stage"] = stage
        if creds is not None:
            fields |= {"sasl_username": creds.username, "sasl_password": creds.password,
                       "principal": f"CRMFLOW_{stage.upper()}_KAFKA"}
        return KafkaConnection.model_validate(fields)

    def stage_env(self, stage: Stage) -> dict[str, str | None]:
        """Environment changes for a child process of ``stage``: its own principal as the common one and
        every per-stage variable removed (None), so the child holds no other stage's password. Empty when
        the stage has no principal of its own."""
        creds = dict(self.stage_credentials).get(stage)
        if creds is None:
            return {}
        env: dict[str, str | None] = {f"CRMFLOW_{s.upper()}_KAFKA_SASL_{n}": None for s in STAGES
                                      for n in ("USERNAME", "PASSWORD")}
        env |= {f"{KAFKA}_SASL_USERNAME": creds.username, f"{KAFKA}_SASL_PASSWORD": creds.password.get_secret_value()}
        return env

    def client_config(self) -> dict[str, str]:
        """librdkafka's keys for this connection: the one place a Kafka secret leaves the model."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.uses_sasl:
            self._require_credentials()
            assert self.sasl_mechanism is not None  # the validator saw to it
            conf["sasl.mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                assert self.oauth_client_secret is not None
                conf |= {"sasl.oauthbearer.method": "oidc",
                         "sasl.oauthbearer.token.endpoint.url": str(self.oauth_token_endpoint_url),
                         "sasl.oauthbearer.client.id": str(self.oauth_client_id),
                         "sasl.oauthbearer.client.secret": self.oauth_client_secret.get_secret_value()}
                if self.oauth_scope:
                    conf["sasl.oauthbearer.scope"] = self.oauth_scope
            else:
                assert self.sasl_username is not None and self.sasl_password is not None
                conf |= {"sasl.username": self.sasl_username, "sasl.password": self.sasl_password.get_secret_value()}
        if self.uses_tls:
            for key, value in (("ssl.ca.location", self.ssl_ca_location),
                               ("ssl.certificate.location", self.ssl_certificate_location),
                               ("ssl.key.location", self.ssl_key_location)):
                if value:
                    conf[key] = value
            if self.ssl_key_password is not None:
                conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf

    def describe(self) -> str:
        """``SASL_SSL/SCRAM-SHA-512 user@broker:9093``: for status lines and logs, never a secret."""
        if not self.uses_sasl:
            return f"{self.security_protocol} {self.bootstrap_servers}"
        who = self.oauth_client_id if self.sasl_mechanism == "OAUTHBEARER" else self.sasl_username
        return f"{self.security_protocol}/{self.sasl_mechanism} {who}@{self.bootstrap_servers}"

    def explain(self, error: KafkaError | Exception | str) -> ConfigError | None:
        """A clear error naming the settings to fix when ``error`` is one retrying cannot fix (credentials
        refused, TLS failure, ACL denied); None for anything else (a broker down: retry)."""
        text = str(error.str() if hasattr(error, "str") else error)
        low = text.lower()
        where = f"Kafka at {self.bootstrap_servers}"
        # librdkafka's words; a broker address such as sasl_ssl://host:9096 in a "connection refused" line is no refusal
        if "authentication" in low:
            if self.sasl_mechanism == "OAUTHBEARER":
                return ConfigError(f"{where} refused the OAuth token of {KAFKA}_OAUTH_CLIENT_ID="
                                   f"{self.oauth_client_id}; check {KAFKA}_OAUTH_CLIENT_SECRET and "
                                   f"{KAFKA}_OAUTH_TOKEN_ENDPOINT_URL")
            return ConfigError(f"{where} refused the SASL credentials of {self.principal}_SASL_USERNAME="
                               f"{self.sasl_username}; check {self.principal}_SASL_PASSWORD and "
                               f"{KAFKA}_SASL_MECHANISM={self.sasl_mechanism}")
        if "ssl" in low and ("handshake" in low or "certificate" in low or "verify" in low):
            return ConfigError(f"the TLS handshake with {where} failed ({_scrub(text, self)}); check "
                               f"{KAFKA}_SSL_CA_LOCATION, {KAFKA}_SSL_CERTIFICATE_LOCATION and "
                               f"{KAFKA}_SECURITY_PROTOCOL={self.security_protocol}")
        if "authorization" in low or "not authorized" in low:
            return ConfigError(f"{where} denied principal {self.sasl_username or 'ANONYMOUS'} "
                               f"({self.principal}_SASL_USERNAME) an operation: {_scrub(text, self)}; "
                               "grant the ACLs of the README's 'Least-privilege roles'")
        return None


# ----------------------------------------------------------------------------------------------- registry


class RegistryConnection(ConnectionModel):
    """The schema registry (Confluent API): its URL, basic auth or a bearer token, and the CA to trust."""

    url: str
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    #: Confluent Cloud's logical cluster (``lsrc-...``) that a bearer token is for; any value elsewhere.
    bearer_logical_cluster: str = ""
    ca_location: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.url.strip():
            raise ConfigError("CRMFLOW_REGISTRY_URL is empty; set it to the registry's Confluent API URL")
        if bool(self.username) != bool(self.password):
            raise ConfigError("CRMFLOW_REGISTRY_USERNAME and CRMFLOW_REGISTRY_PASSWORD go together; set both or "
                              "neither")
        if self.username and self.bearer_token:
            raise ConfigError("set CRMFLOW_REGISTRY_USERNAME/PASSWORD (basic auth) or CRMFLOW_REGISTRY_BEARER_TOKEN, "
                              "not both")
        if ":" in (self.username or ""):
            raise ConfigError("CRMFLOW_REGISTRY_USERNAME must not contain ':' (basic auth user info is user:password)")
        return self

    @classmethod
    def from_settings(cls, s: StackSettings, *, url: str | None = None) -> RegistryConnection:
        registry_url = url or s.registry_url
        if not registry_url:
            raise ConfigError("CRMFLOW_REGISTRY_URL is not set; set it to the registry's Confluent API URL")
        return cls(url=registry_url.rstrip("/"), username=s.registry_username, password=s.registry_password,
                   bearer_token=s.registry_bearer_token, bearer_logical_cluster=s.registry_bearer_logical_cluster,
                   ca_location=s.registry_ca_location)

    @classmethod
    def from_env(cls, *, url: str | None = None) -> RegistryConnection:
        return cls.from_settings(load_stack_settings(), url=url)

    def client_config(self) -> dict[str, str]:
        """confluent-kafka ``SchemaRegistryClient`` config: the one place a registry secret leaves the model."""
        conf = {"url": self.url}
        if self.username and self.password is not None:
            conf["basic.auth.user.info"] = f"{self.username}:{self.password.get_secret_value()}"
        if self.bearer_token is not None:
            conf |= {"bearer.auth.credentials.source": "STATIC_TOKEN",
                     "bearer.auth.token": self.bearer_token.get_secret_value(),
                     "bearer.auth.logical.cluster": self.bearer_logical_cluster}
        if self.ca_location:
            conf["ssl.ca.location"] = self.ca_location
        return conf

    def client(self) -> SchemaRegistryClient:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        try:
            return SchemaRegistryClient(self.client_config())
        except (OSError, ValueError) as exc:  # the CA file, or a key confluent-kafka refuses
            raise ConfigError(f"cannot set up the schema registry client of CRMFLOW_REGISTRY_URL={self.url}: "
                              f"{_scrub(str(exc), self)}; check CRMFLOW_REGISTRY_CA_LOCATION and the registry "
                              "auth settings") from None

    def http_client(self, timeout_s: float = 5.0) -> httpx.Client:
        """An httpx client with this registry's auth and CA, for probes (``base_url`` is the URL)."""
        import httpx

        auth = None
        headers: dict[str, str] = {}
        if self.username and self.password is not None:
            auth = httpx.BasicAuth(self.username, self.password.get_secret_value())
        if self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token.get_secret_value()}"
        verify: ssl.SSLContext | bool = True
        if self.ca_location:
            verify = ssl.create_default_context(cafile=str(self.ca_location))
        return httpx.Client(base_url=self.url, auth=auth, headers=headers, timeout=timeout_s, verify=verify)

    def explain(self, status_code: int) -> ConfigError | None:
        """A clear error for a refused request (401/403), naming the settings; None otherwise."""
        if status_code == 401:
            if self.bearer_token is not None:
                return ConfigError(f"the schema registry at {self.url} refused CRMFLOW_REGISTRY_BEARER_TOKEN; "
                                   "check it (and CRMFLOW_REGISTRY_BEARER_LOGICAL_CLUSTER)")
            return ConfigError(f"the schema registry at {self.url} refused the credentials of CRMFLOW_REGISTRY_USERNAME"
                               f"={self.username or '(unset)'}; check CRMFLOW_REGISTRY_PASSWORD")
        if status_code == 403:
            return ConfigError(f"the schema registry at {self.url} denied user {self.username or '(token)'} "
                               "(CRMFLOW_REGISTRY_USERNAME) an operation; grant it read/write on the subjects")
        return None


# --------------------------------------------------------------------------------------------- PostgreSQL

_SSL_FILES = ("sslrootcert", "sslcert", "sslkey")


class PostgresConnection(ConnectionModel):
    """One PostgreSQL database: the DSN's parts, TLS, and the password. ``setting`` names where it came
    from (``CRMFLOW_POSTGRES_DSN``, ``CRMFLOW_TARGET_DSN``...), so errors name it."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: SecretStr | None = None
    dbname: str | None = None
    sslmode: SslMode | None = None
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    #: Any other libpq parameter of the DSN (``application_name``, ``connect_timeout``...).
    params: tuple[tuple[str, str], ...] = ()
    setting: str = "CRMFLOW_POSTGRES_DSN"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.sslmode in ("verify-ca", "verify-full") and not self.sslrootcert:
            raise ConfigError(f"{self.setting}: sslmode={self.sslmode} needs a root certificate; set "
                              "CRMFLOW_POSTGRES_SSLROOTCERT (or sslrootcert in the DSN)")
        if bool(self.sslcert) != bool(self.sslkey):
            raise ConfigError(f"{self.setting}: sslcert and sslkey go together; set both or neither")
        return self

    @classmethod
    def from_dsn(cls, dsn: str | SecretStr, *, setting: str = "CRMFLOW_POSTGRES_DSN", sslmode: str | None = None,
                 sslrootcert: str | None = None) -> PostgresConnection:
        """Parse a libpq DSN (URL or ``key=value``). ``sslmode`` and ``sslrootcert`` apply when the DSN sets
        none. A malformed DSN is a ConfigError naming ``setting`` that never echoes the DSN."""
        from psycopg.conninfo import conninfo_to_dict

        raw = dsn.get_secret_value() if isinstance(dsn, SecretStr) else dsn
        try:
            parts = {k: str(v) for k, v in conninfo_to_dict(raw).items() if v is not None}
        except Exception:  # noqa: BLE001 - psycopg's message may quote the DSN, password and all
            raise ConfigError(f"{setting} is not a valid PostgreSQL DSN (postgresql://user:password@host:port/db "
                              "or key=value pairs)") from None
        fields: dict[str, Any] = {"setting": setting}
        for key in ("host", "user", "password", "dbname", "sslmode", *_SSL_FILES):
            if key in parts:
                fields[key] = parts.pop(key)
        if "port" in parts:
            port = parts.pop("port")
            if not port.isdigit():
                raise ConfigError(f"{setting}: port must be a number")
            fields["port"] = int(port)
        fields.setdefault("sslmode", sslmode)
        fields.setdefault("sslrootcert", sslrootcert)
        fields["params"] = tuple(sorted(parts.items()))
        if fields.get("sslmode") is not None and fields["sslmode"] not in get_args(SslMode):
            raise ConfigError(f"{setting}: sslmode={fields['sslmode']} is not one of {', '.join(get_args(SslMode))}")
        return cls.model_validate(fields)

    @classmethod
    def from_env(cls, name: str, value: str | SecretStr | None = None) -> PostgresConnection:
        """The DSN in environment variable ``name`` (a config's ``dsn_env``; ``value`` when already read),
        with ``CRMFLOW_POSTGRES_SSLMODE``/``_SSLROOTCERT`` applied when the DSN sets none."""
        import os

        raw = value if value is not None else os.environ.get(name)
        if not raw:
            raise ConfigError(f"environment variable {name} is not set; export it with the DSN")
        s = load_stack_settings()
        return cls.from_dsn(raw, setting=name, sslmode=s.postgres_sslmode, sslrootcert=s.postgres_sslrootcert)

    def with_database(self, dbname: str, *, setting: str | None = None) -> PostgresConnection:
        """The same server and role, another database."""
        return self.model_copy(update={"dbname": dbname, "setting": setting or self.setting})

    def conninfo(self, dbname: str | None = None) -> str:
        """The libpq connection string: the one place a database password leaves the model. Pass it straight
        to the connect call; never keep or print it."""
        from psycopg.conninfo import make_conninfo

        kwargs: dict[str, Any] = dict(self.params)
        for key in ("host", "port", "user", "sslmode", *_SSL_FILES):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if dbname or self.dbname:
            kwargs["dbname"] = dbname or self.dbname
        return make_conninfo("", **kwargs)

    def connect(self, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """``psycopg.connect`` on this database. Refused credentials or a TLS failure are a ConfigError
        naming the setting; other ``OperationalError``\\ s (the server is down) pass through for retries."""
        import psycopg

        try:
            return psycopg.connect(self.conninfo(dbname), **kwargs)
        except psycopg.OperationalError as exc:
            refusal = self.explain(exc)
            if refusal is not None:
                raise refusal from None
            raise

    def describe(self, dbname: str | None = None) -> str:
        """``postgresql://user@host:port/db``: no password, for printing."""
        where = f"{self.host or 'localhost'}:{self.port or 5432}"
        return f"postgresql://{self.user or ''}@{where}/{dbname or self.dbname or ''}"

    def explain(self, error: Exception | str) -> ConfigError | None:
        """A clear error naming the setting when the server refused the role or TLS failed; None otherwise."""
        text = str(error)
        low = text.lower()
        where = f"PostgreSQL at {self.host or 'localhost'}:{self.port or 5432}"
        if "password authentication failed" in low or "no password supplied" in low:
            return ConfigError(f"{where} refused the password of user {self.user} ({self.setting}); check the "
                               f"password in {self.setting}")
        if "no pg_hba.conf entry" in low or ("ssl" in low and ("certificate" in low or "required" in low
                                                                or "not support" in low or "off" in low)):
            return ConfigError(f"{where} refused the TLS setup of {self.setting} ({_scrub(text, self)}); check "
                               f"CRMFLOW_POSTGRES_SSLMODE={self.sslmode or '(unset)'} and CRMFLOW_POSTGRES_SSLROOTCERT")
        if "permission denied" in low:
            return ConfigError(f"{where}: user {self.user} ({self.setting}) lacks a privilege: {_scrub(text, self)}")
        return None


def _scrub(text: str, model: BaseModel) -> str:
    """``text`` with every secret of ``model`` replaced by ``***`` (a library message might quote one)."""
    for value in _secrets(model):
        text = text.replace(value, "***")
    return re.sub(r"\s+", " ", text).strip()[:300]


def _secrets(model: BaseModel) -> list[str]:
    found: list[str] = []
    for value in dict(model).values():
        if isinstance(value, SecretStr) and value.get_secret_value():
            found.append(value.get_secret_value())
        elif isinstance(value, tuple):
            for item in value:
                creds = item[1] if isinstance(item, tuple) and len(item) == 2 else None
                if isinstance(creds, SaslCredentials):
                    found.append(creds.password.get_secret_value())
    return found


def secret_values(*models: BaseModel | None) -> list[str]:
    """Every secret the models hold, in clear: for log filters and leak tests only."""
    return [value for m in models if m is not None for value in _secrets(m)]



def as_kafka(kafka: KafkaConnection | str) -> KafkaConnection:
    """A connection as is; a bare ``host:port[,...]`` (tests, scripts) as a PLAINTEXT connection."""
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(bootstrap_servers=kafka)


def kafka_config(kafka: KafkaConnection | str, *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config of a Producer, Consumer or AdminClient: the connection's librdkafka keys (the edge
    conversion), crmflow's log routing and an ``error_cb`` that names the setting to fix when the cluster
    refuses the credentials or the TLS setup; then ``overrides`` in order (a client's own settings)."""
    conn = as_kafka(kafka)
    conf: dict[str, Any] = {**conn.client_config(), **client_logging(), "error_cb": _ErrorReporter(conn)}
    redact(*secret_values(conn))
    for extra in overrides:
        conf.update(extra or {})
    return conf


class _ErrorReporter:
    """librdkafka's ``error_cb``: a refusal retrying cannot fix is logged once as an error naming the
    setting; anything else (a broker away) at DEBUG, as librdkafka retries it itself."""

    def __init__(self, kafka: KafkaConnection) -> None:
        self.kafka = kafka
        self.reported: set[str] = set()

    def __call__(self, error: KafkaError) -> None:
        refusal = self.kafka.explain(error)
        if refusal is None:
            log.debug("kafka client: %s", _scrub(str(error.str()), self.kafka))
        elif str(refusal) not in self.reported:
            self.reported.add(str(refusal))
            log.error("%s", refusal)


def as_registry(registry: RegistryConnection | str) -> RegistryConnection:
    """A connection as is; a bare URL (tests, scripts) as one without auth."""
    return registry if isinstance(registry, RegistryConnection) else RegistryConnection(url=registry.rstrip("/"))


def as_postgres(db: PostgresConnection | str | SecretStr, *, setting: str = "the DSN") -> PostgresConnection:
    """A connection as is; a DSN (a config's ``dsn_env``, a test's) parsed, ``setting`` naming its origin."""
    return db if isinstance(db, PostgresConnection) else PostgresConnection.from_dsn(db, setting=setting)
