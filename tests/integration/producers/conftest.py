"""Fixtures of the producer integration tests: a unique topic prefix per test, reading topics back."""

from __future__ import annotations

import contextlib
import csv
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.config import MigrationConfig, load_config
from crmflow.serialization import AvroCodec, topic_subject
from crmflow.stack import Endpoints


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any]


@pytest.fixture
def topic_prefix(admin: AdminClient) -> Iterator[str]:
    """A topic prefix no other test uses; every topic under it is deleted after the test."""
    prefix = f"t-snap-{uuid.uuid4().hex[:10]}"
    yield prefix
    mine = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix + ".")]
    if mine:
        for fut in admin.delete_topics(mine).values():
            with contextlib.suppress(Exception):  # best-effort clean-up
                fut.result(timeout=30)


@pytest.fixture
def read_topic(
    endpoints: Endpoints, registry_client: SchemaRegistryClient, group_factory: Callable[[], str]
) -> Callable[[str], list[Consumed]]:
    """``read_topic(topic)``: every message now in ``topic`` (up to the high watermarks), decoded."""

    def read(topic: str) -> list[Consumed]:
        codec = AvroCodec(registry_client, topic_subject(topic), "legacy/legacy_record", auto_register=False)
        consumer = Consumer(
            {**endpoints.kafka.client_config(), "group.id": group_factory(), "enable.auto.commit": False}
        )
        try:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in meta.partitions}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0])
            todo = {p for p, end in ends.items() if end > 0}
            out: list[Consumed] = []
            deadline = time.monotonic() + 60
            while todo:
                assert time.monotonic() < deadline, f"{topic}: partitions {sorted(todo)} not read to the end"
                for msg in consumer.consume(1000, timeout=1.0):
                    assert msg.error() is None, msg.error()
                    p, off = msg.partition(), msg.offset()
                    assert p is not None and off is not None
                    out.append(Consumed(p, off, msg.key(), codec.decode(msg.value() or b"")))
                    if off + 1 >= ends[p]:
                        todo.discard(p)
            return out
        finally:
            consumer.close()

    return read


def _write_config(tmp_path: Path, prefix: str, sources: str, *, partitions: int = 3) -> MigrationConfig:
    """A migration config with ``sources`` (YAML lines, indented by 2) and a minimal account mapping."""
    path = tmp_path / "crmflow.yaml"
    path.write_text(
        f"run: {{name: itest}}\n"
        f"kafka: {{topic_prefix: {prefix}, partitions: {partitions}}}\n"
        f"sources:\n{sources}\n"
        "entities:\n  account:\n    fields:\n      - {source: Customer_ID, target: customer_id}\n"
    )
    return load_config(path)


def _expected_csv(path: Path) -> tuple[dict[str, dict[str, str]], set[str]]:
    """An independent oracle from the csv module: ``{position: row}`` of good lines, and bad positions.

    Good: the right field count and valid UTF-8 (read with surrogateescape, so bad bytes show up as
    surrogates instead of failing the whole file).
    """
    good: dict[str, dict[str, str]] = {}
    bad: set[str] = set()
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        line = reader.line_num
        for row in reader:
            position, line = f"{path.name}:{line + 1}", reader.line_num
            if not row:
                continue
            text = ",".join(row)
            if len(row) != len(header) or any("\udc80" <= ch <= "\udcff" for ch in text):
                bad.add(position)
            else:
                good[position] = dict(zip(header, row, strict=True))
    return good, bad


@pytest.fixture
def write_config() -> Callable[..., MigrationConfig]:
    """``write_config(tmp_path, prefix, sources_yaml, partitions=3) -> MigrationConfig``."""
    return _write_config


@pytest.fixture
def expected_csv() -> Callable[[Path], tuple[dict[str, dict[str, str]], set[str]]]:
    """``expected_csv(path) -> ({position: row} of good lines, {positions of bad lines})``."""
    return _expected_csv
