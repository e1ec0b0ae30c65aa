"""The Avro contract on the real registry (Apicurio's Confluent-compatible API) and through real Kafka."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, DeserializingConsumer, Message, Producer, SerializingProducer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from crmflow.registry import (
    IncompatibleSchemaError,
    ParsedSchema,
    load_schema,
    register_all,
    register_schema,
    schema_files,
)
from crmflow.serialization import AvroCodec, AvroDecoder, UnknownSchemaIdError
from crmflow.stack import Endpoints

pytestmark = pytest.mark.integration

EXPECTED_SUBJECTS = {
    "io.crmflow.dlq.DeadLetter",
    "io.crmflow.legacy.LegacyRecord",
    "io.crmflow.target.Account",
    "io.crmflow.target.Case",
    "io.crmflow.target.Contact",
    "io.crmflow.target.Sale",
}
NOW = datetime(2024, 5, 17, 12, 30, 45, 123000, tzinfo=UTC)


def sales(n: int) -> list[dict[str, Any]]:
    return [
        {
            "sale_id": f"S{i:07d}",
            "source_lsn": None, "deleted": False, "unchanged_fields": [],  # the change fields (defaults)
            "customer_id": f"C{i % 17:07d}",
            "total_sales": Decimal(i * 37 - 500) / 4 + Decimal("0.01"),
            "currency": "USD",
            "original_amount": None if i % 5 == 0 else Decimal(f"{i}.50"),
            "original_currency": None if i % 5 == 0 else "EUR",
            "sale_date": None if i % 7 == 0 else date(2020, 1, 1) + timedelta(days=i),
            "product": "Widget" if i % 2 else None,
            "run_id": "run-it",
            "source": "legacy_files",
            "source_position": f"sales.csv:{i + 2}",
            "quality_flags": ["x"] * (i % 3),
            "mapped_at": NOW + timedelta(milliseconds=i),
            "golden_id": None,
        }
        for i in range(n)
    ]


def account(i: int = 0) -> dict[str, Any]:
    return {
        "customer_id": f"C{i:07d}",
        "source_lsn": None, "deleted": False, "unchanged_fields": [],  # the change fields (defaults)
        "full_name": "Anne O'Brien",
        "first_name": "Anne",
        "last_name": "O'Brien",
        "email": "anne@example.com",
        "phone": None,
        "street": "1 Main Street",
        "city": "Springfield",
        "postal_code": "12345",
        "country": "US",
        "region": "NA",
        "birth_date": date(1980, 1, 2),
        "customer_since": None,
        "run_id": "run-it",
        "source": "legacy_files",
        "source_position": f"customers.csv:{i + 2}",
        "quality_flags": [],
        "mapped_at": NOW,
        "golden_id": None,
        "merged_golden_ids": [],
        "match_evidence": None,
        "national_id": None,
        "tax_id": None,
        "legacy_account_number": None,
        "company_registration_number": None,
    }


def with_extra_field(schema: ParsedSchema, field: dict[str, Any]) -> ParsedSchema:
    raw = json.loads(schema.schema_str)
    raw["fields"].append(field)
    return ParsedSchema.from_str(json.dumps(raw))


def without_field(schema: ParsedSchema, name: str) -> ParsedSchema:
    raw = json.loads(schema.schema_str)
    raw["fields"] = [f for f in raw["fields"] if f["name"] != name]
    return ParsedSchema.from_str(json.dumps(raw))


@pytest.fixture
def scratch_subject(registry_client: SchemaRegistryClient) -> Iterator[str]:
    """A subject no other test uses, deleted afterwards."""
    subject = f"it-{uuid.uuid4().hex[:12]}-value"
    yield subject
    with contextlib.suppress(SchemaRegistryError):  # never registered
        registry_client.delete_subject(subject)


def consume(consumer: Consumer, topic: str, count: int, timeout_s: float = 60.0) -> list[Message]:
    """Poll until ``count`` messages arrived or the deadline passed."""
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            messages.append(msg)
    finally:
        consumer.close()
    assert len(messages) == count, f"got {len(messages)} of {count} messages before the deadline"
    return messages


def consumer_conf(endpoints: Endpoints, group: str) -> dict[str, Any]:
    return {
        **endpoints.kafka.client_config(),
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }


# -------------------------------------------------------------------------------------------- registry


def test_register_all_sets_backward_and_is_idempotent(registry_client: SchemaRegistryClient) -> None:
    first = register_all(registry_client)
    again = register_all(registry_client)
    assert {r.subject for r in first} == EXPECTED_SUBJECTS
    assert len(first) == len(schema_files())
    assert [(r.subject, r.schema_id, r.version) for r in again] == [(r.subject, r.schema_id, r.version) for r in first]
    for r in first:
        assert r.compatibility == "BACKWARD"
        assert registry_client.get_compatibility(r.subject) == "BACKWARD"
        fetched = registry_client.get_schema(r.schema_id)
        assert json.loads(fetched.schema_str or "") == json.loads(load_schema(r.path or "").schema_str)
    # By name: a shared registry lists at most 1,000 subjects (Apicurio's ccompat /subjects).
    assert {registry_client.get_latest_version(s).subject for s in EXPECTED_SUBJECTS} == EXPECTED_SUBJECTS


def test_incompatible_change_is_refused_and_compatible_one_accepted(
    registry_client: SchemaRegistryClient, scratch_subject: str
) -> None:
    account_schema = load_schema("target/account")
    v1 = register_schema(registry_client, account_schema, subject=scratch_subject)
    assert (v1.version, v1.compatibility) == (1, "BACKWARD")

    required = with_extra_field(account_schema, {"name": "tier", "type": "string", "doc": "no default"})
    assert registry_client.test_compatibility(scratch_subject, required.registry_schema()) is False
    # What Apicurio's ccompat API answers: HTTP 409 with error_code 409, like Confluent's registry.
    with pytest.raises(SchemaRegistryError) as raw_err:
        registry_client.register_schema(scratch_subject, required.registry_schema())
    assert (raw_err.value.http_status_code, raw_err.value.error_code) == (409, 409)
    with pytest.raises(IncompatibleSchemaError, match=scratch_subject):
        register_schema(registry_client, required, subject=scratch_subject)
    assert registry_client.get_versions(scratch_subject) == [1]

    optional = with_extra_field(
        account_schema, {"name": "tier", "type": ["null", "string"], "default": None, "doc": "optional"}
    )
    v2 = register_schema(registry_client, optional, subject=scratch_subject)
    assert v2.version == 2 and v2.schema_id != v1.schema_id


def test_services_that_start_together_register_a_new_subject_at_once(registry_client: SchemaRegistryClient,
                                                                    endpoints: Endpoints) -> None:
    """Workers started together on a fresh registry register the same schema at the same moment: each gets
    the one id and version (Apicurio answered the losers of the subject's first rule with 409, "A rule named
    'COMPATIBILITY' already exists", which crmflow took for an incompatible schema and stopped on)."""
    schema = load_schema("dlq/dead_letter")
    clients = [endpoints.registry.client() for _ in range(8)]  # one client per service, as in separate processes
    for _ in range(10):  # the race is lost in about half the rounds without the fix
        subject = f"it-{uuid.uuid4().hex[:12]}-value"
        start = threading.Barrier(len(clients))

        def register(client: SchemaRegistryClient, subject: str = subject,
                     start: threading.Barrier = start) -> tuple[int, int | None, str]:
            start.wait()
            done = register_schema(client, schema, subject=subject)
            return done.schema_id, done.version, done.compatibility

        try:
            with ThreadPoolExecutor(len(clients)) as pool:
                results = list(pool.map(register, clients))
            assert set(results) == {(results[0][0], 1, "BACKWARD")}, results
            assert registry_client.get_versions(subject) == [1]
        finally:
            with contextlib.suppress(SchemaRegistryError):
                registry_client.delete_subject(subject)


def test_reformatted_schema_keeps_its_id(registry_client: SchemaRegistryClient, scratch_subject: str) -> None:
    schema = load_schema("target/case")
    first = register_schema(registry_client, schema, subject=scratch_subject)
    pretty = ParsedSchema.from_str(json.dumps(json.loads(schema.schema_str), indent=4))
    pretty_str = json.dumps(json.loads(schema.schema_str), indent=4)
    assert pretty.schema_str == schema.schema_str  # we always send the compact form ...
    # ... and with normalize the registry also matches a differently formatted text to the same version.
    assert (
        registry_client.register_schema(scratch_subject, Schema(pretty_str, "AVRO"), normalize_schemas=True)
        == first.schema_id
    )
    assert registry_client.get_versions(scratch_subject) == [1]


def test_decoder_fetches_older_writer_schema_from_the_registry(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, scratch_subject: str
) -> None:
    current = load_schema("target/account")
    old = AvroCodec(registry_client, scratch_subject, without_field(current, "golden_id"))
    register_schema(registry_client, current, subject=scratch_subject)  # v2 under BACKWARD
    record = account()
    del record["golden_id"]
    data = old.encode(record)
    fresh = AvroDecoder(endpoints.registry.client(), current)  # empty caches
    assert fresh.decode(data) == {**record, "golden_id": None}


def test_unknown_schema_id_on_the_real_registry(registry_client: SchemaRegistryClient) -> None:
    decoder = AvroDecoder(registry_client, load_schema("target/account"))
    with pytest.raises(UnknownSchemaIdError, match="2147483000"):
        decoder.decode(b"\x00" + (2147483000).to_bytes(4, "big") + b"\x00", origin="t[0]@0")


# ---------------------------------------------------------------------------------------------- kafka


def test_codec_records_through_kafka_decode_with_codec_and_confluent(
    endpoints: Endpoints,
    registry_client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
) -> None:
    topic = topic_factory("sales", partitions=3)
    codec = AvroCodec.for_topic(registry_client, topic, "target/sale")
    records = sales(300)
    producer = Producer(endpoints.kafka.client_config())
    for record, encoded in zip(records, codec.encode_many(records), strict=True):
        producer.produce(topic, key=record["sale_id"].encode(), value=encoded)
    assert producer.flush(30) == 0

    messages = consume(Consumer(consumer_conf(endpoints, group_factory())), topic, len(records))
    by_id = {r["sale_id"]: r for r in records}
    theirs = AvroDeserializer(registry_client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    for msg in messages:
        value = msg.value()
        assert value is not None
        expected = by_id[(msg.key() or b"").decode()]
        ours_decoded = codec.decode(value, origin=f"{topic}[{msg.partition()}]@{msg.offset()}")
        confluent_decoded = theirs(value, ctx)
        assert isinstance(confluent_decoded, dict)
        for name, want in expected.items():
            assert ours_decoded[name] == want, name
            assert confluent_decoded[name] == want, name
        assert set(ours_decoded) == set(confluent_decoded) == set(expected)


def test_confluent_serializer_bytes_decode_with_codec_and_codec_plugs_into_serializing_producer(
    endpoints: Endpoints,
    registry_client: SchemaRegistryClient,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
) -> None:
    schema = load_schema("target/account")
    theirs_topic, ours_topic = topic_factory("acc-confluent"), topic_factory("acc-crmflow")
    records = [account(i) for i in range(50)]

    theirs_producer = SerializingProducer(
        {
            **endpoints.kafka.client_config(),
            "value.serializer": AvroSerializer(registry_client, schema.schema_str),
        }
    )
    codec = AvroCodec.for_topic(registry_client, ours_topic, schema)
    ours_producer = SerializingProducer(
        {
            **endpoints.kafka.client_config(),
            "value.serializer": codec.serialize,
        }
    )
    for record in records:
        theirs_producer.produce(theirs_topic, value=record)
        ours_producer.produce(ours_topic, value=record)
    assert theirs_producer.flush(30) == 0 and ours_producer.flush(30) == 0

    # confluent-written bytes, decoded by our codec (same schema text -> same id in the registry).
    for msg, want in zip(
        consume(Consumer(consumer_conf(endpoints, group_factory())), theirs_topic, 50), records, strict=True
    ):
        value = msg.value()
        assert value is not None and value[:5] == codec.header
        assert codec.decode(value) == want

    # codec-written bytes, read by a DeserializingConsumer using confluent's deserializer.
    conf = consumer_conf(endpoints, group_factory())
    conf["value.deserializer"] = AvroDeserializer(registry_client)
    for msg, want in zip(consume(DeserializingConsumer(conf), ours_topic, 50), records, strict=True):
        decoded: Any = msg.value()
        assert decoded == want
