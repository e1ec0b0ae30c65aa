"""The source commit time travels as a Kafka header: the processor sets it on the mapped record of each change
(c, u, d; never a snapshot read), the sink observes ``crmflow_cdc_end_to_end_latency_seconds`` from it once the
target wrote the record (refused and parked records are not observed), and logs it when a benchmark asks."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from crmflow.runtime import InRecord
from crmflow.topics import SOURCE_COMMIT_HEADER
from processors.stage import ProcessStage
from sinks import telemetry
from sinks.base import BatchResult, Reject, RetryPolicy, Sink, SinkRecord
from sinks.stage import SinkStage
from tests.unit.processors.test_cdc import CUSTOMER, _envelope, _in
from tests.unit.processors.test_cdc import stage as stage

pytestmark = pytest.mark.unit


def test_the_processor_puts_the_source_commit_time_on_changes_only(stage: ProcessStage) -> None:
    out = stage.process([
        _in(0, _envelope("r", None, CUSTOMER, lsn=50)),
        _in(1, _envelope("c", None, {**CUSTOMER, "Customer_ID": "C0000002"}, lsn=100)),
        _in(2, _envelope("d", dict.fromkeys(CUSTOMER) | {"Customer_ID": "C0000001"}, None, lsn=300)),
    ])  # fmt: skip
    commit = str(_envelope("c", None, CUSTOMER)["source"]["ts_ms"]).encode()
    assert [r.headers for r in out.records] == [None, ((SOURCE_COMMIT_HEADER, commit),),
                                                ((SOURCE_COMMIT_HEADER, commit),)]


class _Refusing(Sink):
    """Refuses the record at index 0, parks the one at index 1, writes the rest."""

    def write_batch(self, batch: Sequence[SinkRecord]) -> BatchResult:
        return BatchResult(rejects=[Reject(0, "r", "refused")], parked=[1], written=len(batch) - 2)


def _count(entity: str) -> float:
    return REGISTRY.get_sample_value("crmflow_cdc_end_to_end_latency_seconds_count", {"entity": entity}) or 0.0


def test_the_sink_observes_written_changes_after_the_commit_and_logs_them_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "commits.jsonl"
    monkeypatch.setenv(telemetry.COMMIT_LOG_ENV, str(log))
    monkeypatch.setattr(telemetry, "_commit_log", None)
    source_ms = int(time.time() * 1000) - 1500
    header = [(SOURCE_COMMIT_HEADER, str(source_ms).encode())]

    def rec(offset: int, value: dict[str, object], headers: list[tuple[str, bytes]] | None = header) -> InRecord:
        return InRecord("t.mapped.contact", 0, offset, b"k", value, b"raw", headers)

    sink = SinkStage(_Refusing(), {"t.mapped.contact": "contact"}, {}, retry=RetryPolicy(attempts=1),
                     wait=lambda s: False)
    before, before_sum = _count("contact"), REGISTRY.get_sample_value(
        "crmflow_cdc_end_to_end_latency_seconds_sum", {"entity": "contact"}) or 0.0
    sink.process([rec(0, {"contact_id": "K1"}), rec(1, {"contact_id": "K2", "customer_id": "C9"}),
                  rec(2, {"contact_id": "K3", "source_lsn": 7}), rec(3, {"contact_id": "K4"}, None)])
    assert _count("contact") - before == 1  # K3 only: K1 refused, K2 parked, K4 no change (a snapshot row)
    observed = (REGISTRY.get_sample_value("crmflow_cdc_end_to_end_latency_seconds_sum", {"entity": "contact"})
                or 0.0) - before_sum
    assert 1.5 <= observed < 60
    telemetry._commit_log.close()  # type: ignore[union-attr]
    (line,) = log.read_text().splitlines()
    batch = json.loads(line)
    assert batch["t"] >= source_ms / 1000 + 1.5
    assert batch["r"] == [["contact", "K1", None, source_ms, "x", None, False],
                          ["contact", "K2", None, source_ms, "p", "C9", False],
                          ["contact", "K3", 7, source_ms, "w", None, False]]


def test_an_account_change_keeps_its_commit_header_through_deduplication() -> None:
    from crmflow.config import load_config
    from tests.unit.processors.test_sealing import DEDUPE, DEMO, _accounts, _stage

    cfg = load_config(DEMO)
    stage = _stage(cfg, None)
    stage.restore(DEDUPE, 0, {})
    a, b = _accounts(cfg, 2)
    header = [(SOURCE_COMMIT_HEADER, b"1700000000123")]
    out = stage.process([InRecord(DEDUPE, 0, 0, b"ao", a, b"", header), InRecord(DEDUPE, 0, 1, b"ao", b, b"")])
    resolved = [r for r in out.records if r.topic == cfg.kafka.mapped_topic("account")]
    assert [r.headers for r in resolved] == [((SOURCE_COMMIT_HEADER, b"1700000000123"),), None]
