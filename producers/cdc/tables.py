"""The captured tables while the stream runs: their schemas, codecs and topics, and what happens when DDL changes them.

pgoutput sends a Relation message before the first change of a table in a session and again after any DDL that
changed it. :meth:`CapturedTables.on_relation` compares it with the table's current columns:

- unchanged: nothing to do;
- ADD COLUMN, DROP COLUMN, a widened type (integer → bigint is Avro ``int`` → ``long``; varchar(n) → text stays
  ``string``): a new envelope schema is registered under ``<topic>-value``, whose compatibility is BACKWARD (set by
  crmflow), and the stream goes on with it. No restart;
- a change the registry refuses (integer → text, a dropped key column...): that table alone is *stopped*. A clear
  error is logged once, ``crmflow_cdc_tables_stopped`` counts it, and each of its later changes goes to the
  dead-letter topic (rule ``schema_incompatible``, payload the change's columns as text, encrypted), acknowledged
  before its LSN is confirmed like any event: nothing is lost, and the other tables keep flowing;
- a table that is in the publication but not in ``cdc.tables`` (added with ``ALTER PUBLICATION ... ADD TABLE``): it
  is captured from that change on, with its own topic and subject. Its older rows need a load (a re-snapshot).

The columns come from the Relation message (names, type oids and modifiers), their type names and enum labels from
the catalog by oid, and the key from the table's primary key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from crmflow import metrics
from crmflow.configbase import KafkaConfig
from crmflow.connections import KafkaConnection
from crmflow.dlq import DeadLetterWriter, Letter
from crmflow.exceptions import TerminalError
from crmflow.serialization import AvroCodec, ParsedSchema
from crmflow.topics import cdc_topic, dlq_topic
from producers.cdc import pgoutput as pg
from producers.cdc.events import ColumnInfo, TableEvents, TableInfo, load_table
from producers.kafka import ensure_topics

__all__ = ["Captured", "CapturedTables"]

log = logging.getLogger(__name__)

SCHEMA_RULE = "schema_incompatible"

_TYPE_SQL = """
select format_type(t.oid, %s), t.typtype::text,
       coalesce((select array_agg(e.enumlabel::text order by e.enumsortorder) from pg_enum e
                 where e.enumtypid = t.oid), '{}')
from pg_type t where t.oid = %s
"""


@dataclass
class Captured:
    """One captured table now: its events (schema), topic, codecs, and why it is stopped (None: flowing)."""

    events: TableEvents
    topic: str
    key_codec: AvroCodec | None = None
    value_codec: AvroCodec | None = None
    stopped: str | None = None
    columns: tuple[str, ...] = ()  # the column names of the last Relation message: the layout of its tuples

    @property
    def name(self) -> str:
        return self.events.table.qualified


def _signature(columns: Sequence[ColumnInfo] | Sequence[pg.Column]) -> list[tuple[str, int, int]]:
    return [(c.name, c.type_oid, c.type_modifier) for c in columns]


class CapturedTables:
    """Every captured table by ``schema.table``; registers their schemas and routes a stopped table's changes
    to the dead-letter topic. ``catalog`` returns the current catalog connection (it changes after a reconnect)."""

    def __init__(self, *, registry_client: SchemaRegistryClient, kafka: KafkaConfig, connection: KafkaConnection | str,
                 database: str, slot: str, producer: Producer, catalog: Callable[[], psycopg.Connection[Any]],
                 capture_new: bool = True) -> None:  # fmt: skip
        self.registry, self.kafka, self.bootstrap = registry_client, kafka, connection
        self.database, self.slot, self.producer, self.catalog = database, slot, producer, catalog
        self.capture_new = capture_new
        self.by_name: dict[str, Captured] = {}
        self._dlq: DeadLetterWriter | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def __getitem__(self, name: str) -> Captured:
        return self.by_name[name]

    def events(self) -> dict[str, TableEvents]:
        return {name: cap.events for name, cap in self.by_name.items() if cap.stopped is None}

    # ------------------------------------------------------------------------------------------- schemas

    def add(self, info: TableInfo) -> Captured:
        """Capture ``info``: create its topic and register its key and envelope schemas (BACKWARD)."""
        cap = Captured(TableEvents(info, database=self.database), cdc_topic(self.kafka.topic_prefix, info.qualified))
        ensure_topics(self.bootstrap, [cap.topic], self.kafka.partitions, self.kafka.replication_factor)
        self.by_name[info.qualified] = cap
        self._register(cap, cap.events)
        return cap

    def _register(self, cap: Captured, events: TableEvents) -> bool:
        """Register ``events``' schemas for ``cap``; on a refusal, stop the table (False)."""
        subjects = (f"{cap.topic}-key", f"{cap.topic}-value")
        try:
            codecs = []
            for subject, schema in zip(subjects, (events.key_schema, events.value_schema), strict=True):
                self.registry.set_compatibility(subject, "BACKWARD")
                codecs.append(AvroCodec(self.registry, subject, ParsedSchema.from_str(json.dumps(schema))))
        except (TerminalError, SchemaRegistryError) as exc:
            self.stop(cap, f"the registry refused its new schema under {subjects[1]} (compatibility BACKWARD): {exc}")
            return False
        cap.events, cap.key_codec, cap.value_codec = events, codecs[0], codecs[1]
        return True

    def _column(self, conn: psycopg.Connection[Any], col: pg.Column, known: dict[str, ColumnInfo]) -> ColumnInfo:
        old = known.get(col.name)
        if old is not None and (old.type_oid, old.type_modifier) == (col.type_oid, col.type_modifier):
            return old
        row = conn.execute(_TYPE_SQL, (col.type_modifier, col.type_oid)).fetchone()
        if row is None:
            raise TerminalError(f"column {col.name}: type oid {col.type_oid} is not in the catalog")
        return ColumnInfo(col.name, col.type_oid, row[0], col.type_modifier, row[1], tuple(row[2]))

    def on_relation(self, rel: pg.Relation) -> Captured | None:
        """The table a Relation message describes, its schema brought up to date (see the module doc);
        None when the table is not captured."""
        name = f"{rel.namespace or 'pg_catalog'}.{rel.name}"
        cap = self._on_relation(name, rel)
        if cap is not None:
            cap.columns = tuple(c.name for c in rel.columns)
        return cap

    def _on_relation(self, name: str, rel: pg.Relation) -> Captured | None:
        cap = self.by_name.get(name)
        if cap is None:
            if not self.capture_new:
                return None
            info = load_table(self.catalog(), name)  # its key; the columns come from the message below
            cap = self.add(replace(info, columns=tuple(self._column(self.catalog(), c, {}) for c in rel.columns)))
            log.warning("cdc slot %s: table %s joined the publication; capturing its changes from here into %s "
                        "(its older rows need a re-snapshot)", self.slot, name, cap.topic)  # fmt: skip
            return cap
        current = cap.events.table
        if cap.stopped is not None or _signature(current.columns) == _signature(rel.columns):
            return cap
        names = [c.name for c in rel.columns]
        lost = [k for k in current.key if k not in names]
        if lost:
            self.stop(cap, f"its key column(s) {', '.join(lost)} were dropped or renamed")
            return cap
        known = {c.name: c for c in current.columns}
        info = replace(current, columns=tuple(self._column(self.catalog(), c, known) for c in rel.columns))
        before = {c.name: c.type_name for c in current.columns}
        after = {c.name: c.type_name for c in info.columns}
        change = ", ".join(
            [f"+{n} {t}" for n, t in after.items() if n not in before]
            + [f"-{n}" for n in before if n not in after]
            + [f"{n} {before[n]} -> {t}" for n, t in after.items() if n in before and before[n] != t]
        )
        if self._register(cap, TableEvents(info, database=self.database)):
            log.warning("cdc slot %s: table %s changed (%s); new schema version under %s-value, streaming on",
                        self.slot, name, change or "column types", cap.topic)  # fmt: skip
        return cap

    # ---------------------------------------------------------------------------------------- stopped tables

    def stop(self, cap: Captured, reason: str) -> None:
        cap.stopped = reason
        metrics.CDC_TABLES_STOPPED.labels(self.slot).set(sum(1 for c in self.by_name.values() if c.stopped))
        log.error("cdc slot %s: table %s STOPPED: %s. Its changes now go to the dead-letter topic %s (rule %s); the "
                  "other tables keep flowing. To resume it: make the change compatible (or give the table a new "
                  "topic), restart crmflow cdc, re-snapshot the table and replay its dead letters",
                  self.slot, cap.name, reason, dlq_topic(self.kafka.topic_prefix), SCHEMA_RULE)  # fmt: skip

    def dead_letter(self, cap: Captured, op: str, values: Sequence[pg.TupleValue], *, lsn: int, xid: int,
                    on_delivery: Callable[[Any, Any], None]) -> None:  # fmt: skip
        """Send one change of a stopped table to the dead-letter topic: its op, key and columns as text (the new
        row; the old one for a delete)."""
        if self._dlq is None:
            topic = dlq_topic(self.kafka.topic_prefix)
            ensure_topics(self.bootstrap, [topic], self.kafka.partitions, self.kafka.replication_factor)
            self._dlq = DeadLetterWriter(self.producer, self.registry, topic)
        columns = {
            name: (None if v is None else "__unchanged_toast__" if isinstance(v, pg.Unchanged) else
                   v if isinstance(v, str) else v.hex())
            for name, v in zip(cap.columns, values, strict=False)
        }  # fmt: skip
        key = {k: columns.get(k) for k in cap.events.table.key}
        change = {"op": op, "table": cap.name, "lsn": lsn, "txId": xid, "columns": columns}
        letter = Letter(stage="cdc", rule=SCHEMA_RULE, error=f"table {cap.name} is stopped: {cap.stopped}",
                        value=json.dumps(change, default=str).encode(), key=json.dumps(key, default=str).encode(),
                        entity=cap.name, source_position=f"{cap.name}@{pg.format_lsn(lsn)}")  # fmt: skip
        self._dlq.write(letter, on_delivery=on_delivery)
