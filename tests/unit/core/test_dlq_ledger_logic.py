"""The pure parts of dead letters, the ledger and replay: identities, digests, matching, re-parsing."""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from cryptography.fernet import Fernet
from fastavro import schemaless_writer

from crmflow.dlq import DlqCipher, Letter
from crmflow.pipeline.letters import RetryWatch, stable_content
from crmflow.pipeline.replay import LetterOutcome, LineReparser, ReplayReport
from crmflow.serialization import AvroDecoder, load_schema
from producers.readers.base import Record
from producers.sources import SourceSpec
from sinks.postgres.ledger import letter_id

pytestmark = pytest.mark.unit

UNUSED_REGISTRY = SchemaRegistryClient({"url": "http://127.0.0.1:1"})  # never called: schemas are seeded


def test_a_letter_is_frozen_and_names_its_origin() -> None:
    line = Letter(stage="snapshot", rule="encoding", error="byte 0xfc at column 7", value=b"\xfc",
                  source_position="customers.csv:7")
    consumed = Letter(stage="process", rule="date_format", error="e", value=b"v", topic="t", partition=2, offset=9)
    assert line.origin == "customers.csv:7"
    assert consumed.origin == "t[2]@9"
    assert (line.topic, line.partition, line.offset, line.attempt) == ("", -1, -1, 1)
    with pytest.raises(AttributeError):
        line.rule = "other"  # type: ignore[misc]
    assert "\\xfc" not in repr(line) and "b'v'" not in repr(consumed)  # payloads never in a repr


def test_digest_is_keyed_stable_and_not_a_plain_hash() -> None:
    key = Fernet.generate_key()
    a, same, other = DlqCipher(key), DlqCipher(key), DlqCipher(Fernet.generate_key())
    assert a.digest(b"jane@example.com") == same.digest(b"jane@example.com")
    assert a.digest(b"jane@example.com") != other.digest(b"jane@example.com")
    assert a.digest(b"jane@example.com") != a.digest(b"john@example.com")
    assert a.digest(b"jane@example.com") != hashlib.sha256(b"jane@example.com").hexdigest()


def test_letter_id_separates_topic_entity_origin_rule_and_digest() -> None:
    base = ("t.dlq", "case", "tickets.csv:4", "date_format", "d1")
    ids = {letter_id(*base)}
    for i, changed in enumerate(("u.dlq", "sale", "tickets.csv:5", "orphan", "d2")):
        parts = list(base)
        parts[i] = changed
        ids.add(letter_id(*parts))
    assert len(ids) == 6
    assert letter_id(*base) == letter_id(*base)


def _framed(schema_name: str, record: dict[str, object], schema_id: int = 7) -> tuple[bytes, AvroDecoder]:
    schema = load_schema(schema_name)
    buf = io.BytesIO()
    schemaless_writer(buf, schema.parsed, record)
    decoder = AvroDecoder(UNUSED_REGISTRY)
    decoder.know(schema_id, schema)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue(), decoder


def test_stable_content_ignores_what_differs_between_runs() -> None:
    def envelope(run_id: str, captured_at: int, city: str = "Berlin") -> dict[str, object]:
        return {"source": "customers", "entity": "customers", "source_key": "C1", "position": "customers.csv:2",
                "run_id": run_id, "op": "SNAPSHOT", "captured_at": captured_at, "fields": {"City": city}}

    first, decoder = _framed("legacy/legacy_record", envelope("run-1", 1_000))
    second, _ = _framed("legacy/legacy_record", envelope("run-2", 2_000))
    changed, _ = _framed("legacy/legacy_record", envelope("run-2", 2_000, city="Bonn"))
    assert first != second
    assert stable_content(first, decoder) == stable_content(second, decoder)
    assert stable_content(changed, decoder) != stable_content(first, decoder)
    assert stable_content(b"C9,\xff,broken\n", decoder) == b"C9,\xff,broken\n"  # a raw line is itself


def _row_like(position: str | None) -> object:
    return type("Row", (), {"source_position": position, "letter_id": position or "x", "attempt": 1})()


def test_retry_watch_finds_a_replayed_record_by_position_or_by_coordinates() -> None:
    by_pos, by_coords = _row_like("tickets.csv:4"), _row_like(None)
    watch = RetryWatch(by_position={"tickets.csv:4": by_pos},  # type: ignore[dict-item]
                       by_coords={("raw.t", 1, 42): by_coords})  # type: ignore[dict-item]
    assert watch.match({"source_position": "tickets.csv:4", "source_topic": "mapped.case",
                        "source_partition": 0, "source_offset": 3}) is by_pos
    assert watch.match({"source_position": None, "source_topic": "raw.t", "source_partition": 1,
                        "source_offset": 42}) is by_coords
    assert watch.match({"source_position": "tickets.csv:5", "source_topic": "raw.t", "source_partition": 1,
                        "source_offset": 43}) is None


def test_report_counts_outcomes_and_fails_when_a_letter_failed_again() -> None:
    report = ReplayReport(outcomes=[LetterOutcome("a", "process", "date_format", "case", "t.csv:2", 1, "landed"),
                                    LetterOutcome("b", "snapshot", "duplicate_key", "case", "t.csv:3", 1)])
    assert report.ok and report.to_json()["landed"] == 1 and report.to_json()["skipped"] == 1
    report.outcomes.append(LetterOutcome("c", "sink", "orphan", "case", "t.csv:4", 1, "failed"))
    assert not report.ok and report.to_json()["failed"] == 1


def test_a_rejected_line_is_parsed_again_with_the_fixed_dialect(tmp_path: Path) -> None:
    path = tmp_path / "customers_eu.csv"
    line = "C7;Jürgen;Müller\r\n".encode("cp1252")
    path.write_bytes(b"Customer_ID;First_Name;Last_Name\r\nC6;Ann;Lee\r\n" + line)
    declared_utf8 = SourceSpec("eu", "csv", "account", "Customer_ID", path=path, encoding="utf-8", delimiter=";")
    fixed = SourceSpec("eu", "csv", "account", "Customer_ID", path=path, encoding="cp1252", delimiter=";")

    failed = LineReparser([declared_utf8], tmp_path).parse(declared_utf8, line, "customers_eu.csv:3")
    assert isinstance(failed, tuple) and failed[0] == "encoding"
    assert "Jürgen" not in failed[1] and "J\\xfc" not in failed[1]
    record = LineReparser([fixed], tmp_path).parse(fixed, line, "customers_eu.csv:3")
    assert isinstance(record, Record)
    assert (record.key, record.position, record.fields["Last_Name"]) == ("C7", "customers_eu.csv:3", "Müller")
    short = LineReparser([fixed], tmp_path).parse(fixed, b"C8;Ann\r\n", "customers_eu.csv:4")
    assert isinstance(short, tuple) and short[0] == "csv_malformed"
    assert short[1].startswith("expected 3 fields, found 2")


def test_a_reparsed_line_whose_key_another_record_holds_is_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes(b"Customer_ID,Name\nC1,Ann\nC2,Bob\n")
    spec = SourceSpec("customers", "csv", "account", "Customer_ID", path=path)
    reparser = LineReparser([spec], tmp_path)  # no key log for the run: only this replay's own claims
    first = reparser.parse(spec, b"C5,Eve\n", "customers.csv:4")
    again = reparser.parse(spec, b"C5,Eva\n", "customers.csv:5")
    assert isinstance(first, Record) and isinstance(again, Record)
    assert reparser.duplicate(spec, "run-1", first) is None
    assert reparser.duplicate(spec, "run-1", again) == "key first read at customers.csv:4, again at customers.csv:5"
