"""The sink stage's metrics (declared in :mod:`crmflow.metrics`): records, batches, lag, parked records, and the
end-to-end latency of changes captured from the legacy database.

Labels are stage, entity, outcome, topic and partition only — never ids or values.

:func:`changes_landed` observes ``crmflow_cdc_end_to_end_latency_seconds`` right after the target transaction of a
batch committed: for every record carrying :data:`~crmflow.topics.SOURCE_COMMIT_HEADER` (a change, op c/u/d) that
the target wrote (not refused, not parked), target commit wall time − source commit time. With
``$CRMFLOW_SINK_COMMIT_LOG`` set (``crmflow bench --cdc`` sets it), it also appends one JSON line per such batch
to that file, ``{"t": commit time, "r": [[entity, id, source_lsn, source commit ms, state, parent id, deleted], ...]}``
(state ``w`` written, ``p`` parked, ``x`` refused), so a benchmark computes each change's latency exactly. Ids
are in that file: it is a benchmark's, on demo data, never on by default; without it nothing per record is
written anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Final

from confluent_kafka import Consumer

from crmflow.entities import ENTITY_NAMES, id_field
from crmflow.metrics import BATCH_DURATION, BATCH_SIZE, CDC_END_TO_END_LATENCY, LAST_SUCCESS, PARKED, RECORDS
from crmflow.runtime import InRecord
from crmflow.runtime.consumer import forget_lag
from crmflow.runtime.consumer import update_lag as consumer_lag
from crmflow.topics import SOURCE_COMMIT_HEADER
from sinks.base import FlushOutcome, SinkRecord, TopicPartitionKey

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


#: A file the sink appends each change batch's commit time and records to (benchmarks only; see the module doc).
COMMIT_LOG_ENV: Final = "CRMFLOW_SINK_COMMIT_LOG"
_commit_log: IO[str] | None = None


def _source_commit_ms(record: InRecord) -> int | None:
    for name, value in record.headers or ():
        if name == SOURCE_COMMIT_HEADER and value:
            return int(value)
    return None


def changes_landed(batch: Sequence[InRecord], outcome: FlushOutcome) -> None:
    """Call right after the target committed ``outcome`` (the flush of ``batch``): observe the end-to-end latency
    of its change records, and log them when a benchmark asked for it (see the module doc)."""
    global _commit_log
    now = time.time()
    sent = {(r.topic, r.partition, r.offset): ms for r in batch if r.headers and (ms := _source_commit_ms(r))}
    if not sent:
        return
    held = set(outcome.result.parked)
    refused = {r.index for r in outcome.result.rejects}
    changes: list[tuple[int, SinkRecord, int]] = []  # (index in the flushed batch, record, source commit ms)
    by_entity: dict[str, list[float]] = {}
    for i, rec in enumerate(outcome.batch):
        ms = sent.get((rec.topic, rec.partition, rec.offset))
        if ms is None:
            continue
        changes.append((i, rec, ms))
        if i not in held and i not in refused:
            by_entity.setdefault(rec.entity, []).append(now - ms / 1000)
    for entity, latencies in by_entity.items():
        child = CDC_END_TO_END_LATENCY.labels(entity=entity)
        for seconds in latencies:
            child.observe(max(seconds, 0.0))  # clocks a millisecond apart must not make a negative latency
    path = os.environ.get(COMMIT_LOG_ENV)
    if not path:
        return
    if _commit_log is None:
        _commit_log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the process's life
    rows: list[list[Any]] = []
    for i, rec, ms in changes:
        state = "p" if i in held else "x" if i in refused else "w"
        key = id_field(rec.entity) if rec.entity in ENTITY_NAMES else None
        rows.append([rec.entity, str(rec.value.get(key)) if key else None, rec.value.get("source_lsn"), ms, state,
                     rec.value.get("customer_id") if state == "p" else None, bool(rec.value.get("deleted"))])
    _commit_log.write(json.dumps({"t": round(now, 6), "r": rows}) + "\n")
    _commit_log.flush()


def parked(counts: Mapping[str, int]) -> None:
    for entity, n in counts.items():
        PARKED.labels(entity=entity).set(n)


def update_lag(consumer: Consumer, assigned: Iterable[TopicPartitionKey]) -> None:
    """Lag per assigned partition (the runtime's gauge, labelled with the sink's stage)."""
    consumer_lag(consumer, STAGE, assigned)


def forget_partition(tp: TopicPartitionKey) -> None:
    """Stop reporting lag of a partition this consumer no longer owns."""
    forget_lag(STAGE, tp[0], tp[1])
