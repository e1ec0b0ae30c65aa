"""CDC under chaos (issue 10): the target equals the source after mapping, whatever was killed on the way.

The real stack runs ``crmflow cdc`` + ``crmflow process`` + ``crmflow sink`` as services while a seeded random
workload changes a legacy database of customers and their children (contacts, tickets): inserts, updates and
deletes (cascading), multi-statement transactions from two connections (some held open a moment, so that
transactions overlap), large TOASTed text (customers' notes and tickets' bodies, each feeding a target field)
rewritten now and then and otherwise left unchanged by updates, contact key changes, an ``ALTER TABLE ... ADD
COLUMN`` mid-stream whose new column the mapping uses, and a re-snapshot of the customers by signal while the
stream runs. Meanwhile the CDC producer, the processor and the sink are each SIGKILLed at random moments and
started again, and the stack's PostgreSQL is restarted once (so the test is ``serial``).

After everything drained: the target equals the legacy tables mapped by the processor's own mappers, row by row
and field by field, no deleted row is left, no Unchanged marker or TOAST placeholder is stored anywhere, no row
or cross-reference is doubled, and the processor turned each change event into exactly one output record
(exactly-once between topics across its kill). ``CRMFLOW_CHAOS_SEED`` replays a seed; the seed is printed.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import load_config
from crmflow.pipeline.migrate import prepare
from crmflow.pipeline.services import Service
from crmflow.stack import Endpoints, get_stack
from crmflow.topics import cdc_topic, mapped_topic
from tests.e2e.cdc_support import TARGET_TABLES, expected_target, legacy_database, target_now
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.serial]  # restarts the shared stack's PostgreSQL

TABLES = ("legacy.customers", "legacy.contacts", "legacy.tickets")
SCHEMA = [
    "create schema legacy",
    "create table legacy.customers (customer_id text primary key, first_name text not null, last_name text not null, "
    "email text, city text, notes text not null)",
    "alter table legacy.customers alter column notes set storage external",  # out of line: TOASTed
    "create table legacy.contacts (contact_id text primary key, "
    "customer_id text not null references legacy.customers on delete cascade, first_name text not null, "
    "last_name text not null, job_title text)",
    "create table legacy.tickets (ticket_id text primary key, "
    "customer_id text not null references legacy.customers on delete cascade, opened date not null, "
    "subject text, status text, body text not null)",
    "alter table legacy.tickets alter column body set storage external",
    "create index on legacy.contacts (customer_id)",
    "create index on legacy.tickets (customer_id)",
]
NEW_COLUMN = "alter table legacy.customers add column account_no text"
# entity -> (legacy table, key column, columns read as text for the expected target, target fields compared)
ENTITIES: dict[str, tuple[str, str, list[str], list[str]]] = {
    "account": ("customers", "customer_id", ["customer_id", "first_name", "last_name", "email", "city", "notes",
                                             "account_no"],
                ["full_name", "first_name", "last_name", "email", "city", "region", "legacy_account_number"]),
    "contact": ("contacts", "contact_id", ["contact_id", "customer_id", "first_name", "last_name", "job_title"],
                ["customer_id", "full_name", "first_name", "last_name", "job_title"]),
    "case": ("tickets", "ticket_id", ["ticket_id", "customer_id", "opened", "subject", "status", "body"],
             ["customer_id", "case_creation_date", "subject", "status", "priority"]),
}  # fmt: skip
NAMES = ["anne", "bob", "carla", "dev", "eve", "femi", "gus", "hana", "ivo", "jun"]
CITIES = ["springfield", "shelbyville", "ogdenville", "north haverbrook", "capital city"]
JOBS = ["buyer", "chief buyer", "cto", "clerk", "head of it"]


def _config(tmp_path: Path, legacy_env: str, target_env: str, prefix: str, name: str, slot: str) -> Path:
    def source(table: str, entity: str, key: str) -> dict[str, Any]:
        return {"kind": "table", "dsn_env": legacy_env, "table": table, "entity": entity, "key": key}

    raw: dict[str, Any] = {
        "run": {"name": name},
        "kafka": {"topic_prefix": prefix, "partitions": 2},
        "sources": {"customers": source("legacy.customers", "account", "customer_id"),
                    "contacts": source("legacy.contacts", "contact", "contact_id"),
                    "tickets": source("legacy.tickets", "case", "ticket_id")},
        "entities": {
            "account": {"fields": [
                {"source": "customer_id", "target": "customer_id"},
                {"target": "full_name", "transform": {"join": ["first_name", "last_name"]}},
                {"source": "first_name", "target": "first_name", "transform": "name_case"},
                {"source": "last_name", "target": "last_name", "transform": "name_case"},
                {"source": "email", "target": "email", "transform": "email"},
                {"source": "city", "target": "city", "transform": "name_case"},
                # The TOASTed column feeds a target field: its first word.
                {"source": "notes", "target": "region", "transform": {"split": {"index": 0}}},
                # The column ALTER TABLE adds while the stream runs (null before).
                {"source": "account_no", "target": "legacy_account_number", "transform": "trim"},
            ]},
            "contact": {"fields": [
                {"source": "contact_id", "target": "contact_id"},
                {"source": "customer_id", "target": "customer_id"},
                {"target": "full_name", "transform": {"join": ["first_name", "last_name"]}},
                {"source": "first_name", "target": "first_name", "transform": "name_case"},
                {"source": "last_name", "target": "last_name", "transform": "name_case"},
                {"source": "job_title", "target": "job_title", "transform": "trim"},
            ]},
            "case": {"fields": [
                {"source": "ticket_id", "target": "case_id"},
                {"source": "customer_id", "target": "customer_id"},
                {"source": "opened", "target": "case_creation_date", "transform": "parse_date"},
                {"source": "subject", "target": "subject", "transform": "trim"},
                {"source": "status", "target": "status", "transform": "trim"},
                {"source": "body", "target": "priority", "transform": {"split": {"index": 0}}},  # TOASTed
            ]},
        },
        "cdc": {"dsn_env": legacy_env, "tables": list(TABLES), "slot": slot, "publication": slot,
                "feedback_interval_s": 0.2, "reconnect_initial_s": 0.2, "reconnect_max_s": 2,
                "snapshot_chunk_size": 7},
        "target": {"dsn_env": target_env, "deletes": "hard", "batch_size": 50, "flush_interval_s": 0.2},
    }  # fmt: skip
    path = tmp_path / "crmflow.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _large(rng: random.Random, word: str) -> str:
    return f"{word} " + rng.randbytes(rng.randrange(3000, 6000)).hex()  # 6-12 kB, incompressible: out of line


class Workload:
    """Random transactions on the legacy tables from ``workers`` connections until stopped; survives a restart
    of PostgreSQL (a transaction cut off by it is simply lost: the expected target is read from the tables)."""

    def __init__(self, dsn: str, seed: int, tag: str, workers: int = 2) -> None:
        self.dsn, self.seed, self.tag = dsn, seed, tag  # tag: the new keys' own range
        self.stop = threading.Event()
        self.altered = threading.Event()  # the new column exists: the workload may write it
        self.committed = 0
        self.failed = 0
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(w,), daemon=True, name=f"workload-{w}")
                        for w in range(workers)]  # fmt: skip

    def _loop(self, worker: int) -> None:
        rng = random.Random(f"{self.seed}-{worker}")
        seq = 0

        def key(letter: str) -> str:
            nonlocal seq
            seq += 1
            return f"{letter}{self.tag}{worker}{seq:05d}"

        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    while not self.stop.is_set():
                        try:
                            with conn.transaction():
                                for _ in range(rng.choice((1, 1, 2, 3, 4))):
                                    self._statement(conn, rng, key)
                                if rng.random() < 0.15:
                                    time.sleep(rng.uniform(0.01, 0.1))  # held open: transactions overlap
                        except (psycopg.errors.IntegrityError, psycopg.errors.DeadlockDetected,
                                psycopg.errors.SerializationFailure):  # fmt: skip
                            with self.lock:
                                self.failed += 1  # raced by the other worker: rolled back, go on
                            continue
                        with self.lock:
                            self.committed += 1
                        self.stop.wait(rng.uniform(0.0, 0.03))
            except psycopg.OperationalError:
                self.stop.wait(0.2)  # PostgreSQL restarting: connect again
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
                return

    def _pick(self, conn: psycopg.Connection[Any], table: str, key: str) -> str | None:
        row = conn.execute(f"select {key} from legacy.{table} tablesample system (50) order by random() limit 1"
                           ).fetchone() or conn.execute(f"select {key} from legacy.{table} limit 1").fetchone()
        return None if row is None else str(row[0])

    def _statement(self, conn: psycopg.Connection[Any], rng: random.Random, key: Callable[[str], str]) -> None:
        x = conn.execute
        kind = rng.choices(
            ["customer", "update", "notes", "contact", "contact_update", "contact_key", "contact_delete",
             "contact_again", "ticket", "ticket_update", "ticket_body", "ticket_delete", "delete", "account_no"],
            [10, 14, 4, 8, 6, 2, 3, 2, 6, 8, 3, 3, 4, 6 if self.altered.is_set() else 0])[0]  # fmt: skip
        if kind == "customer":
            cid = key("C")
            first, last = rng.choice(NAMES), rng.choice(NAMES)
            x("insert into legacy.customers (customer_id, first_name, last_name, email, city, notes) "
              "values (%s, %s, %s, %s, %s, %s)",
              (cid, first, last, f"{first}.{last}.{cid.lower()}@example.com", rng.choice(CITIES),
               _large(rng, f"R{rng.randrange(9)}")))  # fmt: skip
            for _ in range(rng.randrange(3)):
                x("insert into legacy.contacts values (%s, %s, %s, %s, %s)",
                  (key("K"), cid, rng.choice(NAMES), rng.choice(NAMES), rng.choice(JOBS)))
            if rng.random() < 0.5:
                x("insert into legacy.tickets values (%s, %s, date '2024-01-01' + %s, %s, 'open', %s)",
                  (key("T"), cid, rng.randrange(300), f"subject {rng.randrange(1000)}",
                   _large(rng, rng.choice(["low", "medium", "high"]))))  # fmt: skip
            return
        if kind in ("update", "notes", "delete", "account_no", "contact", "ticket"):
            picked = self._pick(conn, "customers", "customer_id")
            if picked is None:
                return
            cid = picked
            if kind == "update":  # the TOASTed notes left unchanged
                x("update legacy.customers set city = %s, email = %s where customer_id = %s",
                  (rng.choice(CITIES), f"u{rng.randrange(10**6)}.{cid.lower()}@example.org", cid))
            elif kind == "notes":
                x("update legacy.customers set notes = %s where customer_id = %s",
                  (_large(rng, f"N{rng.randrange(9)}"), cid))
            elif kind == "account_no":
                x("update legacy.customers set account_no = %s, last_name = %s where customer_id = %s",
                  (f" ACC-{rng.randrange(10**6)} ", rng.choice(NAMES), cid))
            elif kind == "delete":  # cascades to its contacts and tickets
                x("delete from legacy.customers where customer_id = %s", (cid,))
            elif kind == "contact":
                x("insert into legacy.contacts values (%s, %s, %s, %s, %s)",
                  (key("K"), cid, rng.choice(NAMES), rng.choice(NAMES), rng.choice(JOBS)))
            else:
                x("insert into legacy.tickets values (%s, %s, date '2024-01-01' + %s, %s, 'open', %s)",
                  (key("T"), cid, rng.randrange(300), f"subject {rng.randrange(1000)}",
                   _large(rng, rng.choice(["low", "medium", "high"]))))  # fmt: skip
            return
        table, column = ("contacts", "contact_id") if kind.startswith("contact") else ("tickets", "ticket_id")
        row_id = self._pick(conn, table, column)
        if row_id is None:
            return
        if kind == "contact_update":
            x("update legacy.contacts set job_title = %s where contact_id = %s", (f" {rng.choice(JOBS)} ", row_id))
        elif kind == "contact_again":  # deleted and inserted again in one transaction: the row stays
            row = x("delete from legacy.contacts where contact_id = %s returning customer_id, first_name",
                    (row_id,)).fetchone()  # fmt: skip
            if row is not None:
                x("insert into legacy.contacts values (%s, %s, %s, %s, 'again')", (row_id, *row, rng.choice(NAMES)))
        elif kind == "contact_key":  # a key change: a delete of the old key and a create of the new one
            x("update legacy.contacts set contact_id = %s where contact_id = %s", (key("K"), row_id))
        elif kind == "ticket_update":  # the TOASTed body left unchanged
            x("update legacy.tickets set status = %s, subject = %s where ticket_id = %s",
              (rng.choice(["open", "pending", "closed"]), f"subject {rng.randrange(1000)}", row_id))
        elif kind == "ticket_body":
            x("update legacy.tickets set body = %s where ticket_id = %s",
              (_large(rng, rng.choice(["low", "medium", "high", "urgent"])), row_id))
        else:
            x(f"delete from legacy.{table} where {column} = %s", (row_id,))

    def __enter__(self) -> Workload:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Per topic, the non-tombstone messages committed in it (read_committed, from the beginning to the end)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})  # fmt: skip
    out = dict.fromkeys(topics, 0)
    try:
        md = consumer.list_topics(timeout=10)
        parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in md.topics[t].partitions]
        pending = {(tp.topic, tp.partition) for tp in parts}
        consumer.assign(parts)

        def read() -> bool:
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is None:
                    if msg.value():
                        out[msg.topic() or ""] += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic() or "", msg.partition() or 0))
            return not pending

        wait_until(read, 60, interval_s=0, what="reading the topics to their end")
    finally:
        consumer.close()
    return out


@pytest.fixture
def legacy(pg_dsn_factory: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, str]]:
    """(DSN, env var holding it, slot/publication name) of a fresh legacy database; the slot dropped after."""
    yield from legacy_database(pg_dsn_factory, monkeypatch.setenv, SCHEMA, "e2e_chaos")


def test_cdc_under_chaos_the_target_equals_the_mapped_source(
    legacy: tuple[str, str, str], pg_dsn_factory: Callable[[], str], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, admin: AdminClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    pg = getattr(get_stack(), "pg", None)
    if pg is None:
        pytest.skip("restarting PostgreSQL needs the local stack (pg_ctl)")
    seed = int(os.environ.get("CRMFLOW_CHAOS_SEED") or random.randrange(10**6))
    print(f"\nchaos seed {seed} (CRMFLOW_CHAOS_SEED={seed} replays it)")
    rng = random.Random(seed)
    legacy_dsn, legacy_env, slot = legacy
    tag = uuid.uuid4().hex[:8]
    target_dsn, target_env = pg_dsn_factory(), f"CRMFLOW_E2E_TARGET_{tag.upper()}"
    monkeypatch.setenv(target_env, target_dsn)
    config = _config(tmp_path, legacy_env, target_env, f"e2e-chaos-{tag}", f"e2echaos{tag}", slot)
    cfg = load_config(config)
    prepare(cfg, endpoints, registry_client, target_dsn)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs: list[Path] = []
    started: dict[str, int] = {}

    def service(name: str, *args: str) -> Service:
        started[name] = started.get(name, 0) + 1
        log_file = tmp_path / f"{name}-{started[name]}.log"
        logs.append(log_file)
        # no metrics port: another test's stage may hold the default one
        return Service(name, [*args, "-c", str(config), "--metrics-port", "0"], log_file, env, max_restarts=20)

    # Before capture: the initial load hands these over (the workload's first statements make more).
    with Workload(legacy_dsn, seed, "a") as warmup:
        wait_until(lambda: warmup.committed >= 30 or warmup.errors, 60, what="the initial rows")
    assert not warmup.errors, warmup.errors

    services: dict[str, Service] = {"cdc": service("cdc", "cdc", "--init")}
    workload = Workload(legacy_dsn, seed + 1, "b")
    try:
        topics = [cdc_topic(cfg.kafka.topic_prefix, t) for t in TABLES]
        wait_until(lambda: set(topics) <= set(admin.list_topics(timeout=5).topics), 90, what="the change topics")
        services["process"] = service("process", "process")
        services["sink"] = service("sink", "sink")
        with workload:

            def supervise() -> None:
                for s in services.values():
                    s.supervise()  # a retriable exit (a dependency away too long) is restarted; others raise
                assert not workload.errors, workload.errors

            def run_for(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    supervise()
                    time.sleep(0.2)

            def kill(name: str, *args: str) -> None:
                victim = services.pop(name)
                victim.proc.kill()  # SIGKILL: nothing flushed, nothing committed
                victim.proc.wait(10)
                run_for(rng.uniform(0.2, 2.0))  # a while with it down
                services[name] = service(name, *args)

            def streaming() -> bool:
                supervise()
                with psycopg.connect(legacy_dsn) as conn:
                    row = conn.execute("select active_pid from pg_replication_slots where slot_name = %s",
                                       (slot,)).fetchone()  # fmt: skip
                    return row is not None and row[0] is not None

            def restart_postgres() -> None:
                # While a replication session is live (a producer still starting would only exit 3 and be run
                # again), so that the outage cuts one: the producer must reconnect and resume from its slot.
                wait_until(streaming, 60, what="the producer streaming")
                pg.stop()  # pg_ctl stop -m fast: every connection (walsender, sink, workload) closed
                pg.start()
                wait_until(lambda: pg.accepts(endpoints), 60, what="PostgreSQL back")

            def alter() -> None:
                with psycopg.connect(legacy_dsn, autocommit=True) as conn:
                    conn.execute(NEW_COLUMN)
                workload.altered.set()

            def resnapshot() -> None:
                with psycopg.connect(legacy_dsn, autocommit=True) as conn:
                    conn.execute("select pg_logical_emit_message(true, 'crmflow.cdc.signal', %s)",
                                 ('{"snapshot": "legacy.customers"}',))  # fmt: skip

            events: list[tuple[str, Callable[[], None]]] = [
                ("kill cdc", lambda: kill("cdc", "cdc")),
                ("kill process", lambda: kill("process", "process")),
                ("kill sink", lambda: kill("sink", "sink")),
                ("restart postgres", restart_postgres),
            ]
            rng.shuffle(events)
            # The schema change comes first of all, and the re-snapshot after it, somewhere among the faults.
            events.insert(rng.randrange(2), ("alter table", alter))
            at = next(i for i, (what, _) in enumerate(events) if what == "alter table")
            events.insert(rng.randrange(at + 1, len(events) + 1), ("resnapshot customers", resnapshot))
            for what, action in events:
                run_for(rng.uniform(1.0, 4.0))
                print(f"{time.strftime('%H:%M:%S')} {what} ({workload.committed} transactions so far)")
                action()
            run_for(rng.uniform(2.0, 4.0))
        print(f"workload: {workload.committed} transactions committed, {workload.failed} rolled back (raced)")
        assert not workload.errors, workload.errors
        assert workload.committed >= 50

        expected = expected_target(cfg, legacy_dsn, ENTITIES)

        def converged() -> bool:
            supervise()
            with contextlib.suppress(psycopg.OperationalError):
                return target_now(target_dsn, ENTITIES) == expected
            return False

        try:
            wait_until(converged, 180, interval_s=0.5, what="the target equal to the mapped source")
        except AssertionError:
            got = target_now(target_dsn, ENTITIES)
            for entity in expected:
                exp, have = expected[entity], got[entity]
                diff = [(k, exp.get(k), have.get(k)) for k in sorted(set(exp) | set(have)) if exp.get(k) != have.get(k)]
                print(f"{entity}: {len(exp)} expected, {len(have)} in the target, {len(diff)} differ: {diff[:5]}")
            raise
    finally:
        for s in services.values():
            s.stop(15)
        for log_file in logs:
            if log_file.exists():
                print(f"--- {log_file.name}:\n{log_file.read_text()[-3000:]}")
    cdc_logs = "".join(f.read_text() for f in logs if f.name.startswith("cdc-") and f.exists())
    assert "snapshot of legacy.customers complete" in cdc_logs  # the re-snapshot ran to its end
    assert "lost the legacy database" in cdc_logs  # the restart was an outage the producer rode out
    got = target_now(target_dsn, ENTITIES)
    for entity in expected:
        assert got[entity] == expected[entity], f"{entity} differs (seed {seed})"  # row by row, field by field
    print("rows: " + ", ".join(f"{e} {len(rows)}" for e, rows in got.items()))
    with psycopg.connect(target_dsn) as conn, psycopg.connect(legacy_dsn) as src:
        # No TOAST placeholder or Unchanged marker anywhere in the target, and every row carries its LSN.
        for entity, table in ((e, TARGET_TABLES[e]) for e in ENTITIES):
            fields = ENTITIES[entity][3]
            bad = conn.execute(
                f"select count(*) from crm.{table} where source_lsn is null or "
                + " or ".join(f"{f}::text in ('{{}}', '__debezium_unavailable_value') or {f}::text like '%%Unchanged%%'"
                              for f in fields)
            ).fetchone()
            assert bad == (0,), f"{table}: a placeholder stored (seed {seed})"
        # The TOASTed columns' target fields hold the values' first words, never nothing.
        assert conn.execute("select count(*) from crm.accounts where region is null").fetchone() == (0,)
        assert conn.execute("select count(*) from crm.cases where priority is null").fetchone() == (0,)
        # No deleted row present: every row in the target is in the source (and nothing doubled).
        for entity, (table, key, _, _) in ENTITIES.items():
            ids = {r[0] for r in src.execute(f"select {key} from legacy.{table}")}
            stored = [r[0] for r in conn.execute(f"select external_id from crm.{TARGET_TABLES[entity]}")]
            assert len(stored) == len(set(stored)) and set(stored) == ids, f"{table} (seed {seed})"
            xrefs = conn.execute("select count(*), count(distinct source_id) from crm.xref where entity = %s",
                                 (entity,)).fetchone()  # fmt: skip
            assert xrefs == (len(ids), len(ids)), f"{entity}: cross-references doubled or missing (seed {seed})"
        assert src.execute("select count(*) from legacy.customers where account_no is not null").fetchone() != (0,)
        assert conn.execute("select count(*) from crm.accounts where legacy_account_number like 'ACC-%'"
                            ).fetchone() != (0,), "the column added while streaming reached the target"
    # Exactly once between topics: each change event (a delete included, tombstones aside) became one record.
    prefix = cfg.kafka.topic_prefix
    counts = _counts(endpoints.bootstrap_servers, [*topics, *(mapped_topic(prefix, e) for e in ENTITIES)])
    produced = sum(counts[t] for t in topics)
    mapped = sum(counts[mapped_topic(prefix, e)] for e in ENTITIES)
    print(f"{produced} change events (replays included), {mapped} mapped records")
    assert mapped == produced, f"the processor wrote {mapped} records for {produced} change events (seed {seed})"
