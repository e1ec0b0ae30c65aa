"""The parallel run on the real stack: ``crmflow cdc`` + ``crmflow process`` + ``crmflow sink`` as services apply
the legacy database's changes to the target (issue 10, item 5).

A small legacy database with typed columns (a TOASTed text column feeding a target field, a date, an integer),
customers and their contacts (``on delete cascade``). After the initial load: inserts, updates (one leaving the
TOASTed column unchanged), deletes of customers with contacts, the processor SIGKILLed mid-run and restarted,
and an old envelope produced again (a replayed, stale event). At the end the target equals the source after
mapping, row by row and field by field, with no placeholder anywhere.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import load_config
from crmflow.pipeline.migrate import prepare
from crmflow.pipeline.services import Service
from crmflow.serialization import AvroDecoder
from crmflow.stack import Endpoints
from crmflow.topics import cdc_topic
from tests.e2e.cdc_support import Entity, expected_target, legacy_database, target_now
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SCHEMA = [
    "create schema legacy",
    "create table legacy.customers (customer_id text primary key, first_name text, last_name text, email text, "
    "city text, born date, score integer, notes text)",
    "alter table legacy.customers alter column notes set storage external",  # out of line: TOASTed
    "create table legacy.contacts (contact_id text primary key, "
    "customer_id text not null references legacy.customers on delete cascade, first_name text, last_name text, "
    "job_title text)",
]
# entity -> (legacy table, key column, columns read as text for the expected target, target fields compared)
ENTITIES: dict[str, Entity] = {
    "account": ("customers", "customer_id", ["customer_id", "first_name", "last_name", "email", "city", "born",
                                             "score", "notes"],
                ["full_name", "first_name", "last_name", "email", "city", "birth_date", "region"]),
    "contact": ("contacts", "contact_id", ["contact_id", "customer_id", "first_name", "last_name", "job_title"],
                ["customer_id", "full_name", "first_name", "last_name", "job_title"]),
}  # fmt: skip
NAMES = ["anne", "bob", "carla", "dev", "eve", "femi", "gus", "hana"]


def _notes(region: str) -> str:
    return f"{region} " + os.urandom(6000).hex()  # ~12 kB of incompressible text: stored out of line


def _customer(i: int, rng: random.Random) -> str:
    first, last = rng.choice(NAMES), rng.choice(NAMES)
    return (f"insert into legacy.customers values ('C{i:05d}', '{first}', '{last}', '{first}.{last}{i}@example.com', "
            f"'springfield', date '1980-01-01' + {i}, {i}, '{_notes(f'R{i % 7}')}')")  # fmt: skip


def _contact(i: int, parent: int, rng: random.Random) -> str:
    return (f"insert into legacy.contacts values ('K{i:05d}', 'C{parent:05d}', '{rng.choice(NAMES)}', "
            f"'{rng.choice(NAMES)}', ' buyer  {i} ')")  # fmt: skip


def _config(tmp_path: Path, legacy_env: str, target_env: str, prefix: str, name: str, slot: str) -> Path:
    raw: dict[str, Any] = {
        "run": {"name": name},
        "kafka": {"topic_prefix": prefix, "partitions": 2},
        "sources": {
            "customers": {"kind": "table", "dsn_env": legacy_env, "table": "legacy.customers", "entity": "account",
                          "key": "customer_id"},
            "contacts": {"kind": "table", "dsn_env": legacy_env, "table": "legacy.contacts", "entity": "contact",
                         "key": "contact_id"},
        },
        "entities": {
            "account": {"fields": [
                {"source": "customer_id", "target": "customer_id"},
                {"target": "full_name", "transform": {"join": ["first_name", "last_name"]}},
                {"source": "first_name", "target": "first_name", "transform": "name_case"},
                {"source": "last_name", "target": "last_name", "transform": "name_case"},
                {"source": "email", "target": "email", "transform": "email", "missing": "flag"},
                {"source": "city", "target": "city", "transform": "name_case"},
                {"source": "born", "target": "birth_date", "transform": "parse_date"},
                # The TOASTed column feeds a target field: its first word.
                {"source": "notes", "target": "region", "transform": {"split": {"index": 0}}},
            ]},
            "contact": {"fields": [
                {"source": "contact_id", "target": "contact_id"},
                {"source": "customer_id", "target": "customer_id"},
                {"target": "full_name", "transform": {"join": ["first_name", "last_name"]}},
                {"source": "first_name", "target": "first_name", "transform": "name_case"},
                {"source": "last_name", "target": "last_name", "transform": "name_case"},
                {"source": "job_title", "target": "job_title", "transform": "trim"},
            ]},
        },
        "cdc": {"dsn_env": legacy_env, "tables": ["legacy.customers", "legacy.contacts"], "slot": slot,
                "publication": slot, "feedback_interval_s": 0.2},
        "target": {"dsn_env": target_env, "deletes": "hard", "batch_size": 200, "flush_interval_s": 0.2},
    }  # fmt: skip
    path = tmp_path / "crmflow.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def legacy(pg_dsn_factory: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, str]]:
    """(DSN, env var holding it, slot/publication name) of a fresh legacy database; the slot dropped after."""
    yield from legacy_database(pg_dsn_factory, monkeypatch.setenv, SCHEMA, "e2e_cdc")


def _first_envelope(bootstrap: str, topic: str, key_part: bytes) -> tuple[bytes, bytes]:
    """(key, value) bytes of the first event of ``topic`` whose key bytes contain ``key_part``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        found: tuple[bytes, bytes] | None = None

        def scan() -> bool:
            nonlocal found
            for msg in consumer.consume(500, 1.0):
                if msg.error() is None and msg.value() and key_part in (msg.key() or b""):
                    found = (msg.key() or b"", msg.value() or b"")
                    return True
            return False

        wait_until(scan, 30, what=f"an event of {key_part!r} in {topic}")
        assert found is not None
        return found
    finally:
        consumer.close()


def _values(bootstrap: str, topic: str) -> list[bytes]:
    """Every value of ``topic``, from the beginning to its end (committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})  # fmt: skip
    out: list[bytes] = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        pending = set(parts)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])

        def read() -> bool:
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is None:
                    out.append(msg.value() or b"")
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
            return not pending

        wait_until(read, 30, interval_s=0, what=f"reading {topic} to its end")
    finally:
        consumer.close()
    return out


def test_changes_reach_the_target_in_order_with_deletes_toast_a_processor_kill_and_a_stale_replay(
    legacy: tuple[str, str, str], pg_dsn_factory: Callable[[], str], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    legacy_dsn, legacy_env, slot = legacy
    tag = uuid.uuid4().hex[:8]
    target_dsn, target_env = pg_dsn_factory(), f"CRMFLOW_E2E_TARGET_{tag.upper()}"
    monkeypatch.setenv(target_env, target_dsn)
    config = _config(tmp_path, legacy_env, target_env, f"e2e-cdc-{tag}", f"e2ecdc{tag}", slot)
    cfg = load_config(config)
    prepare(cfg, endpoints, registry_client, target_dsn)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(10)

    def sql(*statements: str) -> None:
        with psycopg.connect(legacy_dsn) as conn, conn.transaction():
            for s in statements:
                conn.execute(s)

    # Before capture starts: the initial load hands these over.
    sql(*(_customer(i, rng) for i in range(1, 21)), *(_contact(i, 1 + i % 20, rng) for i in range(1, 41)))

    def service(name: str, *args: str) -> Service:
        # no metrics port: another test's stage may hold the default one
        return Service(name, [*args, "-c", str(config), "--metrics-port", "0"], tmp_path / f"{name}.log", env)

    cdc = service("cdc", "cdc", "--init")
    services = [cdc]
    try:
        # The processor subscribes to the change topics, which `crmflow cdc --init` creates: start it after.
        admin = AdminClient(endpoints.kafka.client_config())
        topics = [cdc_topic(cfg.kafka.topic_prefix, t) for t in ("legacy.customers", "legacy.contacts")]
        wait_until(lambda: set(topics) <= set(admin.list_topics(timeout=5).topics), 60, what="the change topics")
        processor = service("process-1", "process")
        services += [processor, service("sink", "sink")]
        wait_until(lambda: len(target_now(target_dsn, ENTITIES)["contact"]) == 40, 120,
                   what="the initial load in the target")  # fmt: skip
        early = _first_envelope(endpoints.bootstrap_servers, cdc_topic(cfg.kafka.topic_prefix, "legacy.customers"),
                                b"C00003")  # its snapshot event ('r'): older than what follows
        # Inserts, updates (one leaving the TOASTed notes unchanged), a parent with children deleted.
        sql(*(_customer(i, rng) for i in range(21, 41)), *(_contact(i, 21 + i % 20, rng) for i in range(41, 81)))
        sql("update legacy.customers set city = 'shelbyville', score = score + 1 where customer_id = 'C00003'",
            "update legacy.customers set first_name = 'zoe' where customer_id in ('C00004', 'C00025')",
            f"update legacy.customers set notes = '{_notes('NEW')}' where customer_id = 'C00005'",
            "update legacy.contacts set job_title = 'chief' where contact_id = 'K00002'")
        processor.proc.kill()  # SIGKILL mid-run: its batch is read again, nothing lost or doubled
        processor.proc.wait(10)
        for i in range(41, 61):  # a transaction per change, while no processor runs
            sql(f"update legacy.customers set email = 'new{i}@example.org', city = 'ogdenville' "
                f"where customer_id = 'C{i - 20:05d}'")  # fmt: skip
        sql("delete from legacy.customers where customer_id in ('C00006', 'C00007')",  # cascades to contacts
            "delete from legacy.contacts where contact_id = 'K00009'",
            "insert into legacy.customers values ('C00007', 'back', 'again', null, 'capital city', '2000-01-01', 0, "
            "'R9 back')")
        processor = service("process-2", "process")
        services[1] = processor
        # The stale event: C00003's snapshot envelope produced again after its update.
        producer = Producer(endpoints.kafka.client_config())
        producer.produce(cdc_topic(cfg.kafka.topic_prefix, "legacy.customers"), early[1], early[0])
        assert producer.flush(10) == 0
        sql("update legacy.customers set last_name = 'final' where customer_id = 'C00010'",
            # A change that fails a rule (full_name is required): a dead letter with its reason and position.
            "update legacy.customers set first_name = null, last_name = null where customer_id = 'C00011'")

        expected = expected_target(cfg, legacy_dsn, ENTITIES, rejects=True)

        def mapped_source() -> bool:
            now = target_now(target_dsn, ENTITIES)
            return {e: {k: v for k, v in rows.items() if k != "C00011"} for e, rows in now.items()} == expected

        wait_until(mapped_source, 120, what="the target equal to the mapped source")
    finally:
        for s in services:
            s.stop(15)
    got = target_now(target_dsn, ENTITIES)
    assert {k: v for k, v in got["account"].items() if k != "C00011"} == expected["account"]  # field by field
    assert got["contact"] == expected["contact"]
    assert len(got["account"]) == 39 and "C00006" not in got["account"] and got["account"]["C00007"]["city"] == (
        "Capital City"
    )
    assert got["account"]["C00003"]["city"] == "Shelbyville"  # the replayed older event changed nothing
    assert got["account"]["C00004"]["region"] == "R4"  # the TOASTed value kept through the unchanged update
    assert got["account"]["C00005"]["region"] == "NEW"
    assert not [c for c in got["contact"].values() if c["customer_id"] in ("C00006",)]
    # The change that failed left the row as its last good change wrote it.
    assert got["account"]["C00011"]["first_name"] is not None and "C00011" not in expected["account"]
    letters = [AvroDecoder(registry_client).decode(v) for v in _values(endpoints.bootstrap_servers,
                                                                       cfg.kafka.dlq_topic)]
    [letter] = [x for x in letters if x["stage"] == "process"]
    assert (letter["rule"], letter["field"], letter["entity"]) == ("required", "full_name", "account")
    assert letter["source_position"].startswith("legacy.customers@")
    with psycopg.connect(target_dsn) as conn:
        placeholder = conn.execute(
            "select count(*) from crm.accounts where region is null or region like '{%' or source_lsn is null"
        ).fetchone()
        assert placeholder == (0,)
        lsns = conn.execute("select count(*) from crm.deletions where entity = 'contact'").fetchone()
        assert lsns is not None and lsns[0] >= 1  # children deleted with their parent are remembered too

