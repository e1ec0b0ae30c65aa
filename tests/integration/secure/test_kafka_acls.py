"""Kafka on the secure stack: SASL_SSL only, and each stage principal limited to its ACLs."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from crmflow.stack.acls import pipeline_acls
from crmflow.stack.secure import SecureStack

pytestmark = pytest.mark.secure  # not `integration`: it needs the secure stack, `make test-secure`


def _create(stack: SecureStack, *topics: str) -> None:
    admin = AdminClient(stack.kafka_config())
    for fut in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
        fut.result(timeout=30)


def _produce(stack: SecureStack, principal: Any, topic: str, **extra: Any) -> KafkaError | None:
    """Produce one message as ``principal``; the delivery error (None when it was written)."""
    errors: list[KafkaError | None] = []
    p = Producer(stack.kafka_config(principal, **{"message.timeout.ms": 15000, "log_level": 0, **extra}))
    p.produce(topic, b"v", key=b"k", on_delivery=lambda err, _msg: errors.append(err))
    p.flush(20)
    assert errors, f"no delivery report for {topic}"
    return errors[0]


def _consume(stack: SecureStack, principal: Any, topic: str, group: str) -> KafkaError | bytes:
    """Read the first message of ``topic`` as ``principal`` in ``group``: its value, or the error."""
    c = Consumer(stack.kafka_config(principal, **{"group.id": group, "auto.offset.reset": "earliest",
                                                  "log_level": 0}))
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                err: KafkaError = msg.error()
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                return err
            value: bytes = msg.value()
            return value
        raise AssertionError(f"nothing read from {topic} in 25s")
    finally:
        c.close()


def _denied(err: object) -> bool:
    return isinstance(err, KafkaError) and err.code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)


def test_plaintext_client_is_refused(secure_stack: SecureStack) -> None:
    admin = AdminClient({"bootstrap.servers": secure_stack.endpoints().bootstrap_servers, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)


def test_wrong_password_is_refused_with_a_clear_error(secure_stack: SecureStack) -> None:
    seen: list[KafkaError] = []
    conf = secure_stack.kafka_config("sink", **{"sasl.password": "not-the-password-4711", "log_level": 0,
                                                "error_cb": seen.append})
    producer = Producer(conf)
    deadline = time.monotonic() + 15
    while not seen and time.monotonic() < deadline:
        producer.poll(0.5)
    assert seen and seen[0].code() == KafkaError._AUTHENTICATION, [e.str() for e in seen]
    text = seen[0].str()
    assert "Authentication failed" in text and "SCRAM-SHA-512" in text, text
    assert "not-the-password-4711" not in text


def test_a_client_without_certificate_is_refused(secure_stack: SecureStack) -> None:
    conf = {k: v for k, v in secure_stack.kafka_config("ops", log_level=0).items()
            if k not in ("ssl.certificate.location", "ssl.key.location")}
    with pytest.raises(KafkaException):
        AdminClient(conf).list_topics(timeout=4)


def test_each_stage_may_do_what_it_needs(secure_stack: SecureStack, topic_prefix: str) -> None:
    p = topic_prefix
    raw, mapped, dlq, cdc = f"{p}.raw.customers", f"{p}.mapped.account", f"{p}.dlq", f"{p}.cdc.legacy.t"
    # snapshot and cdc create their own topics, as their ensure_topics does
    for principal, topic in (("snapshot", raw), ("cdc", cdc), ("snapshot", dlq)):
        admin = AdminClient(secure_stack.kafka_config(principal))
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    assert _produce(secure_stack, "snapshot", raw, **{"enable.idempotence": True}) is None
    assert _produce(secure_stack, "cdc", cdc, **{"enable.idempotence": True}) is None
    assert _produce(secure_stack, "cdc", dlq) is None
    # process: reads raw in its group, writes mapped in a transaction under its transactional id
    assert _consume(secure_stack, "process", raw, f"crmflow-process-{p}") == b"v"
    ops_admin = AdminClient(secure_stack.kafka_config("ops"))
    ops_admin.create_topics([NewTopic(mapped, 1, 1)])[mapped].result(timeout=30)
    tx = Producer(secure_stack.kafka_config("process", **{"transactional.id": f"crmflow-process-{p}-w1",
                                                         "log_level": 0}))
    tx.init_transactions(30)
    tx.begin_transaction()
    tx.produce(mapped, b"v", key=b"k")
    tx.commit_transaction(30)
    internal = f"{p}.dedupe.account"
    admin = AdminClient(secure_stack.kafka_config("process"))
    for fut in admin.create_topics([NewTopic(internal, 1, 1), NewTopic(f"{internal}.state", 1, 1)]).values():
        fut.result(timeout=30)
    # sink: reads mapped (read_committed) in its group, writes the DLQ
    assert _consume(secure_stack, "sink", mapped, f"crmflow-sink.run{p}") == b"v"
    assert _produce(secure_stack, "sink", dlq) is None
    # ops: reads the DLQ and the other groups' committed offsets
    assert _consume(secure_stack, "ops", dlq, "crmflow-dlq-reader") == b"v"
    ops = Consumer(secure_stack.kafka_config("ops", **{"group.id": f"crmflow-process-{p}", "log_level": 0}))
    committed = ops.committed([TopicPartition(raw, 0)], timeout=20)
    ops.close()
    assert committed[0].error is None


def test_each_stage_is_refused_what_it_does_not_need(secure_stack: SecureStack, topic_prefix: str) -> None:
    p = topic_prefix
    raw, mapped, dlq, cdc = f"{p}.raw.customers", f"{p}.mapped.account", f"{p}.dlq", f"{p}.cdc.legacy.t"
    _create(secure_stack, raw, mapped, dlq, cdc)
    assert _produce(secure_stack, "snapshot", raw) is None
    assert _produce(secure_stack, "process", mapped) is None
    # the sink cannot write raw or change topics, nor read legacy-facing topics
    assert _denied(_produce(secure_stack, "sink", raw))
    assert _denied(_produce(secure_stack, "sink", cdc))
    assert _denied(_consume(secure_stack, "sink", raw, f"crmflow-sink.run{p}"))
    # the sink in someone else's group, the process outside its own
    assert _denied(_consume(secure_stack, "sink", mapped, f"crmflow-process-{p}"))
    assert _denied(_consume(secure_stack, "process", raw, f"other-{p}"))
    # snapshot writes raw only: not mapped, not change topics, not read anything
    assert _denied(_produce(secure_stack, "snapshot", mapped))
    assert _denied(_produce(secure_stack, "cdc", raw))
    assert _denied(_consume(secure_stack, "snapshot", raw, f"crmflow-process-{p}"))
    # the processor cannot write raw topics, nor use another stage's transactional id
    assert _denied(_produce(secure_stack, "process", raw))
    tx = Producer(secure_stack.kafka_config("process", **{"transactional.id": f"crmflow-sink.run{p}-w1",
                                                         "log_level": 0}))
    with pytest.raises(KafkaException) as info:
        tx.init_transactions(20)
    assert _denied(info.value.args[0])
    # a prefix nobody was granted: even the ops principal cannot create or write there
    other = f"nogrant-{uuid.uuid4().hex[:8]}.raw.customers"
    ops_admin = AdminClient(secure_stack.kafka_config("ops"))
    fut = ops_admin.create_topics([NewTopic(other, 1, 1)])[other]
    with pytest.raises(KafkaException) as info:
        fut.result(timeout=30)
    assert _denied(info.value.args[0])


def test_the_acl_list_is_what_the_broker_holds(secure_stack: SecureStack, topic_prefix: str) -> None:
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    admin = AdminClient(secure_stack.kafka_config())
    flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                           AclPermissionType.ANY)
    held = admin.describe_acls(flt, request_timeout=30).result()
    kind = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactional-id"}
    mine = {(b.principal, kind[b.restype.name], b.resource_pattern_type.name.lower(), b.name,
             b.operation.name.lower().replace("_", "-")) for b in held if topic_prefix in b.name}
    wanted = {(f"User:crmflow_{a.principal}", a.resource, a.pattern, a.name, a.operation)
              for a in pipeline_acls(topic_prefix) if topic_prefix in a.name}
    assert mine == wanted


def test_a_stage_whose_principal_lacks_its_acls_stops_with_a_message_naming_it(
    secure_stack: SecureStack, topic_prefix: str
) -> None:
    """A refusal only a person can fix (here: the processor run as the snapshot principal, which may not use a
    transactional id) stops the runtime at once with a ConfigError naming the principal and the fix, instead of
    retrying for ever; the sink's drain asks a topic it cannot see by name and stops the same way."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from crmflow.dlq import DeadLetterWriter
    from crmflow.exceptions import ConfigError
    from crmflow.runtime import RuntimeOptions, TransactionalRuntime
    from crmflow.serialization import AvroCodec, topic_subject
    from sinks.params import SinkParams
    from sinks.runner import _existing
    from tests.integration.core.test_runtime import SCHEMA, Counter

    ep = secure_stack.endpoints()
    source, out, dlq = f"{topic_prefix}.raw.t", f"{topic_prefix}.mapped.account", f"{topic_prefix}.dlq"
    _create(secure_stack, source, out, dlq)
    registry: SchemaRegistryClient = ep.registry.client()
    codec = AvroCodec(registry, topic_subject(source), SCHEMA)
    snapshot = ep.kafka.for_stage("snapshot")
    opts = RuntimeOptions(kafka=snapshot, group_id=f"crmflow-process-{topic_prefix}",
                          transactional_id=f"crmflow-process-{topic_prefix}-a", dlq_topic=dlq)  # fmt: skip
    runtime = TransactionalRuntime(Counter(source, out, codec), opts, DeadLetterWriter(None, registry, dlq))
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        runtime.run(drain=True)
    assert time.monotonic() - started < 60  # no retry loop
    message = str(refused.value)
    assert "denied principal crmflow_snapshot" in message and "Least-privilege roles" in message, message
    assert not [pw for pw in secure_stack.secrets.kafka.values() if pw in message]

    # the sink given the snapshot's credentials (as CRMFLOW_SINK_KAFKA_SASL_* set to the wrong user would)
    wrong = snapshot.model_copy(update={"stage_credentials": ()})
    params = SinkParams(kafka=wrong, registry=ep.registry, target_dsn=ep.target, topics={"account": out},
                        dlq_topic=dlq, group_id=f"crmflow-sink-{topic_prefix}")  # fmt: skip
    with pytest.raises(ConfigError, match="denied principal crmflow_snapshot"):
        _existing(params, [out])
