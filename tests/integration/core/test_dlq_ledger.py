"""The dead-letter ledger on the real Kafka, registry and PostgreSQL: re-runs append copies to the topic,
the ledger shows one letter per rejected source record and rule; a replayed record that fails again
supersedes its letter; the keyword writers and the Letter type write the same letter."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from cryptography.fernet import Fernet

from crmflow.dlq import DeadLetterWriter, DlqCipher, Letter, read_dead_letters
from crmflow.pipeline.letters import RetryWatch, sync_ledger
from crmflow.serialization import AvroCodec, load_schema
from crmflow.stack import Endpoints
from sinks.postgres.ledger import Ledger
from sinks.postgres.migrate import apply_migrations

pytestmark = pytest.mark.integration

LINE = "C9,J\u00fcrgen,M\u00fcller,jane.doe@example.com\n".encode("cp1252")


def _envelope(codec: AvroCodec, run_id: str) -> bytes:
    return codec.encode({"source": "tickets", "entity": "tickets", "source_key": "T1", "position": "tickets.csv:4",
                         "run_id": run_id, "op": "SNAPSHOT", "captured_at": int(time.time() * 1000),
                         "fields": {"Ticket_ID": "T1", "Support_Ticket_Date": "31.12.2024"}})


def _one_run(writer: DeadLetterWriter, codec: AvroCodec, raw: str, run_id: str, offset: int) -> None:
    """What a run of the same data dead-letters: a line that does not decode, and a record the processor
    rejected (its envelope carries the run id and capture time, which differ every run)."""
    writer.send_raw(LINE, key=None, stage="snapshot", rule="encoding", error="byte 0xfc at column 5",
                    entity="account", run_id=run_id, source_position="customers.csv:7")
    writer.write(Letter(stage="process", rule="date_format", error="not a date in any accepted format",
                        value=_envelope(codec, run_id), key=b"T1", field="case_creation_date", entity="case",
                        run_id=run_id, source_position="tickets.csv:4", topic=raw, partition=0, offset=offset))
    writer.flush()


def test_re_runs_leave_one_letter_per_rejected_record_and_a_failed_replay_supersedes_it(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
    pg_dsn_factory: Callable[[], str],
) -> None:
    dlq, raw = topic_factory("dlq"), topic_factory("raw")
    dsn = pg_dsn_factory()
    apply_migrations(dsn, schema="crm")
    cipher = DlqCipher(Fernet.generate_key())
    producer = Producer({**endpoints.kafka.client_config(), "enable.idempotence": True})
    writer = DeadLetterWriter(producer, registry_client, dlq, cipher)
    codec = AvroCodec.for_topic(registry_client, raw, load_schema("legacy/legacy_record"))

    def sync(retries: RetryWatch | None = None) -> int:
        with psycopg.connect(dsn) as conn:
            return sync_ledger(conn, "crm", dlq, endpoints.bootstrap_servers, registry_client, cipher, retries).read

    def open_rows() -> list[tuple[str, str, int, int, list[str]]]:
        with psycopg.connect(dsn) as conn:
            rows = Ledger(conn, "crm").select(dlq)
        return sorted((r.origin, r.rule, r.attempt, r.copies, r.run_ids) for r in rows)

    for n, run_id in enumerate(("run-1", "run-2", "run-3")):
        _one_run(writer, codec, raw, run_id, offset=10 + n)
    assert sync() == 6  # three copies of each letter in the topic
    assert sync() == 0  # read once
    assert open_rows() == [("customers.csv:7", "encoding", 1, 3, ["run-1", "run-2", "run-3"]),
                           ("tickets.csv:4", "date_format", 1, 3, ["run-1", "run-2", "run-3"])]
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("select payload, digest, origin, error from crm.dead_letters").fetchall()
    assert all(b"jane.doe" not in bytes(p) and b"J\xfcrgen" not in bytes(p) and "jane" not in d + o + e
               for p, d, o, e in stored)  # nothing in clear

    # A changed source line at the same position is another record: its own letter.
    writer.send_raw(LINE.replace(b"C9", b"C8"), key=None, stage="snapshot", rule="encoding", error="byte 0xfc",
                    entity="account", run_id="run-4", source_position="customers.csv:7")
    writer.flush()
    assert sync() == 1
    assert len(open_rows()) == 3

    # A replay of the date letter fails again by another rule (its ticket's customer is unknown): the new
    # letter is the visible one, attempt 2; the replayed one is superseded. Its same-rule failure would stay
    # the same letter, attempt 2.
    with psycopg.connect(dsn) as conn:
        date_row = next(r for r in Ledger(conn, "crm").select(dlq) if r.rule == "date_format")
        line_row = next(r for r in Ledger(conn, "crm").select(dlq) if r.copies == 3 and r.rule == "encoding")
    watch = RetryWatch(by_position={"tickets.csv:4": date_row, "customers.csv:7": line_row})
    writer.write(Letter(stage="sink", rule="orphan", error="account C404 not found", value=b"mapped", key=b"T1",
                        entity="case", run_id="run-1", source_position="tickets.csv:4", topic="mapped.case"))
    writer.send_raw(LINE, key=None, stage="snapshot", rule="encoding", error="byte 0xfc at column 5",
                    entity="account", run_id="run-1", source_position="customers.csv:7")
    writer.flush()
    assert sync(watch) == 2
    assert set(watch.failed) == {date_row.letter_id, line_row.letter_id}
    rows = open_rows()
    assert ("tickets.csv:4", "orphan", 2, 1, ["run-1"]) in rows
    assert ("customers.csv:7", "encoding", 2, 4, ["run-1", "run-2", "run-3"]) in rows
    assert not any(r[1] == "date_format" for r in rows)
    with psycopg.connect(dsn) as conn:
        old = Ledger(conn, "crm").select(dlq, statuses=("superseded",))
    assert [(r.letter_id, r.rule) for r in old] == [(date_row.letter_id, "date_format")]


def test_the_keyword_writers_and_the_letter_type_write_the_same_letter(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, topic_factory: Callable[..., str],
) -> None:
    dlq = topic_factory("dlq")
    cipher = DlqCipher(Fernet.generate_key())
    producer = Producer({**endpoints.kafka.client_config(), "enable.idempotence": True})
    writer = DeadLetterWriter(producer, registry_client, dlq, cipher)
    writer.send_raw(LINE, key=None, stage="snapshot", rule="encoding", error="byte 0xfc", entity="account",
                    run_id="r1", source_position="customers.csv:7")
    value, headers = writer.letter(value=LINE, key=None, topic="", partition=-1, offset=-1, stage="snapshot",
                                   rule="encoding", error="byte 0xfc", entity="account", run_id="r1",
                                   source_position="customers.csv:7")
    kafka_headers: list[tuple[str, str | bytes | None]] = list(headers)
    producer.produce(dlq, value=value, headers=kafka_headers)
    writer.write(Letter(stage="snapshot", rule="encoding", error="byte 0xfc", value=LINE, entity="account",
                        run_id="r1", source_position="customers.csv:7"))
    writer.flush()
    letters = list(read_dead_letters(endpoints.kafka, registry_client, dlq))
    assert len(letters) == 3
    comparable = [{k: v for k, v in lt.record.items() if k not in ("failed_at", "payload")} for lt in letters]
    assert comparable[0] == comparable[1] == comparable[2]
    assert {cipher.decrypt(lt.record["payload"], lt.record["key_id"]) for lt in letters} == {LINE}
