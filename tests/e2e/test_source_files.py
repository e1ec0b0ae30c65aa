"""`crmflow migrate` on small hand-written exports: duplicate keys, CSV dialects, headers against the mapping.

Each test writes a few customer lines with the demo's account header, runs the real pipeline, and looks at
the target, the dead-letter topic and the summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import load_config
from crmflow.dlq import read_dead_letters
from crmflow.stack import Endpoints
from tests.e2e.conftest import Dataset, Run, target_rows

pytestmark = pytest.mark.e2e

COLUMNS = ["Customer_ID", "First_Name", "Last_Name", "Contact_Email", "Phone", "Street_Address", "City",
           "Postal_Code", "Country", "Region", "Birth_Date", "Customer_Since"]  # fmt: skip
PEOPLE = {
    "COL-1001": ["Anna", "Schmidt", "anna.schmidt@example.net", "+49 30 1234567", "Hauptstr. 1", "Berlin", "10115",
                 "DE", "EU", "1980-01-02", "2019-03-04"],
    "COL-1002": ["Ben", "Meyer", "ben.meyer@example.net", "+49 30 2345678", "Ringstr. 2", "Hamburg", "20095", "DE",
                 "EU", "1981-02-03", "2019-04-05"],
    "COL-1003": ["Carla", "Weber", "carla.weber@example.net", "+49 30 3456789", "Bahnhofstr. 3", "Bonn", "53111",
                 "DE", "EU", "1982-03-04", "2019-05-06"],
    "COL-2001": ["Dora", "Fischer", "dora.fischer@example.net", "+49 30 4567890", "Marktplatz 4", "Essen", "45127",
                 "DE", "EU", "1983-04-05", "2019-06-07"],
}  # fmt: skip


def csv_text(rows: list[tuple[str, list[str]]], delimiter: str = ",", columns: list[str] = COLUMNS) -> str:
    lines = [delimiter.join(columns)] + [delimiter.join([key, *values]) for key, values in rows]
    return "\n".join(lines) + "\n"


def tiny_run(run_factory: Callable[..., Run], data: Path, sources: dict[str, dict[str, Any]]) -> Run:
    """A run of the demo config reduced to ``sources`` (all feeding account) and the account mapping."""

    def patch(raw: dict[str, Any]) -> None:
        raw["sources"] = {name: {"kind": "csv", "entity": "account", "key": "Customer_ID", **src,
                                 "path": str(data / src["path"])} for name, src in sources.items()}  # fmt: skip
        raw["entities"] = {"account": raw["entities"]["account"]}
        raw["pii"].pop("entities", None)

    return run_factory(Dataset(data, []), patch)


def letters_of(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, run: Run, run_id: str
) -> list[dict[str, Any]]:
    return [lt.record for lt in read_dead_letters(endpoints.kafka, registry_client, f"{run.prefix}.dlq")
            if lt.record["run_id"] == run_id]  # fmt: skip


def migrate(run: Run, *args: str) -> dict[str, Any]:
    res = run.cli("migrate", "-c", str(run.config), "--json", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    summary: dict[str, Any] = json.loads(res.stdout)
    return summary


def test_duplicate_key_in_one_file_keeps_the_first_and_dead_letters_the_second(
    tmp_path: Path, run_factory: Callable[..., Run], endpoints: Endpoints, registry_client: SchemaRegistryClient,
) -> None:  # fmt: skip
    p = PEOPLE
    other = ["Zoe", "Other", "zoe.other@example.net", *p["COL-1001"][3:]]
    (tmp_path / "customers.csv").write_text(csv_text(
        [("COL-1001", p["COL-1001"]), ("COL-1002", p["COL-1002"]), ("COL-1001", other), ("COL-1003", p["COL-1003"])]
    ))  # fmt: skip
    run = tiny_run(run_factory, tmp_path, {"customers": {"path": "customers.csv"}})
    summary = migrate(run)

    rows = target_rows(run.target_dsn, "account", ["customer_id", "first_name"])
    assert rows == {"COL-1001": {"customer_id": "COL-1001", "first_name": "Anna"},  # line 2, not line 4
                    "COL-1002": {"customer_id": "COL-1002", "first_name": "Ben"},
                    "COL-1003": {"customer_id": "COL-1003", "first_name": "Carla"}}  # fmt: skip
    (letter,) = letters_of(endpoints, registry_client, run, summary["run_id"])
    assert (letter["rule"], letter["field"], letter["source_position"], letter["stage"]) == (
        "duplicate_key",
        "Customer_ID",
        "customers.csv:4",
        "snapshot",
    )
    assert letter["error"] == "key first read at customers.csv:2, again at customers.csv:4"
    account = summary["entities"]["account"]
    assert (account["read"], account["written"], account["rejected"]) == (4, 3, 1)
    assert summary["reconciled"] is True and summary["rejected_by_rule"] == {"duplicate_key": 1}


def test_two_sources_sharing_an_id_keep_the_first_source_s_record(
    tmp_path: Path, run_factory: Callable[..., Run], endpoints: Endpoints, registry_client: SchemaRegistryClient,
) -> None:  # fmt: skip
    p = PEOPLE
    (tmp_path / "crm_a.csv").write_text(csv_text([("COL-1001", p["COL-1001"]), ("COL-1002", p["COL-1002"])]))
    other = ["Zoe", "Other", "zoe.other@example.net", *p["COL-2001"][3:]]
    (tmp_path / "crm_b.csv").write_text(csv_text([("COL-2001", p["COL-2001"]), ("COL-1001", other)]))
    run = tiny_run(run_factory, tmp_path, {"crm_a": {"path": "crm_a.csv"}, "crm_b": {"path": "crm_b.csv"}})

    check = run.cli("config", "check", "-c", str(run.config))
    assert "crm_a, crm_b all feed entity account" in check.stdout + check.stderr
    summary = migrate(run)

    rows = target_rows(run.target_dsn, "account", ["first_name"])
    assert {k: v["first_name"] for k, v in rows.items()} == {"COL-1001": "Anna", "COL-1002": "Ben",
                                                             "COL-2001": "Dora"}  # fmt: skip
    (letter,) = letters_of(endpoints, registry_client, run, summary["run_id"])
    assert (letter["rule"], letter["source_position"]) == ("duplicate_key", "crm_b.csv:3")
    assert letter["error"] == "key first read at crm_a.csv:2 (source crm_a), again at crm_b.csv:3 (source crm_b)"
    assert "Zoe" not in letter["error"] and "zoe" not in letter["error"]
    account = summary["entities"]["account"]
    assert (account["read"], account["written"], account["rejected"]) == (4, 3, 1)
    assert summary["reconciled"] is True


def test_semicolon_cp1252_crlf_bom_exports_migrate_with_their_umlauts(
    tmp_path: Path, run_factory: Callable[..., Run],
) -> None:  # fmt: skip
    """A Windows export (``;``, cp1252, CRLF, a byte-order mark in front) migrates with its dialect declared,
    and with nothing declared (sniffed); a UTF-8 export with a BOM and CRLF too."""

    def export(key: str, first: str, last: str, city: str, encoding: str) -> bytes:
        values = [first, last, f"{key.lower()}@example.net", "+49 221 1234567", "Domplatz 1", city, "50667", "DE",
                  "EU", "1970-05-06", "2020-01-02"]  # fmt: skip
        text = csv_text([(key, values)], delimiter=";").replace("\n", "\r\n")
        return b"\xef\xbb\xbf" + text.encode(encoding)

    (tmp_path / "declared.csv").write_bytes(export("WIN-1", "Jürgen", "Müller", "Köln", "cp1252"))
    (tmp_path / "sniffed.csv").write_bytes(export("WIN-2", "Bärbel", "Größ", "Düsseldorf", "cp1252"))
    (tmp_path / "utf8.csv").write_bytes(export("UTF-1", "Renée", "Çelik", "Zürich", "utf-8"))
    run = tiny_run(run_factory, tmp_path, {
        "declared": {"path": "declared.csv", "delimiter": ";", "encoding": "cp1252"},
        "sniffed": {"path": "sniffed.csv"},
        "utf8": {"path": "utf8.csv"},
    })  # fmt: skip
    summary = migrate(run)

    rows = target_rows(run.target_dsn, "account", ["first_name", "last_name", "city", "customer_since"])
    assert rows == {
        "WIN-1": {"first_name": "Jürgen", "last_name": "Müller", "city": "Köln", "customer_since": "2020-01-02"},
        "WIN-2": {"first_name": "Bärbel", "last_name": "Größ", "city": "Düsseldorf", "customer_since": "2020-01-02"},
        "UTF-1": {"first_name": "Renée", "last_name": "Çelik", "city": "Zürich", "customer_since": "2020-01-02"},
    }
    assert summary["reconciled"] is True and summary["entities"]["account"]["rejected"] == 0


def test_header_missing_a_mapped_column_fails_before_any_record_moves(
    tmp_path: Path, run_factory: Callable[..., Run], endpoints: Endpoints,
) -> None:  # fmt: skip
    p = PEOPLE
    (tmp_path / "good.csv").write_text(csv_text([("COL-2001", p["COL-2001"])]))
    no_phone = [c for c in COLUMNS if c != "Phone"]
    rows = [(k, [v for c, v in zip(COLUMNS[1:], vals, strict=True) if c != "Phone"])
            for k, vals in list(p.items())[:2]]  # fmt: skip
    (tmp_path / "customers.csv").write_text(csv_text(rows, columns=no_phone))
    # The good source comes first: nothing of it may be produced either.
    run = tiny_run(run_factory, tmp_path, {"good": {"path": "good.csv"}, "customers": {"path": "customers.csv"}})
    cfg = load_config(run.config)
    index = next(i for i, f in enumerate(cfg.entities["account"].fields) if f.sources == ("Phone",))
    line = cfg.line_of(("entities", "account", "fields", index, "source"))

    check = run.cli("config", "check", "-c", str(run.config))
    assert check.returncode != 0
    assert f"{run.config}:{line}: error:" in check.stdout + check.stderr
    assert "'Phone' is not in the header of " + str(tmp_path / "customers.csv") in check.stdout + check.stderr

    res = run.cli("migrate", "-c", str(run.config))
    assert res.returncode != 0
    message = " ".join(res.stderr.split())  # the console may wrap
    assert f"{tmp_path / 'customers.csv'}: column 'Phone' is not in the header" in message, res.stderr[-2000:]
    assert f"{run.config}:{line}" in message, res.stderr[-2000:]

    consumer = Consumer({**endpoints.kafka.client_config(), "group.id": "e2e-watermarks"})
    try:
        for source in ("good", "customers"):
            topic = f"{run.prefix}.raw.{source}"
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            parts = list(meta.partitions) if meta is not None and meta.error is None else []
            highs = [consumer.get_watermark_offsets(TopicPartition(topic, q), timeout=10)[1] for q in parts]
            assert sum(highs) == 0, f"{topic} holds records"
    finally:
        consumer.close()
    with psycopg.connect(run.target_dsn) as conn:
        exists = conn.execute("select to_regclass('crm.accounts')").fetchone()
        if exists is not None and exists[0] is not None:
            count = conn.execute("select count(*) from crm.accounts").fetchone()
            assert count is not None and count[0] == 0
