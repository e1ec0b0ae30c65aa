"""The sink stage's metrics (declared in :mod:`crmflow.metrics`): records, batches, lag, parked records.

Labels are stage, entity, outcome, topic and partition only — never ids or values.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

from confluent_kafka import Consumer

from crmflow.metrics import BATCH_DURATION, BATCH_SIZE, LAST_SUCCESS, PARKED, RECORDS
from crmflow.runtime.consumer import forget_lag
from crmflow.runtime.consumer import update_lag as consumer_lag
from sinks.base import FlushOutcome, TopicPartitionKey

logger = logging.getLogger(__name__)

STAGE = "sink"


def records_in(counts: Mapping[str, int]) -> None:
    """Count records read, per entity (once per poll, not per record: labels() is not free)."""
    for entity, n in counts.items():
        RECORDS.labels(stage=STAGE, entity=entity, outcome="in").inc(n)


def record_rejected(entity: str, n: int = 1) -> None:
    RECORDS.labels(stage=STAGE, entity=entity, outcome="rejected").inc(n)


def flushed(outcome: FlushOutcome) -> None:
    """Count a successful flush: records out/rejected/parked per entity, batch size and duration."""
    if outcome.batch:
        total = Counter(r.entity for r in outcome.batch)
        bad = Counter(r.entity for r, _ in outcome.rejected())
        held = Counter(r.entity for r in outcome.parked())
        for entity, n in total.items():
            RECORDS.labels(stage=STAGE, entity=entity, outcome="out").inc(n - bad[entity] - held[entity])
            if bad[entity]:
                record_rejected(entity, bad[entity])
            if held[entity]:
                RECORDS.labels(stage=STAGE, entity=entity, outcome="parked").inc(held[entity])
        BATCH_SIZE.labels(stage=STAGE).observe(len(outcome.batch))
        BATCH_DURATION.labels(stage=STAGE).observe(outcome.duration_s)
    if outcome.batch or outcome.offsets:
        LAST_SUCCESS.labels(stage=STAGE).set_to_current_time()


def parked(counts: Mapping[str, int]) -> None:
    for entity, n in counts.items():
        PARKED.labels(entity=entity).set(n)


def update_lag(consumer: Consumer, assigned: Iterable[TopicPartitionKey]) -> None:
    """Lag per assigned partition (the runtime's gauge, labelled with the sink's stage)."""
    consumer_lag(consumer, STAGE, assigned)


def forget_partition(tp: TopicPartitionKey) -> None:
    """Stop reporting lag of a partition this consumer no longer owns."""
    forget_lag(STAGE, tp[0], tp[1])
