"""Throughput over a run: once a second, how far the snapshot, the processors and the sink have got.

Nothing in the stages has to report: the sampler reads Kafka, which already knows. Records read are the
raw topics' end offsets, records processed the processor group's committed offsets on them, and records
written the sink group's committed offsets on the mapped topics (the sink commits only after a flush
landed in the target). Counts start at zero when the run starts; offsets also count the transaction
markers of the transactional producers, about one per partition per transaction, so the figures are a
fraction of a percent high. A read that fails (a broker away) skips that second.

The samples go into ``run.json`` (``timeline``), thinned to at most :data:`MAX_SAMPLES` by doubling the
interval, and the migration report draws them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from crmflow.connections import KafkaConnection, kafka_config

__all__ = ["COLUMNS", "MAX_SAMPLES", "ThroughputSampler"]

log = logging.getLogger(__name__)

COLUMNS: Final = ("t_s", "read", "processed", "written")
MAX_SAMPLES: Final = 1800
_RPC_TIMEOUT_S: Final = 5.0


class ThroughputSampler:
    """A daemon thread sampling cumulative counts every ``interval_s`` while the run goes on.

    Use it as a context manager around the stages; :meth:`timeline` is the JSON for ``run.json``.
    """

    def __init__(
        self,
        kafka: KafkaConnection | str,
        *,
        raw_topics: list[str],
        process_group: str,
        mapped_topics: list[str],
        sink_group: str,
        interval_s: float = 1.0,
    ) -> None:
        self._kafka = kafka
        self._raw, self._mapped = raw_topics, mapped_topics
        self._groups = (process_group, sink_group)
        self.interval_s = interval_s
        self.samples: list[list[float | int]] = []
        self._base: tuple[int, int, int] | None = None
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="throughput-sampler", daemon=True)

    def __enter__(self) -> ThroughputSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * _RPC_TIMEOUT_S + self.interval_s)

    def timeline(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "columns": list(COLUMNS), "samples": [list(s) for s in self.samples]}

    def _consumer(self, group: str) -> Consumer:
        return Consumer(kafka_config(self._kafka, {"group.id": group, "enable.auto.commit": False}))

    def _loop(self) -> None:
        process = self._consumer(self._groups[0])
        sink = self._consumer(self._groups[1])
        partitions: dict[str, list[TopicPartition]] = {}
        refreshed = 0.0
        try:
            while not self._stop.is_set():
                tick = time.monotonic()
                try:
                    if tick - refreshed > 10.0 or not partitions:  # topics are created while the run starts
                        partitions = self._partitions(process)
                        refreshed = tick
                    self._sample(process, sink, partitions, tick)
                except KafkaException as exc:
                    log.debug("throughput sample skipped: %s", exc)
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - tick)))
            try:  # the final counts, once the stages stopped
                self._sample(process, sink, self._partitions(process), time.monotonic())
            except KafkaException as exc:
                log.debug("last throughput sample skipped: %s", exc)
        finally:
            process.close()
            sink.close()

    def _partitions(self, consumer: Consumer) -> dict[str, list[TopicPartition]]:
        md = consumer.list_topics(timeout=_RPC_TIMEOUT_S)
        return {
            kind: [TopicPartition(t, p) for t in topics if t in md.topics for p in md.topics[t].partitions]
            for kind, topics in (("raw", self._raw), ("mapped", self._mapped))
        }

    @staticmethod
    def _committed(consumer: Consumer, tps: list[TopicPartition]) -> int:
        if not tps:
            return 0
        return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=_RPC_TIMEOUT_S))

    def _sample(self, process: Consumer, sink: Consumer, parts: dict[str, list[TopicPartition]], now: float) -> None:
        read = sum(process.get_watermark_offsets(tp, timeout=_RPC_TIMEOUT_S)[1] for tp in parts["raw"])
        counts = (read, self._committed(process, parts["raw"]), self._committed(sink, parts["mapped"]))
        if self._base is None:
            self._base = counts
        row: list[float | int] = [round(now - self._started, 2)]
        row += [max(0, c - b) for c, b in zip(counts, self._base, strict=True)]
        self.samples.append(row)
        if len(self.samples) > MAX_SAMPLES:
            self.samples = self.samples[::2]
            self.interval_s *= 2
