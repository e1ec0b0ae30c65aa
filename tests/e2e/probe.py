"""What a stage's group committed on its input and how far its output's transactions got, asked of the broker:
the tests that SIGKILL a stage mid-transaction time their kills and check their cuts with it."""

from __future__ import annotations

from confluent_kafka import Consumer, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from crmflow.config import MigrationConfig
from crmflow.stack import Endpoints


class Probe:
    """What the processor's group has committed, who owns what, and whether a transaction is open."""

    def __init__(self, ep: Endpoints, cfg: MigrationConfig) -> None:
        self.ep = ep
        self.group = f"crmflow-process-{cfg.kafka.topic_prefix}"
        self._consumer = Consumer({**ep.kafka.client_config(), "group.id": self.group,
                                   "enable.auto.commit": False})
        self._admin = AdminClient(ep.kafka.client_config())
        self._partitions: dict[str, list[TopicPartition]] = {}

    def _tps(self, topics: list[str]) -> list[TopicPartition]:
        for t in topics:
            if t not in self._partitions:
                md = self._consumer.list_topics(t, timeout=10)
                self._partitions[t] = [TopicPartition(t, p) for p in md.topics[t].partitions]
        return [tp for t in topics for tp in self._partitions[t]]

    def committed(self, topics: list[str]) -> int | None:
        """Input records (offsets) the group has committed on ``topics``; None while the coordinator cannot
        say (a transaction with pending offsets is open: a killed worker's, until its successor fences it)."""
        try:
            return sum(max(tp.offset, 0) for tp in self._consumer.committed(self._tps(topics), timeout=2))
        except KafkaException:
            return None

    def _ends(self, topics: list[str], level: IsolationLevel) -> dict[tuple[str, int], int]:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        tps = self._tps(topics)
        futures = self._admin.list_offsets({tp: latest for tp in tps}, isolation_level=level, request_timeout=10)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    def in_flight(self, topics: list[str]) -> int:
        """Partitions of ``topics`` holding records of an open transaction: end offset past the last stable one."""
        stable = self._ends(topics, IsolationLevel.READ_COMMITTED)  # the last stable offset
        high = self._ends(topics, IsolationLevel.READ_UNCOMMITTED)  # the high watermark
        return sum(1 for tp, end in high.items() if end > stable[tp])

    def stable(self, topics: list[str]) -> int:
        """Committed records (offsets up to the last stable one) on ``topics``, from the broker's log ends: known
        at once, unlike the group's offsets, which the coordinator withholds while a transaction holds pending
        ones (back-to-back transactions hold them nearly all the time)."""
        return sum(self._ends(topics, IsolationLevel.READ_COMMITTED).values())

    def owned(self, topic: str) -> dict[str, list[int]]:
        """The partitions of ``topic`` each member of the group owns, by the member's client id."""
        description = self._admin.describe_consumer_groups([self.group])[self.group].result(timeout=10)
        return {m.client_id: [tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic]
                for m in description.members}

    def stable_of(self, topic: str, partitions: list[int]) -> int:
        """Committed records on these partitions of ``topic`` (see :meth:`stable`)."""
        ends = self._ends([topic], IsolationLevel.READ_COMMITTED)
        return sum(ends.get((topic, p), 0) for p in partitions)

    def close(self) -> None:
        self._consumer.close()
