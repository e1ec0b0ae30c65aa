"""Topic names, derived from the config's topic prefix. One place, so every stage agrees."""

from __future__ import annotations


def raw_topic(prefix: str, source: str) -> str:
    """Raw legacy records of one source, as captured (LegacyRecord envelopes)."""
    return f"{prefix}.raw.{source}"


def mapped_topic(prefix: str, entity: str) -> str:
    """Cleansed, mapped target entities of one kind (account, contact, sale, case)."""
    return f"{prefix}.mapped.{entity}"


def dedupe_topic(prefix: str, entity: str) -> str:
    """Clean records of one entity on their way into deduplication, keyed by shard key (internal)."""
    return f"{prefix}.dedupe.{entity}"


def dlq_topic(prefix: str) -> str:
    """Dead letters of every stage, with their reason; replayable."""
    return f"{prefix}.dlq"


def cdc_topic(prefix: str, table: str) -> str:
    """Change events of one captured legacy table (``schema.table``), Debezium-style envelopes keyed by its PK."""
    return f"{prefix}.cdc.{table}"


#: Kafka header of a mapped record that comes from a change (op c, u, d) of the legacy database: the source
#: transaction's commit time, Unix milliseconds as ASCII digits. The processor sets it; the sink observes
#: ``crmflow_cdc_end_to_end_latency_seconds`` from it. Snapshot, re-snapshot and file records never carry it.
#: A header rather than a field of the mapped contract: no schema version, nothing stored in the target, and a
#: consumer that does not know it is unaffected.
SOURCE_COMMIT_HEADER = "crmflow-source-commit-ms"
