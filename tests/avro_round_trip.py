"""What a record looks like after fastavro writes it and reads it back with the same schema."""

from __future__ import annotations

import io
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from crmflow.serialization import ParsedSchema, load_schema


def round_trip(schema: ParsedSchema | str, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` with fastavro and read it back with ``schema`` (a ParsedSchema, or a name under schemas/)."""
    parsed = (load_schema(schema) if isinstance(schema, str) else schema).parsed
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, record)
    buf.seek(0)
    back = schemaless_reader(buf, parsed, None)
    assert isinstance(back, dict)
    return back
