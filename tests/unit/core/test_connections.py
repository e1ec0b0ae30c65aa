"""The connection models: one edge conversion per client, validation messages naming the setting, and
secrets that never show in repr, str or model_dump."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from crmflow.connections import KafkaConnection, PostgresConnection, RegistryConnection, secret_values
from crmflow.exceptions import ConfigError
from crmflow.settings import StackSettings
from crmflow.stack import Endpoints

pytestmark = pytest.mark.unit

PW, STAGE_PW, KEY_PW, OAUTH, REG_PW, TOKEN, DB_PW = (
    "kafka-pw-91", "sink-pw-17", "key-pw-33", "oauth-secret-55", "reg-pw-73", "bearer-tok-29", "db-pw-41")
SECRETS = (PW, STAGE_PW, KEY_PW, OAUTH, REG_PW, TOKEN, DB_PW)


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> StackSettings:
    for key in list(__import__("os").environ):
        if key.startswith("CRMFLOW_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(f"CRMFLOW_{key}", value)
    return StackSettings()


SCRAM = {"BOOTSTRAP_SERVERS": "b1:9093,b2:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
         "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "crmflow", "KAFKA_SASL_PASSWORD": PW,
         "KAFKA_SSL_CA_LOCATION": "/certs/ca.pem"}


def test_plaintext_is_bootstrap_only_and_ignores_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(monkeypatch, BOOTSTRAP_SERVERS="k:9092", KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD=PW,
                  KAFKA_SSL_CA_LOCATION="/ca.pem")
    assert KafkaConnection.from_settings(s).client_config() == {"bootstrap.servers": "k:9092",
                                                               "security.protocol": "PLAINTEXT"}


def test_sasl_ssl_scram(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = KafkaConnection.from_settings(_settings(monkeypatch, **SCRAM)).client_config()
    assert conf == {"bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SASL_SSL",
                    "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "crmflow", "sasl.password": PW,
                    "ssl.ca.location": "/certs/ca.pem"}


def test_mtls_with_key_password(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(monkeypatch, BOOTSTRAP_SERVERS="b:9093", KAFKA_SECURITY_PROTOCOL="SSL",
                  KAFKA_SSL_CA_LOCATION="/ca.pem", KAFKA_SSL_CERTIFICATE_LOCATION="/c.pem",
                  KAFKA_SSL_KEY_LOCATION="/k.pem", KAFKA_SSL_KEY_PASSWORD=KEY_PW)
    conf = KafkaConnection.from_settings(s).client_config()
    assert conf == {"bootstrap.servers": "b:9093", "security.protocol": "SSL", "ssl.ca.location": "/ca.pem",
                    "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem", "ssl.key.password": KEY_PW}


def test_oauthbearer_oidc(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(monkeypatch, BOOTSTRAP_SERVERS="b:9093", KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                  KAFKA_SASL_MECHANISM="OAUTHBEARER", KAFKA_OAUTH_TOKEN_ENDPOINT_URL="https://idp/token",
                  KAFKA_OAUTH_CLIENT_ID="crmflow", KAFKA_OAUTH_CLIENT_SECRET=OAUTH, KAFKA_OAUTH_SCOPE="kafka")
    conf = KafkaConnection.from_settings(s).client_config()
    assert conf["sasl.oauthbearer.method"] == "oidc"
    assert conf["sasl.oauthbearer.client.secret"] == OAUTH
    assert (conf["sasl.mechanism"], conf["sasl.oauthbearer.scope"]) == ("OAUTHBEARER", "kafka")
    assert "sasl.password" not in conf


@pytest.mark.parametrize(("env", "message"), [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
     "CRMFLOW_KAFKA_SASL_MECHANISM is required when CRMFLOW_KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
     "CRMFLOW_KAFKA_SASL_USERNAME and CRMFLOW_KAFKA_SASL_PASSWORD required when CRMFLOW_KAFKA_SASL_MECHANISM=PLAIN"),
    ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "needs CRMFLOW_KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
     "CRMFLOW_KAFKA_OAUTH_TOKEN_ENDPOINT_URL, CRMFLOW_KAFKA_OAUTH_CLIENT_ID, CRMFLOW_KAFKA_OAUTH_CLIENT_SECRET"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTIFICATE_LOCATION": "/c.pem"},
     "CRMFLOW_KAFKA_SSL_CERTIFICATE_LOCATION and CRMFLOW_KAFKA_SSL_KEY_LOCATION go together"),
    ({"SINK_KAFKA_SASL_USERNAME": "sink"}, "CRMFLOW_SINK_KAFKA_SASL_USERNAME and CRMFLOW_SINK_KAFKA_SASL_PASSWORD"),
])
def test_kafka_validation_names_the_setting(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                            message: str) -> None:
    s = _settings(monkeypatch, BOOTSTRAP_SERVERS="b:9093", **env)
    with pytest.raises(ConfigError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")):
        KafkaConnection.from_settings(s)


def test_bad_protocol_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_TLS")
    with pytest.raises(ValueError, match="kafka_security_protocol"):
        StackSettings()


def test_for_stage_picks_the_stage_principal(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(monkeypatch, **SCRAM, SINK_KAFKA_SASL_USERNAME="crmflow-sink", SINK_KAFKA_SASL_PASSWORD=STAGE_PW)
    kafka = KafkaConnection.from_settings(s)
    sink = kafka.for_stage("sink")
    assert (sink.client_config()["sasl.username"], sink.client_config()["sasl.password"]) == ("crmflow-sink", STAGE_PW)
    assert kafka.for_stage("process").client_config()["sasl.username"] == "crmflow"  # falls back to the common one
    assert kafka.stage_env("sink") == {"CRMFLOW_KAFKA_SASL_USERNAME": "crmflow-sink",
                                       "CRMFLOW_KAFKA_SASL_PASSWORD": STAGE_PW}
    assert kafka.stage_env("cdc") == {}
    refused = sink.explain(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed"))
    assert refused is not None
    assert str(refused) == ("Kafka at b1:9093,b2:9093 refused the SASL credentials of "
                            "CRMFLOW_SINK_KAFKA_SASL_USERNAME=crmflow-sink; check CRMFLOW_SINK_KAFKA_SASL_PASSWORD "
                            "and CRMFLOW_KAFKA_SASL_MECHANISM=SCRAM-SHA-512")
    assert kafka.explain("Connect to ipv4#127.0.0.1:9093 failed: Connection refused") is None


def test_only_stage_principals_need_no_common_one(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in SCRAM.items() if "USERNAME" not in k and "PASSWORD" not in k}
    kafka = KafkaConnection.from_settings(_settings(monkeypatch, **env, SINK_KAFKA_SASL_USERNAME="s",
                                                    SINK_KAFKA_SASL_PASSWORD=STAGE_PW))
    assert kafka.for_stage("sink").client_config()["sasl.username"] == "s"
    with pytest.raises(ConfigError, match="CRMFLOW_KAFKA_SASL_USERNAME and CRMFLOW_KAFKA_SASL_PASSWORD"):
        kafka.for_stage("cdc")


def test_registry_basic_bearer_and_ca() -> None:
    basic = RegistryConnection(url="https://sr", username="key", password=REG_PW, ca_location="/ca.pem")
    assert basic.client_config() == {"url": "https://sr", "basic.auth.user.info": f"key:{REG_PW}",
                                     "ssl.ca.location": "/ca.pem"}
    bearer = RegistryConnection(url="https://sr", bearer_token=TOKEN, bearer_logical_cluster="lsrc-1")
    assert bearer.client_config() == {"url": "https://sr", "bearer.auth.credentials.source": "STATIC_TOKEN",
                                      "bearer.auth.token": TOKEN, "bearer.auth.logical.cluster": "lsrc-1"}
    basic.model_copy(update={"ca_location": None}).client()  # confluent-kafka accepts the keys
    bearer.client()
    with pytest.raises(ConfigError, match="check CRMFLOW_REGISTRY_CA_LOCATION"):
        basic.client()  # /ca.pem does not exist
    with pytest.raises(ConfigError, match="CRMFLOW_REGISTRY_USERNAME and CRMFLOW_REGISTRY_PASSWORD go together"):
        RegistryConnection(url="https://sr", username="key")
    with pytest.raises(ConfigError, match="not both"):
        RegistryConnection(url="https://sr", username="key", password=REG_PW, bearer_token=TOKEN)
    assert "CRMFLOW_REGISTRY_PASSWORD" in str(basic.explain(401))


def test_postgres_from_dsn_and_conninfo() -> None:
    pg = PostgresConnection.from_dsn(f"postgresql://crm:{DB_PW}@db.example:6432/postgres?application_name=x",
                                     setting="CRMFLOW_TARGET_DSN", sslmode="verify-full", sslrootcert="/root.crt")
    assert (pg.host, pg.port, pg.user, pg.dbname, pg.sslmode) == ("db.example", 6432, "crm", "postgres", "verify-full")
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(pg.conninfo("crm_target")) == {
        "host": "db.example", "port": "6432", "user": "crm", "password": DB_PW, "dbname": "crm_target",
        "sslmode": "verify-full", "sslrootcert": "/root.crt", "application_name": "x"}
    assert pg.describe() == "postgresql://crm@db.example:6432/postgres"
    # the DSN's own sslmode wins over CRMFLOW_POSTGRES_SSLMODE
    assert PostgresConnection.from_dsn("host=h sslmode=require", sslmode="disable").sslmode == "require"


@pytest.mark.parametrize(("dsn", "kwargs", "message"), [
    (f"postgresql://u:{DB_PW}@h:5432/db x", {}, "CRMFLOW_LEGACY_DSN is not a valid PostgreSQL DSN"),
    ("host=h", {"sslmode": "verify-full"}, "sslmode=verify-full needs a root certificate; set "
                                            "CRMFLOW_POSTGRES_SSLROOTCERT"),
    ("host=h sslmode=sometimes", {}, "CRMFLOW_LEGACY_DSN: sslmode=sometimes is not one of"),
])
def test_postgres_validation(dsn: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        PostgresConnection.from_dsn(dsn, setting="CRMFLOW_LEGACY_DSN", **kwargs)
    assert DB_PW not in str(err.value)


def test_postgres_refusal_names_the_setting() -> None:
    pg = PostgresConnection.from_dsn(f"postgresql://sink:{DB_PW}@db:5432/t", setting="CRMFLOW_TARGET_DSN")
    err = pg.explain('connection to server at "db", port 5432 failed: FATAL:  password authentication failed '
                     'for user "sink"')
    assert str(err) == ("PostgreSQL at db:5432 refused the password of user sink (CRMFLOW_TARGET_DSN); check the "
                        "password in CRMFLOW_TARGET_DSN")
    assert pg.explain("connection refused") is None


def test_endpoints_roles_and_nothing_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(monkeypatch, **SCRAM, SINK_KAFKA_SASL_USERNAME="crmflow-sink", SINK_KAFKA_SASL_PASSWORD=STAGE_PW,
                  KAFKA_SSL_KEY_PASSWORD=KEY_PW, REGISTRY_URL="https://sr/", REGISTRY_USERNAME="sr",
                  REGISTRY_PASSWORD=REG_PW, POSTGRES_DSN=f"postgresql://admin:{DB_PW}@db:5432/postgres",
                  TARGET_DSN=f"postgresql://sink:{DB_PW}@db:5432/crm_target", POSTGRES_SSLMODE="require")
    ep = Endpoints.from_settings(s)
    assert ep.registry_url == "https://sr"
    assert (ep.target.user, ep.target.setting, ep.target.sslmode) == ("sink", "CRMFLOW_TARGET_DSN", "require")
    assert (ep.legacy.user, ep.legacy.dbname) == ("admin", "crm_legacy")  # derived when CRMFLOW_LEGACY_DSN is unset
    models = (ep.kafka, ep.kafka.for_stage("sink"), ep.registry, ep.postgres, ep.target, ep.legacy)
    printed = [repr(ep), str(ep), ep.redacted_postgres(), ep.kafka.describe(), ep.target.describe()]
    printed += [f"{m!r} {m} {m.model_dump()} {m.model_dump_json()}" for m in models]
    assert set(secret_values(*models)) == {PW, STAGE_PW, KEY_PW, REG_PW, DB_PW}
    for text in printed:
        for secret in SECRETS:
            assert secret not in text
