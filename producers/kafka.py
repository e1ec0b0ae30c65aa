"""The Kafka side of the producers: the tuned producer settings and creating missing topics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException

from crmflow.connections import KafkaConnection, as_kafka
from crmflow.runtime.changelog import ensure_topics as create_missing
from producers.exceptions import KafkaUnavailableError

log = logging.getLogger(__name__)

# Measured on the local stack (tests/integration/producers/bench_snapshot.py): lz4 batches of up to 1 MiB
# lingering 25 ms keep the broker busy without a flush per message; idempotence keeps per-partition order
# with 5 requests in flight.
DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "max.in.flight.requests.per.connection": 5,
    "linger.ms": 25,
    "batch.size": 1024 * 1024,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 256 * 1024,
    "delivery.timeout.ms": 120_000,
}


def ensure_topics(
    kafka: KafkaConnection | str, topics: Sequence[str], partitions: int, replication_factor: int = -1,
    timeout_s: float = 30,
) -> None:
    """Create the topics that do not exist yet, with ``partitions`` and ``replication_factor`` (-1: the
    broker's default).

    An existing topic is left as it is (whatever its partition count).
    """
    try:
        create_missing(kafka, dict.fromkeys(topics, partitions), replication_factor, timeout_s=timeout_s)
    except KafkaException as exc:
        refusal = as_kafka(kafka).explain(exc.args[0] if exc.args else exc)
        if refusal is not None:
            raise refusal from None
        where = as_kafka(kafka).bootstrap_servers
        raise KafkaUnavailableError(f"cannot list or create topics at {where}: {exc}") from exc
