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
