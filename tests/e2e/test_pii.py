"""Masking, proven on the outputs: run the pipeline on generated data and search everything downstream of
the masking stage for the input's personal data — the mapped topics, the dead-letter topic, the target
database, every log line and the processor's metrics page. Deduplication is on, as in the demo: the
golden records it sends on are masked like any mapped record. (Its input topic and its state's changelog
hold the real values the matcher needs, sealed: tests/e2e/test_pii_gate.py searches those too.)"""

from __future__ import annotations

import csv
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from cryptography.fernet import Fernet
from pydantic import SecretStr

from crmflow.config import load_config
from crmflow.pii import PiiConfig
from crmflow.pipeline.migrate import drain_sink, prepare, processor_topics
from crmflow.pipeline.services import Service, wait_drained
from crmflow.stack import Endpoints
from crmflow.stack.tools import free_port
from processors.masking.keyed import KeyedHash
from processors.masking.policies import format_preserving
from producers.snapshot import run_snapshot
from tests.e2e.conftest import Dataset, Run

pytestmark = pytest.mark.e2e


def _pii(dataset: Dataset) -> set[bytes]:
    """Distinctive personal values of the input, raw and clean: emails, phones, full names, streets."""
    values: set[str] = set()
    for t in dataset.truth:
        if t["entity"] in ("account", "contact") and t["outcome"] == "ok":
            c = t["clean"]
            values.update(v for v in (c.get("email"), c.get("phone"), c.get("full_name"), c.get("street")) if v)
    with (dataset.dir / "customers.csv").open(encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            values.update(v.strip() for v in (row.get("Contact_Email"), row.get("Street_Address")) if v and v.strip())
    return {v.encode() for v in values if len(v) >= 8}


def _chance_collisions(dataset: Dataset, key: str, config: PiiConfig, pii: set[bytes]) -> set[bytes]:
    """The values of ``pii`` that the mask of a *different* input phone under ``key`` contains.

    A format-preserving phone keeps the country code, the length and the first national digit: an 11-digit
    German number leaves 10**7 values, and a 12-digit one can begin with an 11-digit one. With this data set
    about 1 run in 100 masks some number onto (or around) another customer's real one. That is a chance
    collision, not a leak, and no byte search can tell the two apart, so those values (and only those) are left
    out. A mask that let a value through unchanged would contain its own value, not another's: still found."""
    phone = format_preserving("phone", KeyedHash(SecretStr(key)), config)
    people = (t["clean"] for t in dataset.truth if t["entity"] in ("account", "contact"))
    inputs = {c["phone"] for c in people if c.get("phone")}
    heads = _heads(pii)
    found: set[bytes] = set()
    for value in inputs:
        masked = phone(value)
        if masked is not None:
            found.update(hit for hit in _hits([masked.encode()], heads) if hit != value.encode())
    return found


def _hits(blobs: Iterable[bytes], pii: set[bytes] | dict[bytes, list[bytes]], limit: int = 10) -> list[bytes]:
    """The PII values found in ``blobs`` (at most ``limit``). Every value is at least 8 bytes long, so each
    position of a blob is looked up by its next 8 bytes: one pass per blob, not one per value. ``pii`` may be
    given as :func:`_heads` of it, built once for many calls."""
    heads = pii if isinstance(pii, dict) else _heads(pii)
    found: list[bytes] = []
    for blob in blobs:
        for i in range(len(blob) - 7):
            candidates = heads.get(blob[i : i + 8])
            if candidates:
                found += [p for p in candidates if blob.startswith(p, i)]
                if len(found) >= limit:
                    return found[:limit]
    return found


def _heads(pii: set[bytes]) -> dict[bytes, list[bytes]]:
    heads: dict[bytes, list[bytes]] = defaultdict(list)
    for p in pii:
        heads[p[:8]].append(p)
    return dict(heads)


def _topic_values(ep: Endpoints, topic: str) -> list[bytes]:
    # read_committed, with end-of-partition events: a transactional writer's last offset is a commit marker,
    # which is never delivered, so the end is the partition-EOF event, not the high watermark's offset.
    c = Consumer({**ep.kafka.client_config(), "group.id": f"scan-{topic}", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True})
    md = c.list_topics(topic, timeout=10)
    ends = {}
    for p in md.topics[topic].partitions:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p] = (low, high)
    c.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
    out: list[bytes] = []
    remaining = {p: high for p, (_, high) in ends.items()}
    deadline = time.monotonic() + 60
    while remaining and time.monotonic() < deadline:
        for m in c.consume(1000, timeout=1):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    remaining.pop(m.partition(), None)
                continue
            out.append((m.key() or b"") + (m.value() or b""))
            if (m.offset() or 0) + 1 >= remaining.get(m.partition(), 0):
                remaining.pop(m.partition(), None)
    c.close()
    assert not remaining, f"could not read {topic} to its end"
    return out



def _staging(raw: dict[str, Any]) -> None:
    raw["pii"]["profile"] = "staging"


def test_staging_profile_leaves_no_pii_downstream_of_masking(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = run_factory(small_dataset, _staging, dedupe=True)
    run.env["CRMFLOW_PII_KEY"] = Fernet.generate_key().decode()
    monkeypatch.setenv("CRMFLOW_PII_KEY", run.env["CRMFLOW_PII_KEY"])
    cfg = load_config(run.config)
    assert cfg.pii is not None
    pii = _pii(small_dataset)
    pii -= _chance_collisions(small_dataset, run.env["CRMFLOW_PII_KEY"], cfg.pii, pii)
    assert len(pii) > 1000

    prepare(cfg, endpoints, registry_client, run.target_dsn)
    run_snapshot(cfg, kafka=endpoints.kafka, registry_client=registry_client,
                 state_dir=tmp_path / "state")
    port = free_port()
    processor = Service("process", ["--verbose", "process", "-c", str(run.config), "--metrics-port", str(port)],
                        tmp_path / "process.log", dict(run.env))
    sink = Service("sink", ["--verbose", "sink", "-c", str(run.config)], tmp_path / "sink.log", dict(run.env))
    try:
        wait_drained(endpoints.kafka, f"crmflow-process-{cfg.kafka.topic_prefix}",
                     processor_topics(cfg), [processor, sink], 300)
        metrics_page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).content
    finally:
        processor.stop()
        sink.stop()
    drain_sink(cfg, endpoints, run.target_dsn)

    mapped = [v for e in cfg.entities for v in _topic_values(endpoints, cfg.kafka.mapped_topic(e))]
    assert len(mapped) > 5000
    assert _hits(mapped, pii) == []
    assert _hits(_topic_values(endpoints, cfg.kafka.dlq_topic), pii) == []
    logs = [p.read_bytes() for p in tmp_path.glob("*.log")]
    assert sum(map(len, logs)) > 0
    assert _hits(logs, pii) == []
    assert b"crmflow_records_total" in metrics_page
    assert _hits([metrics_page], pii) == []
    with psycopg.connect(run.target_dsn) as conn:
        rows = conn.execute("select row_to_json(a)::text from crm.accounts a union all "
                            "select row_to_json(c)::text from crm.contacts c").fetchall()
    assert len(rows) > 3000
    assert _hits([r[0].encode() for r in rows], pii) == []
    os.environ.pop("CRMFLOW_PII_KEY", None)


def test_production_profile_writes_real_values_to_the_target_only(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient,
) -> None:
    """The control: in production the same search finds the PII in the target, but not in the DLQ."""
    run = run_factory(small_dataset, dedupe=True)
    res = run.cli("migrate", "-c", str(run.config), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    pii = _pii(small_dataset)
    with psycopg.connect(run.target_dsn) as conn:
        rows = conn.execute("select row_to_json(a)::text from crm.accounts a").fetchall()
    assert _hits([r[0].encode() for r in rows], pii) != []
    assert _hits(_topic_values(endpoints, load_config(run.config).kafka.dlq_topic), pii) == []
    assert _hits([res.stderr.encode()], pii) == []
