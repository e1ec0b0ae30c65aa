"""The JSONL reader: values as text, bad lines rejected with their line number."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.readers import FileMark, JsonlReader, Record, Rejected

pytestmark = pytest.mark.unit


def test_values_become_text_and_bad_lines_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "sales.jsonl"
    path.write_bytes(
        b'{"Sale_ID": "S1", "Sales_Amount": "$1,234.50", "Qty": 3, "Ok": true, "Note": null}\n'
        b'{"Sale_ID": "S2", "Sales_Amount": \n'
        b"\n"
        b'["S3"]\n'
        b'{"Sale_ID": "S4", "Product": "Caf\xe9"}\n'
        b'{"sale_id": "S5", "Tags": ["a", "b"]}\n'
    )
    with JsonlReader(path, key="Sale_ID") as reader:
        items = list(reader)
    assert [i.position for i in items] == [f"sales.jsonl:{n}" for n in (1, 2, 4, 5, 6)]
    first = items[0]
    assert isinstance(first, Record)
    assert first.key == "S1"
    assert first.fields == {"Sale_ID": "S1", "Sales_Amount": "$1,234.50", "Qty": "3", "Ok": "true", "Note": None}
    bad_json, not_object, bad_bytes = items[1], items[2], items[3]
    assert isinstance(bad_json, Rejected) and bad_json.rule == "json_malformed"
    assert bad_json.error.startswith("invalid JSON: Expecting value at column")
    assert isinstance(not_object, Rejected) and not_object.rule == "json_malformed"
    assert isinstance(bad_bytes, Rejected) and bad_bytes.rule == "encoding"
    last = items[4]
    assert isinstance(last, Record) and last.key == "S5" and last.fields["Tags"] == '["a","b"]'


def test_resume_after_each_item(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": "1"}\nnot json\n{"id": "3"}\n')
    with JsonlReader(path, key="id") as reader:
        everything = list(reader)
    for i, item in enumerate(everything):
        assert isinstance(item.mark, FileMark)
        with JsonlReader(path, key="id", start=item.mark) as reader:
            assert list(reader) == everything[i + 1 :]
