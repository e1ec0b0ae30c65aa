"""Every Prometheus metric crmflow exports, declared once.

Naming: ``crmflow_<what>_<unit>``. Labels are low-cardinality only: stage (snapshot, process, sink),
entity (account, contact, sale, case), outcome, reason (a rule name), decision (a dedupe decision), topic,
partition; for CDC, table (a captured schema.table of the config), op (c, u, d, r, tombstone) and slot. Never ids
or PII.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Final, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

log = logging.getLogger(__name__)

Stage = Literal["snapshot", "cdc", "process", "dedupe", "sink", "replay"]
Outcome = Literal["in", "out", "rejected", "filtered", "merged", "parked", "forgotten"]

RECORDS = Counter(
    "crmflow_records_total",
    "Records seen by a stage, by outcome: in (read), out (written downstream), rejected (dead-lettered), "
    "filtered (segment filter), merged (deduplicated), parked (waiting for a parent), forgotten (a record deleted "
    "at the source, dropped from the deduper's state).",
    ["stage", "entity", "outcome"],
)
DLQ_RECORDS = Counter(
    "crmflow_dlq_records_total", "Records sent to the dead-letter topic, by stage and rule.", ["stage", "reason"]
)
DLQ_UNREADABLE = Counter(
    "crmflow_dlq_unreadable_total",
    "Messages in a dead-letter topic that are not dead letters (not Avro, an unknown schema id, truncated): "
    "passed over by its readers (the ledger, the run's reconciliation, replay), by topic.",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "crmflow_consumer_lag_messages",
    "Messages between the consumer's position and the partition's high watermark.",
    ["stage", "topic", "partition"],
)
BATCH_SIZE = Histogram(
    "crmflow_batch_size_records",
    "Records per batch at a stage boundary.",
    ["stage"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_DURATION = Histogram(
    "crmflow_batch_duration_seconds",
    "Time to process and durably hand off one batch.",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAST_SUCCESS = Gauge(
    "crmflow_last_success_timestamp_seconds",
    "Unix time of the last batch a stage completed (offsets committed or records acknowledged).",
    ["stage"],
)
DEDUPE_DECISIONS = Counter(
    "crmflow_dedupe_decisions_total",
    "Deduplication decisions: founded (a new golden record), joined (matched an existing one), updated (a "
    "record seen before), cluster_merge (two golden records became one), vetoed and refused (near-merges "
    "not made), closed_block (a block key too common to compare under).",
    ["entity", "decision"],
)
REREADS = Counter(
    "crmflow_consumer_rereads_total",
    "Events the processor's consumer guard kept from being committed unprocessed, by reason: skipped (faust "
    "acked an event it never delivered), hole (faust skipped offsets; the partition was rewound), duplicate "
    "(an event delivered again was dropped). Non-zero around restarts and rebalances.",
    ["stage", "reason"],
)
PARKED = Gauge(
    "crmflow_parked_records", "Child records waiting in the sink for their parent record.", ["entity"]
)

DEPENDENCY_UP = Gauge(
    "crmflow_dependency_up",
    "1 when the last probe of a dependency (kafka, schema_registry, postgresql) answered, else 0.",
    ["dependency"],
)


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Expose /metrics on ``port`` (0 disables). Called once per service process by the CLI."""
    if port:
        start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104 - scraped by Prometheus
        log.info("metrics on :%d/metrics", port)


#: A directory where every crmflow process writes its last metrics page when it exits (audits, tests).
METRICS_DIR_ENV: Final = "CRMFLOW_METRICS_DIR"


def dump_on_exit(name: str, registry: CollectorRegistry = REGISTRY) -> None:
    """With ``$CRMFLOW_METRICS_DIR`` set, write what ``/metrics`` would show to ``<dir>/<name>-<pid>.prom``
    when this process exits normally (a SIGTERM'd service too: it returns from its loop). Called by the CLI."""
    folder = os.environ.get(METRICS_DIR_ENV, "").strip()
    if not folder:
        return
    path = Path(folder) / f"{name}-{os.getpid()}.prom"

    def write() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(generate_latest(registry))
        except OSError as exc:
            log.warning("could not write the metrics page to %s (%s)", path, exc.__class__.__name__)

    atexit.register(write)

TRANSACTIONS = Counter(
    "crmflow_transactions_total",
    "Kafka transactions of a stage's batches (outputs, state and input offsets together), by outcome: "
    "committed or aborted (the batch is read and processed again).",
    ["stage", "outcome"],
)
RETRIES = Counter(
    "crmflow_retries_total",
    "Batches a stage rewound and retried with backoff because a dependency was unavailable, by stage and "
    "operation (setup, decode: the schema registry; process: the target; transaction: Kafka).",
    ["stage", "operation"],
)
STATE_RESTORES = Counter(
    "crmflow_state_restores_total",
    "Partitions whose stage state was rebuilt from its changelog (assignment, or after an aborted batch).",
    ["stage"],
)

CDC_EVENTS = Counter(
    "crmflow_cdc_events_total",
    "Change events the CDC producer sent to Kafka, by captured table (schema.table) and op: c, u, d, r, and "
    "tombstone (the null value after each delete), dead_letter (a change of a table stopped by an incompatible "
    "schema change, sent to the dead-letter topic).",
    ["table", "op"],
)
CDC_REPLICATION_LAG_BYTES = Gauge(
    "crmflow_cdc_replication_lag_bytes",
    "WAL bytes between the legacy database's current position and the slot's confirmed (Kafka-acknowledged) one.",
    ["slot"],
)
CDC_RETAINED_WAL_BYTES = Gauge(
    "crmflow_cdc_retained_wal_bytes",
    "WAL bytes the legacy database keeps for the slot (current position minus the slot's restart_lsn).",
    ["slot"],
)
CDC_LAST_ACKED_LSN = Gauge(
    "crmflow_cdc_last_acked_lsn", "The last LSN confirmed to PostgreSQL (every event before it is in Kafka).", ["slot"]
)
CDC_REPLICATION_LAG_SECONDS = Gauge(
    "crmflow_cdc_replication_lag_seconds",
    "Seconds between now and the commit time of the oldest legacy transaction the CDC producer received but Kafka "
    "has not acknowledged yet (0 when every received transaction is confirmed).",
    ["slot"],
)
CDC_END_TO_END_LATENCY = Histogram(
    "crmflow_cdc_end_to_end_latency_seconds",
    "Seconds from a legacy transaction's commit to the commit of the target transaction that wrote its change, "
    "per change record (op c, u, d; never snapshot or file records), observed by the sink, by entity. Wall clocks "
    "of the legacy database and the sink: keep them in sync (NTP). A child parked until its parent arrives is "
    "not observed.",
    ["entity"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15,
             20, 30, 45, 60),
)
CDC_RECONNECTS = Counter(
    "crmflow_cdc_reconnects_total",
    "Times the CDC producer lost the legacy database (restart, dropped connection) and reconnected to its slot.",
    ["slot"],
)
CDC_SNAPSHOT_CHUNKS_DEFERRED = Counter(
    "crmflow_cdc_snapshot_chunks_deferred_total",
    "Snapshot chunks read again later because a transaction already decoded was not yet visible to their select "
    "(committed in the WAL, still waiting for its flush or a synchronous standby).",
    ["table"],
)
CDC_TABLES_STOPPED = Gauge(
    "crmflow_cdc_tables_stopped",
    "Captured tables whose changes go to the dead-letter topic after an incompatible schema change.",
    ["slot"],
)
