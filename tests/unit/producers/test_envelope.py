"""The fast envelope encoder writes exactly the bytes of the generic Avro writer."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer

from crmflow.serialization import ParsedSchema, load_schema
from producers.envelope import EnvelopeEncoder
from producers.readers import FileMark, Record

pytestmark = pytest.mark.unit

HEADER = b"\x00\x00\x00\x01\x2c"


class FakeCodec:
    """The two things the encoder uses of an AvroCodec, without a registry."""

    header = HEADER

    def __init__(self, schema: ParsedSchema) -> None:
        self.schema = schema
        self.generic_calls = 0

    def encode_many(self, objs: Any) -> list[bytes]:
        self.generic_calls += 1
        return [reference(self.schema, obj) for obj in objs]


def reference(schema: ParsedSchema, obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(HEADER)
    schemaless_writer(buf, schema.parsed, obj)
    return buf.getvalue()


def random_text(rng: random.Random) -> str:
    alphabet = "abcXYZ ,\"'\n\t€äß漢字🙂" + "x" * 10
    n = rng.choice([0, 1, 5, 63, 64, 65, 200, 5000])
    return "".join(rng.choices(alphabet, k=n))


def test_bytes_equal_fastavro_on_random_records() -> None:
    schema = load_schema("legacy/legacy_record")
    codec = FakeCodec(schema)
    encoder = EnvelopeEncoder(codec)  # type: ignore[arg-type]
    assert encoder.fast
    rng = random.Random(5)
    records = []
    for i in range(300):
        fields = {random_text(rng)[:20] or f"col{j}": (None if rng.random() < 0.2 else random_text(rng))
                  for j in range(rng.choice([0, 1, 12, 70]))}  # fmt: skip
        records.append(Record(random_text(rng), f"customers.csv:{i}", fields, FileMark(0, 1)))
    for ts in (0, 1, 1_700_000_000_123, 2**40 + 17):
        got = encoder.encode(records, source="customers", entity="customers", run_id="run-ä", captured_at_ms=ts)
        want = [
            reference(schema, {"source": "customers", "entity": "customers", "source_key": r.key,
                               "position": r.position, "run_id": "run-ä", "op": "SNAPSHOT",
                               "captured_at": ts, "fields": r.fields})
            for r in records
        ]  # fmt: skip
        assert got == want
    assert codec.generic_calls == 0
    decoded = schemaless_reader(io.BytesIO(got[1][5:]), schema.parsed)
    assert isinstance(decoded, dict) and decoded["fields"] == records[1].fields


def test_a_schema_of_another_shape_uses_the_generic_encoder() -> None:
    raw = json.loads(load_schema("legacy/legacy_record").schema_str)
    raw["fields"].insert(3, {"name": "extra", "type": "string", "default": ""})
    changed = ParsedSchema.from_str(json.dumps(raw))
    codec = FakeCodec(changed)
    encoder = EnvelopeEncoder(codec)  # type: ignore[arg-type]
    assert not encoder.fast
    rec = Record("C1", "customers.csv:2", {"a": "b"}, FileMark(0, 1))
    (value,) = encoder.encode([rec], source="s", entity="e", run_id="r", captured_at_ms=5)
    assert codec.generic_calls == 1
    decoded = schemaless_reader(io.BytesIO(value[5:]), changed.parsed)
    assert isinstance(decoded, dict) and decoded["extra"] == "" and decoded["fields"] == {"a": "b"}
