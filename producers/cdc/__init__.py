"""Change data capture from the legacy PostgreSQL database: logical replication (``pgoutput``) into Kafka.

- :mod:`producers.cdc.pgoutput` decodes the replication messages (pure functions);
- :mod:`producers.cdc.events` maps a table's columns to Avro and rows to Debezium-style envelopes;
- :mod:`producers.cdc.tables` keeps the captured tables' schemas up to date with DDL (or stops a table);
- :mod:`producers.cdc.snapshot` re-snapshots a table on a signal, or finishes an interrupted load, in watermark chunks;
- :mod:`producers.cdc.positions` decides which LSN may be confirmed to PostgreSQL (only what Kafka acknowledged);
- :mod:`producers.cdc.stream` runs the replication connection, the Kafka producer and the feedback.
"""
