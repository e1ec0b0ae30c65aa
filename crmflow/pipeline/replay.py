"""`crmflow dlq replay`: send open dead letters back, carry them through to the target, report each one.

1. The ledger is brought up to date with the topic (:func:`~crmflow.pipeline.letters.sync_ledger`) and the
   open letters the selection names are taken from it.
2. Each is re-sent where it came from:
   - a letter consumed from a topic (process, dedupe and sink stages): its original key and value go back
     to that topic (raw, dedupe or mapped);
   - a snapshot reject of a CSV line (rules ``encoding``, ``csv_malformed``): the raw bytes are parsed
     again with the CSV dialect the config now declares (or sniffs), against the file's header, and the
     record goes to the raw topic as the snapshot would have sent it (same source, position and run). A
     line that still does not parse, or whose key another record of the run already holds, fails again
     at once;
   - anything else (``duplicate_key``: the key's first record landed; JSONL lines) is skipped, with why.
3. The processor runs as a child process (``crmflow process -c CONFIG``, the same command ``migrate``
   starts) until its consumer group has read everything, then the final sink pass writes the mapped
   records (:func:`~crmflow.pipeline.migrate.drain_sink`), as ``migrate`` does.
4. The ledger is synced again: a letter of a re-sent record is that letter failing again (attempt + 1,
   see :class:`~crmflow.pipeline.letters.RetryWatch`); every other re-sent letter landed and is marked
   resolved, with what its delivery did to the target when the sink's audit (``deliveries``) shows it.

Re-sending is safe to repeat: the processor and the sink are idempotent, and a letter is resolved only
once its record went through.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import MigrationConfig
from crmflow.connections import kafka_config
from crmflow.dlq import DeadLetterWriter, DlqCipher, Letter
from crmflow.exceptions import CrmflowError, TerminalError
from crmflow.pipeline.health import require_reachable
from crmflow.pipeline.letters import RetryWatch, ledger_connection, sync_ledger
from crmflow.pipeline.migrate import RunControl, drain_sink, prepare, processor_topics, service_env
from crmflow.pipeline.services import Service, stop_all, wait_drained
from crmflow.pipeline.targets import Target
from crmflow.serialization import AvroCodec, AvroDecoder, SerializationError, load_schema
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints
from crmflow.topics import raw_topic
from producers.checkpoint import CheckpointStore
from producers.envelope import EnvelopeEncoder
from producers.keys import KeyIndex, load_logs
from producers.readers.base import FileMark, Record
from producers.readers.csvfile import CsvReader
from producers.readers.lines import strip_eol, utf8_error
from producers.runs import default_state_dir
from producers.sources import SourceSpec, source_specs
from sinks.postgres.ledger import Ledger, LedgerRow, delivery_of

log = logging.getLogger(__name__)

Outcome = Literal["landed", "failed", "skipped"]
REPARSED_RULES = frozenset({"encoding", "csv_malformed"})
LEGACY_SCHEMA = "legacy/legacy_record"


@dataclass(frozen=True)
class ReplaySelection:
    """Which open letters to replay (all open letters of the config's topic when nothing is set)."""

    run_id: str | None = None
    stage: str | None = None
    rule: str | None = None
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplayOptions:
    workers: int = 1
    drain_timeout_s: float = 600.0
    logs_dir: Path | None = None


@dataclass
class LetterOutcome:
    """What replaying one letter did. ``detail``: the delivery (``inserted``...), the new rule, or why it
    was skipped; ``new_letter`` is the letter it failed again as."""

    letter_id: str
    stage: str
    rule: str
    entity: str | None
    origin: str
    attempt: int
    outcome: Outcome = "skipped"
    detail: str = ""
    new_letter: str | None = None
    new_rule: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.letter_id, "stage": self.stage, "rule": self.rule, "entity": self.entity,
                "origin": self.origin, "attempt": self.attempt, "outcome": self.outcome, "detail": self.detail,
                "new_letter": self.new_letter, "new_rule": self.new_rule}  # fmt: skip


@dataclass
class ReplayReport:
    outcomes: list[LetterOutcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    target: str = ""

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def ok(self) -> bool:
        """No replayed letter failed again."""
        return self.count("failed") == 0

    def to_json(self) -> dict[str, Any]:
        return {"landed": self.count("landed"), "failed": self.count("failed"), "skipped": self.count("skipped"),
                "elapsed_s": round(self.elapsed_s, 1), "target": self.target,
                "letters": [o.to_json() for o in self.outcomes]}  # fmt: skip


@dataclass
class _Sent:
    """A letter re-sent to a topic, and what the delivery report said."""

    row: LedgerRow
    outcome: LetterOutcome
    topic: str
    source: str | None = None
    source_id: str | None = None
    coords: tuple[str, int, int] | None = None
    error: str | None = None


class LineReparser:
    """Parses snapshot-rejected CSV lines again with the sources' (fixed) dialect, file by file; the run's
    key logs (for duplicate keys) are read from ``state_dir`` (the snapshot's)."""

    def __init__(self, specs: Sequence[SourceSpec], state_dir: Path | None = None) -> None:
        self.specs = list(specs)
        self.state_dir = state_dir or default_state_dir()
        self._readers: dict[str, CsvReader] = {}
        self._keys: dict[str, KeyIndex] = {}

    def spec_of(self, row: LedgerRow) -> SourceSpec | None:
        file = (row.source_position or "").rsplit(":", 1)[0]
        return next((s for s in self.specs if s.kind == "csv" and s.path is not None and s.path.name == file
                     and (row.entity is None or s.entity == row.entity)), None)  # fmt: skip

    def reader(self, spec: SourceSpec) -> CsvReader:
        """The file opened once: its header and the dialect the config declares or the file shows."""
        reader = self._readers.get(spec.name)
        if reader is None:
            opened = spec.open_reader(None)
            assert isinstance(opened, CsvReader)
            with opened:
                pass  # open() reads the header and resolves the dialect; the lines are not needed
            reader = self._readers[spec.name] = opened
            log.info("replay: %s read with %s", reader.name, reader.dialect.describe())
        return reader

    def parse(self, spec: SourceSpec, raw: bytes, position: str) -> Record | tuple[str, str]:
        """The record of ``raw``, or (rule, PII-free error) when it still is no record."""
        reader = self.reader(spec)
        d = reader.dialect
        try:
            text = d.decode(strip_eol(raw))
        except UnicodeDecodeError as exc:
            return "encoding", f"{utf8_error(exc)} (replayed with {d.describe()})"
        if d.quotechar in text:
            try:
                row = next(csv.reader([text], delimiter=d.delimiter, quotechar=d.quotechar))
            except (csv.Error, StopIteration):
                return "csv_malformed", f"line cannot be parsed as CSV ({d.describe()})"
        else:
            row = text.split(d.delimiter)
        if len(row) != len(reader.header):
            return "csv_malformed", f"expected {len(reader.header)} fields, found {len(row)} ({d.describe()})"
        line = int(position.rsplit(":", 1)[1])
        return Record(row[reader.key_index], position, dict(zip(reader.header, row, strict=True)),
                      FileMark(0, line))  # fmt: skip

    def duplicate(self, spec: SourceSpec, run_id: str, record: Record) -> str | None:
        """The ``duplicate_key`` reason when another record of the run holds the record's key (the run's
        key logs, :mod:`producers.keys`), else None; the key is claimed for the rest of this replay."""
        index = self._keys.get(run_id)
        if index is None:
            index = self._keys[run_id] = KeyIndex()
            load_logs(CheckpointStore(self.state_dir).run_dir(run_id), index, [s.name for s in self.specs])
        reader = self.reader(spec)
        line = int(record.position.rsplit(":", 1)[1])
        _, first, _ = index.claim(spec.entity, record.key, index.source_index(spec.name, reader.name), line)
        return first.reason(spec.name, record.position) if first is not None else None


def run_replay(
    cfg: MigrationConfig,
    config_path: Path,
    ep: Endpoints,
    target: Target,
    selection: ReplaySelection = ReplaySelection(),
    opts: ReplayOptions = ReplayOptions(),
    *,
    control: RunControl | None = None,
) -> ReplayReport:
    """Replay the selected open letters through to the target; see the module docs. Raises
    :class:`~crmflow.exceptions.InfrastructureError`, or the reason ``control`` was stopped for."""
    started = time.monotonic()
    control = control or RunControl()
    report = ReplayReport(target=target.describe())
    require_reachable(ep, target.dsn)
    registry = ep.registry.client()
    prepare(cfg, ep, registry, target)
    ops = ep.kafka.for_stage("ops")
    cipher = DlqCipher.from_env()
    dlq = cfg.kafka.dlq_topic
    with ledger_connection(target) as conn:
        sync_ledger(conn, target.schema, dlq, ops, registry, cipher)
        rows = Ledger(conn, target.schema).select(dlq, statuses=("open",), run_id=selection.run_id,
                                                  stage=selection.stage, rule=selection.rule, ids=selection.ids)
        conn.commit()
    if not rows:
        report.elapsed_s = time.monotonic() - started
        return report
    producer = Producer(kafka_config(ops, {"enable.idempotence": True, "linger.ms": 20}))
    writer = DeadLetterWriter(producer, registry, dlq, cipher)
    sent = _send(cfg, rows, producer, writer, registry, cipher, report)
    watch = RetryWatch()
    for s in sent:
        if s.row.source_position:
            watch.by_position[s.row.source_position] = s.row
        if s.coords is not None:
            watch.by_coords[s.coords] = s.row
    for row, _ in _failed_at_once(report, rows):
        if row.source_position:
            watch.by_position[row.source_position] = row
    to_process = {s.topic for s in sent} & set(processor_topics(cfg))
    if sent:
        _carry_through(cfg, config_path, ep, target, bool(to_process), opts, control)
    with ledger_connection(target) as conn:
        sync_ledger(conn, target.schema, dlq, ops, registry, cipher, retries=watch)
        ledger = Ledger(conn, target.schema)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        by_id = {o.letter_id: o for o in report.outcomes}
        for lid, failures in watch.failed.items():
            new_id, new_rule = failures[-1]
            o = by_id[lid]
            o.outcome, o.new_letter, o.new_rule = "failed", new_id, new_rule
            o.detail = f"failed again: rule {new_rule} (attempt {o.attempt + 1})"
        for s in sent:
            o = s.outcome
            if o.outcome == "failed":
                continue
            delivery = (delivery_of(conn, target.schema, s.row.entity, s.source, s.source_id)
                        if s.row.entity and s.source and s.source_id else None)  # fmt: skip
            o.outcome = "landed"
            o.detail = f"landed ({delivery})" if delivery else "landed"
            ledger.resolve(s.row.letter_id, f"replayed {stamp}: {o.detail}")
    report.elapsed_s = time.monotonic() - started
    return report


def _failed_at_once(report: ReplayReport, rows: Sequence[LedgerRow]) -> list[tuple[LedgerRow, LetterOutcome]]:
    """Letters whose record failed again before reaching Kafka (re-dead-lettered by the replay itself)."""
    by_id = {r.letter_id: r for r in rows}
    return [(by_id[o.letter_id], o) for o in report.outcomes if o.outcome == "failed"]


def _send(
    cfg: MigrationConfig, rows: Sequence[LedgerRow], producer: Producer, writer: DeadLetterWriter,
    registry: SchemaRegistryClient, cipher: DlqCipher, report: ReplayReport,
) -> list[_Sent]:  # fmt: skip
    """Re-send every row that can be; fills ``report`` with one outcome per row (landed/failed decided
    later, except lines that fail at once). Returns the rows sent to a topic, acknowledged by Kafka."""
    reparser = LineReparser(source_specs(cfg))
    decoder = AvroDecoder(registry)
    encoders: dict[str, EnvelopeEncoder] = {}
    sent: list[_Sent] = []
    for row in rows:
        o = LetterOutcome(row.letter_id, row.stage, row.rule, row.entity, row.origin, row.attempt)
        report.outcomes.append(o)
        value = cipher.decrypt(row.payload, row.key_id)
        key = cipher.decrypt(row.payload_key, row.key_id) if row.payload_key is not None else None
        if row.source_topic:
            s = _Sent(row, o, row.source_topic)
            s.source, s.source_id = _source_of(value, row.entity, decoder)
            _produce(producer, row.source_topic, value, key, row, s)
            sent.append(s)
            continue
        spec = reparser.spec_of(row) if row.rule in REPARSED_RULES and row.source_position else None
        if spec is None:
            o.detail = _skip_reason(row)
            continue
        assert row.source_position is not None
        run_id = row.run_ids[-1] if row.run_ids else cfg.run.name
        parsed = reparser.parse(spec, value, row.source_position)
        if isinstance(parsed, Record):
            reason = reparser.duplicate(spec, run_id, parsed)
            if reason is not None:
                parsed = ("duplicate_key", reason)
        if not isinstance(parsed, Record):
            rule, error = parsed
            writer.write(Letter(stage="snapshot", rule=rule, error=error, value=value,
                                key=key, field=spec.key if rule == "duplicate_key" else None,
                                entity=spec.entity, run_id=run_id, source_position=row.source_position,
                                attempt=row.attempt + 1))  # fmt: skip
            o.outcome = "failed"  # matched to its new ledger row after the sync
            continue
        if spec.segment is not None and not spec.segment(parsed.fields):
            o.detail = f"filtered out by the segment filter of source {spec.name} ({spec.segment})"
            continue
        topic = raw_topic(cfg.kafka.topic_prefix, spec.name)
        encoder = encoders.get(topic)
        if encoder is None:
            codec = AvroCodec.for_topic(registry, topic, load_schema(LEGACY_SCHEMA))
            encoder = encoders[topic] = EnvelopeEncoder(codec)
        envelope = encoder.encode([parsed], source=spec.name, entity=spec.legacy_entity, run_id=run_id,
                                  captured_at_ms=int(time.time() * 1000))[0]  # fmt: skip
        s = _Sent(row, o, topic, source=spec.name, source_id=parsed.key or None)
        _produce(producer, topic, envelope, parsed.key.encode("utf-8") if parsed.key else None, row, s)
        sent.append(s)
    remaining = producer.flush(60)
    if remaining:
        raise TerminalError(f"{remaining} replayed messages not acknowledged by Kafka within 60s")
    errors = [s for s in sent if s.error is not None or s.coords is None]
    if errors:
        first = errors[0]
        raise TerminalError(f"{len(errors)} replayed message(s) not delivered, first: letter {first.row.short_id} "
                            f"to {first.topic}: {first.error or 'no delivery report'}")  # fmt: skip
    return sent


def _skip_reason(row: LedgerRow) -> str:
    if row.rule == "duplicate_key":
        return "duplicate_key: the key's first record landed; fix the source and migrate it again if this one is right"
    if row.rule in REPARSED_RULES:
        return f"no CSV source of the config reads {row.source_position}"
    return f"rule {row.rule} of stage {row.stage} is not replayable: fix the source and migrate it again"


def _source_of(value: bytes, entity: str | None, decoder: AvroDecoder) -> tuple[str | None, str | None]:
    """(source, source id) of a dead-lettered Avro record, to find its delivery; (None, None) if unknown."""
    try:
        rec = decoder.decode(value)
    except (SerializationError, CrmflowError):
        return None, None
    source = rec.get("source")
    source_id = rec.get("source_key") or (rec.get(f"{entity}_id") if entity else None)
    return (str(source) if source else None), (str(source_id) if source_id else None)


def _produce(producer: Producer, topic: str, value: bytes, key: bytes | None, row: LedgerRow, sent: _Sent) -> None:
    def delivered(s: _Sent, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            s.error = err.str()
        else:
            s.coords = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)

    headers: list[tuple[str, str | bytes | None]] = [("crmflow-replay-of", row.letter_id),
                                                     ("crmflow-attempt", str(row.attempt + 1))]
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=partial(delivered, sent))
            return
        except BufferError:
            producer.poll(0.1)


def _carry_through(
    cfg: MigrationConfig, config_path: Path, ep: Endpoints, target: Target, process: bool, opts: ReplayOptions,
    control: RunControl,
) -> None:  # fmt: skip
    """The processor(s) until their group has read everything (when anything went to their topics), then the
    final sink pass, as ``migrate`` runs them."""
    logs = opts.logs_dir or stack_settings().home / "replays" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    services: list[Service] = []
    if process:
        env = service_env(cfg, target)
        # Instances of their own: a live worker of the same config on this host keeps its transactional id.
        tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        services = [Service(f"process-{i}", ["process", "-c", str(config_path), "--metrics-port", "0",
                                             "--instance", f"replay-{tag}-{i}"],
                            logs / f"process-{i}.log", {**env, **ep.kafka.stage_env("process")})
                    for i in range(opts.workers)]  # fmt: skip
        try:
            wait_drained(ep.kafka.for_stage("ops"), f"crmflow-process-{cfg.kafka.topic_prefix}", processor_topics(cfg),
                         services, opts.drain_timeout_s, should_stop=control.check)  # fmt: skip
        finally:
            stop_all(services)
    drain_sink(cfg, ep, target, stop_event=control.stop)
    reason = control.check()
    if reason is not None:
        raise reason
