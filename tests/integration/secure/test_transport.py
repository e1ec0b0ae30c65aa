"""The secure stack's registry (TLS + basic auth through nginx), its env file and its CLI output."""

from __future__ import annotations

import os
import shlex
import ssl
import stat
import subprocess
import sys
import uuid

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from crmflow.stack.secure import SecureStack

pytestmark = pytest.mark.secure  # not `integration`: it needs the secure stack, `make test-secure`

CONTRACT_KEYS = {
    "CRMFLOW_BOOTSTRAP_SERVERS", "CRMFLOW_KAFKA_SECURITY_PROTOCOL", "CRMFLOW_KAFKA_SASL_MECHANISM",
    "CRMFLOW_KAFKA_SASL_USERNAME", "CRMFLOW_KAFKA_SASL_PASSWORD", "CRMFLOW_KAFKA_SSL_CA_LOCATION",
    "CRMFLOW_KAFKA_SSL_CERTIFICATE_LOCATION", "CRMFLOW_KAFKA_SSL_KEY_LOCATION",
    *(f"CRMFLOW_{s}_KAFKA_SASL_{k}" for s in ("SNAPSHOT", "CDC", "PROCESS", "SINK", "OPS")
      for k in ("USERNAME", "PASSWORD")),
    "CRMFLOW_REGISTRY_URL", "CRMFLOW_REGISTRY_USERNAME", "CRMFLOW_REGISTRY_PASSWORD", "CRMFLOW_REGISTRY_CA_LOCATION",
    "CRMFLOW_POSTGRES_DSN", "CRMFLOW_POSTGRES_SSLMODE", "CRMFLOW_POSTGRES_SSLROOTCERT", "CRMFLOW_TARGET_DSN",
    "CRMFLOW_LEGACY_DSN",
}


def _verify(stack: SecureStack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.certs.ca))


def test_registry_needs_tls_and_the_password(secure_stack: SecureStack) -> None:
    url = f"{secure_stack.endpoints().registry_url}/subjects"
    user, password = secure_stack.registry_auth()
    assert httpx.get(url, auth=(user, password), verify=_verify(secure_stack), timeout=10).status_code == 200
    assert httpx.get(url, verify=_verify(secure_stack), timeout=10).status_code == 401
    assert httpx.get(url, auth=(user, "not-the-password"), verify=_verify(secure_stack), timeout=10).status_code == 401
    plain = httpx.get(url.replace("https://", "http://"), auth=(user, password), timeout=10)
    assert plain.status_code == 400  # nginx: "The plain HTTP request was sent to HTTPS port"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, auth=(user, password), timeout=10)  # the system CAs do not know the stack's CA


def test_schema_registry_client_registers_through_the_proxy(secure_stack: SecureStack) -> None:
    user, password = secure_stack.registry_auth()
    client = SchemaRegistryClient({"url": secure_stack.endpoints().registry_url,
                                   "basic.auth.user.info": f"{user}:{password}",
                                   "ssl.ca.location": str(secure_stack.certs.ca)})
    subject = f"secure-{uuid.uuid4().hex[:8]}-value"
    schema = Schema('{"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}', "AVRO")
    schema_id = client.register_schema(subject, schema)
    assert client.get_latest_version(subject).schema_id == schema_id


def test_env_file_is_private_and_complete(secure_stack: SecureStack) -> None:
    env = secure_stack.env_file
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stat.S_IMODE(secure_stack.secure_dir.stat().st_mode) == 0o700
    for key in (secure_stack.certs.ca_key, secure_stack.certs.server_key, secure_stack.certs.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # Sourced as the README says (`set -a; . crmflow.env; set +a`), every value arrives whole (DSNs hold spaces)
    shown = subprocess.run(["bash", "-c", f"set -a; . {shlex.quote(str(env))}; set +a; env -0"], env={},
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    values = dict(item.split("=", 1) for item in shown.split("\0") if item.startswith("CRMFLOW_"))
    assert values == secure_stack.env()
    assert set(values) >= CONTRACT_KEYS
    assert values["CRMFLOW_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert values["CRMFLOW_POSTGRES_SSLMODE"] == "verify-full"
    # one principal per stage, none of them the admin
    stage_users = {values[f"CRMFLOW_{s}_KAFKA_SASL_USERNAME"] for s in ("SNAPSHOT", "CDC", "PROCESS", "SINK", "OPS")}
    assert len(stage_users) == 5 and values["CRMFLOW_KAFKA_SASL_USERNAME"] not in stage_users


def test_stack_up_again_prints_how_to_use_the_env_file_but_no_secret(secure_stack: SecureStack) -> None:
    s = secure_stack.s
    env = {**os.environ, "CRMFLOW_HOME": str(s.home), "CRMFLOW_KAFKA_PORT": str(s.kafka_port),
           "CRMFLOW_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port),
           "CRMFLOW_REGISTRY_PORT": str(s.registry_port), "CRMFLOW_POSTGRES_PORT": str(s.postgres_port)}
    env.pop("CRMFLOW_STACK", None)
    res = subprocess.run([sys.executable, "-m", "crmflow", "stack", "up", "--secure"], env=env, capture_output=True,
                         text=True, timeout=180, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert f". {secure_stack.env_file}" in out
    secrets = [*secure_stack.secrets.kafka.values(), secure_stack.secrets.registry,
               *secure_stack.secrets.postgres.values()]
    leaked = [i for i, secret in enumerate(secrets) if secret in out]
    assert leaked == [], "a password was printed"
    status = subprocess.run([sys.executable, "-m", "crmflow", "stack", "status", "--secure", "--json"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert '"registry-proxy"' in status.stdout
    assert not [s for s in secrets if s in status.stdout]


def test_no_service_log_holds_a_password(secure_stack: SecureStack) -> None:
    """Kafka, nginx, Apicurio and PostgreSQL log start-up, connections and the refusals the other tests
    provoke. None of them may carry a password."""
    secrets = [*secure_stack.secrets.kafka.values(), secure_stack.secrets.registry,
               *secure_stack.secrets.postgres.values()]
    logs = [secure_stack.kafka.log_file, secure_stack.registry.log_file, secure_stack.nginx.log_file,
            secure_stack.pg.log_file]
    assert all(f.exists() for f in logs)
    assert "Kafka Server started" in secure_stack.kafka.log_file.read_text(errors="replace")
    leaked = [(f.name, i) for f in logs for i, s in enumerate(secrets) if s in f.read_text(errors="replace")]
    assert leaked == []
