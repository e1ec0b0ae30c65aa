"""Dead letters on the real Kafka and registry: nothing in clear, reasons readable, replay re-sends."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from cryptography.fernet import Fernet

from crmflow.dlq import DeadLetterWriter, DlqCipher, read_dead_letters, replay
from crmflow.stack import Endpoints

pytestmark = pytest.mark.integration

PII = b'{"email": "jane.doe@example.com"}'


def _consume_all(ep: Endpoints, topic: str, group: str, n: int) -> list[bytes]:
    c = Consumer({**ep.kafka.client_config(), "group.id": group, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(out) < n and time.monotonic() < deadline:
        out += [m.value() or b"" for m in c.consume(100, timeout=1) if not m.error()]
    c.close()
    return out


def test_dead_letters_are_encrypted_listed_and_replayed(
    endpoints: Endpoints,
    registry_client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
) -> None:
    source, dlq_topic = topic_factory("src"), topic_factory("dlq")
    producer = Producer({**endpoints.kafka.client_config(), "enable.idempotence": True})
    producer.produce(source, key=b"C1", value=PII)
    producer.flush(10)
    consumed = Consumer({**endpoints.kafka.client_config(), "group.id": group_factory(),
                         "auto.offset.reset": "earliest"})
    consumed.subscribe([source])
    msg = None
    deadline = time.monotonic() + 30
    while msg is None and time.monotonic() < deadline:
        m = consumed.poll(1)
        msg = m if m is not None and not m.error() else None
    consumed.close()
    assert msg is not None

    cipher = DlqCipher(Fernet.generate_key())
    writer = DeadLetterWriter(producer, registry_client, dlq_topic, cipher)
    writer.send(msg, stage="process", rule="date_format", field="case_creation_date",
                error="not a date in any accepted format", entity="case", run_id="r1")
    writer.send_raw(b"C9,\xff\xfe,broken", key=None, stage="snapshot", rule="encoding", error="invalid UTF-8",
                    entity="account", run_id="r1", source_position="customers.csv:7")
    writer.flush()

    raw = _consume_all(endpoints, dlq_topic, group_factory(), 2)
    assert len(raw) == 2
    assert all(b"jane.doe" not in v and b"\xff\xfe" not in v for v in raw)

    letters = list(read_dead_letters(endpoints.kafka, registry_client, dlq_topic))
    assert [(lt.record["stage"], lt.record["rule"], lt.record["field"]) for lt in letters] == [
        ("process", "date_format", "case_creation_date"), ("snapshot", "encoding", None)]
    assert letters[0].record["source_topic"] == source
    assert letters[1].record["source_position"] == "customers.csv:7"
    assert [lt.replayable for lt in letters] == [True, False]

    replayed, skipped = replay(iter(letters), producer, cipher)
    assert (replayed, skipped) == (1, 1)
    values = _consume_all(endpoints, source, group_factory(), 2)
    assert values == [PII, PII]



def test_letters_of_an_open_transaction_are_not_counted_until_it_commits(
    endpoints: Endpoints,
    registry_client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
) -> None:
    """A read ends at the last stable offset: a letter of a batch whose transaction is still open is neither
    looked at nor counted (and the count does not wait for it); once committed, it is."""
    dlq_topic = topic_factory("dlq")
    cipher = DlqCipher(Fernet.generate_key())
    plain = Producer({**endpoints.kafka.client_config(), "enable.idempotence": True})
    DeadLetterWriter(plain, registry_client, dlq_topic, cipher).send_raw(
        b"C1,broken", key=None, stage="snapshot", rule="csv_malformed", error="unterminated quote",
        entity="account", run_id="r1", source_position="customers.csv:3")
    plain.flush(10)
    txn = Producer({**endpoints.kafka.client_config(), "transactional.id": f"{dlq_topic}-writer",
                    "transaction.timeout.ms": 60_000})
    txn.init_transactions(30)
    txn.begin_transaction()
    writer = DeadLetterWriter(txn, registry_client, dlq_topic, cipher)
    writer.send_raw(b"C2,broken", key=None, stage="process", rule="required", error="required field is missing",
                    entity="account", run_id="r1", source_position="customers.csv:4")
    txn.flush(10)  # in the log, not committed: the partition's last stable offset stays before it

    def positions(complete: bool) -> list[str]:
        return [d.record["source_position"] for d in read_dead_letters(endpoints.kafka, registry_client, dlq_topic,
                                                                        timeout_s=5, complete=complete)]
    try:
        assert positions(False) == ["customers.csv:3"]
        assert positions(True) == ["customers.csv:3"]
    finally:
        txn.commit_transaction(30)
    assert positions(True) == ["customers.csv:3", "customers.csv:4"]
