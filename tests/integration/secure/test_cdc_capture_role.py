"""`crmflow cdc` as the least-privileged capture role on the secure stack, with nothing of the admin's.

The child process gets only what a capture host would hold (from the stack's ``crmflow.env``): the capture role's
DSN (``CRMFLOW_LEGACY_DSN``: ``crmflow_capture``, LOGIN REPLICATION, no superuser), the cdc stage's own Kafka
principal (``CRMFLOW_CDC_KAFKA_SASL_*``), the registry's credentials and the CA; no admin DSN, no admin Kafka
principal, no stack home. On a publication the tables' owner made with ``roles.publication_sql`` it loads the table,
streams an insert, an update and a delete, and re-snapshots the table on a signal (watermark messages, chunk
reads, checkpoints in the publication's comment): every privilege ``crmflow cdc`` uses, exercised.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from crmflow.exitcodes import ExitCode
from crmflow.pipeline.services import Service
from crmflow.serialization import AvroDecoder
from crmflow.stack import roles
from crmflow.stack.secure import SecureStack
from crmflow.topics import cdc_topic
from producers.cdc.snapshot import read_comment
from tests.helpers import wait_until

pytestmark = pytest.mark.secure  # not `integration`: it needs the secure stack, `make test-secure`

#: What the capture host is given of ``crmflow.env``: the cdc stage's principal, not the admin's or another stage's.
KEPT = ("CRMFLOW_KAFKA_SECURITY_PROTOCOL", "CRMFLOW_KAFKA_SASL_MECHANISM", "CRMFLOW_KAFKA_SSL_CA_LOCATION",
        "CRMFLOW_KAFKA_SSL_CERTIFICATE_LOCATION", "CRMFLOW_KAFKA_SSL_KEY_LOCATION", "CRMFLOW_CDC_KAFKA_SASL_USERNAME",
        "CRMFLOW_CDC_KAFKA_SASL_PASSWORD", "CRMFLOW_REGISTRY_USERNAME", "CRMFLOW_REGISTRY_PASSWORD",
        "CRMFLOW_REGISTRY_CA_LOCATION", "CRMFLOW_POSTGRES_SSLMODE", "CRMFLOW_POSTGRES_SSLROOTCERT",
        "CRMFLOW_LEGACY_DSN")  # fmt: skip


def capture_env(stack: SecureStack, home: Path) -> dict[str, str | None]:
    """Environment changes for the child: every CRMFLOW_* of this process removed, then only :data:`KEPT`."""
    import os

    env_file = dict(line.split("=", 1) for line in stack.env_file.read_text().splitlines() if "=" in line)
    out: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CRMFLOW_")}
    out |= {k: shlex.split(env_file[k])[0] for k in KEPT}
    out |= {"CRMFLOW_STACK": "external", "CRMFLOW_HOME": str(home)}  # no stack, no secrets.json to read
    return out


@pytest.fixture
def legacy(secure_stack: SecureStack) -> Iterator[tuple[str, str, str]]:
    """A table in ``crm_legacy`` made by the admin (its owner), its publication handed to the capture role;
    yields (table, publication, slot)."""
    tag = uuid.uuid4().hex[:8]
    table, pub, slot = f"legacy.cap_{tag}", f"pub_cap_{tag}", f"slot_cap_{tag}"
    admin_dsn = secure_stack.endpoints().dsn("crm_legacy")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"create table {table} (id int primary key, name text)")
        conn.execute(f"insert into {table} values (1, 'a'), (2, 'b'), (3, 'c')")
        secure_stack.create_publication(pub, [table])  # roles.publication_sql, as the tables' owner
        try:
            yield table, pub, slot
        finally:
            wait_until(lambda: conn.execute("select active_pid is null from pg_replication_slots where slot_name = %s",
                                            (slot,)).fetchone() in (None, (True,)), 15, what="the slot released")
            conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
                         (slot,))  # fmt: skip
            conn.execute(f"drop publication if exists {pub}")
            conn.execute(f"drop table {table}")


def write_config(path: Path, prefix: str, table: str, pub: str, slot: str) -> Path:
    path.write_text(
        "run: {name: itcap}\n"
        f"kafka: {{topic_prefix: {prefix}, partitions: 1}}\n"
        f"sources:\n  t: {{kind: table, dsn_env: CRMFLOW_LEGACY_DSN, table: {table}, entity: account, key: id}}\n"
        "entities:\n  account:\n    fields:\n      - {source: id, target: customer_id}\n"
        f"cdc: {{dsn_env: CRMFLOW_LEGACY_DSN, tables: [{table}], slot: {slot}, publication: {pub}, "
        "feedback_interval_s: 0.2, snapshot_chunk_size: 2}\n"
    )
    return path


class Reader:
    """The events of ``topic`` as the admin reads them, one consumer for the test: each call returns every event
    so far as (key id, op or None for a tombstone, name)."""

    def __init__(self, stack: SecureStack, topic: str) -> None:
        self.topic = topic
        self.events: list[tuple[int, str | None, str | None]] = []
        self.decoder = AvroDecoder(stack.endpoints().registry.client())
        self.consumer = Consumer(stack.kafka_config(**{"group.id": f"g-{uuid.uuid4().hex[:8]}",
                                                       "enable.auto.commit": False}))  # fmt: skip
        self.assigned = False

    def __call__(self) -> list[tuple[int, str | None, str | None]]:
        if not self.assigned:
            topics = self.consumer.list_topics(self.topic, timeout=30).topics
            if self.topic not in topics or topics[self.topic].error is not None:
                return self.events  # not created yet
            self.consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            self.assigned = True
        for m in self.consumer.consume(1000, timeout=0.5):
            assert m.error() is None, m.error()
            key = self.decoder.decode(m.key() or b"")["id"]
            raw = m.value()
            if raw is None:
                self.events.append((key, None, None))
            else:
                v = self.decoder.decode(raw)
                self.events.append((key, v["op"], (v["after"] or v["before"] or {}).get("name")))
        return self.events

    def close(self) -> None:
        self.consumer.close()


def test_cdc_runs_as_the_capture_role_with_its_own_principal_and_no_superuser(
    secure_stack: SecureStack, topic_prefix: str, legacy: tuple[str, str, str], tmp_path: Path,
) -> None:  # fmt: skip
    table, pub, slot = legacy
    admin_dsn = secure_stack.endpoints().dsn("crm_legacy")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        attrs = admin.execute("select rolsuper, rolreplication, rolcreatedb, rolcreaterole, rolbypassrls, "
                              "(select count(*) from pg_auth_members m where m.member = r.oid) from pg_roles r "
                              "where rolname = %s", (roles.CAPTURE_ROLE,)).fetchone()  # fmt: skip
        assert attrs == (False, True, False, False, False, 0)  # LOGIN REPLICATION, a member of nothing
    config = write_config(tmp_path / "crmflow.yaml", topic_prefix, table, pub, slot)
    urls = ["--bootstrap-servers", secure_stack.env()["CRMFLOW_BOOTSTRAP_SERVERS"],
            "--registry-url", secure_stack.env()["CRMFLOW_REGISTRY_URL"]]  # fmt: skip
    env = capture_env(secure_stack, tmp_path / "home")
    topic = cdc_topic(topic_prefix, table)
    read = Reader(secure_stack, topic)

    cdc = Service("cdc", ["cdc", "-c", str(config), "--init", *urls], tmp_path / "cdc.log", env)
    try:
        wait_until(lambda: cdc.proc.poll() is not None or len(read()) >= 3, 90, what="the initial load in Kafka")
        assert cdc.proc.poll() is None, cdc.log_file.read_text()
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            # The slot's walsender is the capture role's: --init created the slot on that same replication
            # connection (CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT, then START_REPLICATION), and never reconnected.
            streaming_as = admin.execute(
                "select r.usename from pg_replication_slots s join pg_stat_replication r on r.pid = s.active_pid "
                "where s.slot_name = %s", (slot,)).fetchone()  # fmt: skip
            assert streaming_as == (roles.CAPTURE_ROLE,)
            admin.execute(f"insert into {table} values (4, 'd')")
            with admin.transaction():
                admin.execute(f"update {table} set name = 'B' where id = 2")
                admin.execute(f"delete from {table} where id = 3")
            wait_until(lambda: len(read()) >= 7, 60, what="the streamed changes in Kafka")
            # A re-snapshot on a signal: watermark messages and chunk checkpoints, written by the capture role
            admin.execute(f"select pg_logical_emit_message(true, 'crmflow.cdc.signal', "
                          f"'{{\"snapshot\": \"{table}\"}}')")  # fmt: skip
            wait_until(lambda: len(read()) >= 10, 60, what="the re-snapshot in Kafka")
            wait_until(lambda: read_comment(admin, pub)[1] == {}, 30, what="the re-snapshot checkpointed as done")
            comment = read_comment(admin, pub)
        code = cdc.stop(20)
    finally:
        cdc.stop(5)
        events = read()
        read.close()
    log = cdc.log_file.read_text()
    assert code == ExitCode.INTERRUPTED, log
    assert "lost the legacy database" not in log and "Traceback" not in log, log
    assert events[:3] == [(1, "r", "a"), (2, "r", "b"), (3, "r", "c")]
    # a delete's before is the key only (replica identity default), then its tombstone
    assert events[3:7] == [(4, "c", "d"), (2, "u", "B"), (3, "d", None), (3, None, None)]
    assert sorted(events[7:]) == [(1, "r", "a"), (2, "r", "B"), (4, "r", "d")]
    assert (comment[0] or "").startswith("crmflow cdc: initial load complete"), comment

    # A missing slot, as the capture role: the clear error (its checks need no superuser either).
    other = write_config(tmp_path / "missing.yaml", topic_prefix, table, pub, slot + "_none")
    missing = Service("cdc", ["cdc", "-c", str(other), *urls], tmp_path / "missing.log", env)
    assert missing.proc.wait(60) == ExitCode.CONFIG
    text = " ".join(missing.log_file.read_text().split())
    assert f"replication slot {slot}_none does not exist in database crm_legacy" in text and "Traceback" not in text
    print(f"capture role: {len(events)} events ({events.count((3, None, None))} tombstone); comment {comment[0]!r}")
