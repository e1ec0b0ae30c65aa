"""The runtime's bookkeeping of partition state over an eager (range) rebalance, on the callbacks alone: a state
partition that comes back keeps its state only when the group's committed offset is still the one this worker
committed; any other is released and restored from its changelog. (The Kafka side, two real members handing a
partition over and back, is tests/integration/core/test_runtime.py.)"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from confluent_kafka import TopicPartition

from crmflow.connections import KafkaConnection
from crmflow.runtime import BatchStage, InRecord, RuntimeOptions, StageOutput
from crmflow.runtime.loop import TransactionalRuntime
from crmflow.runtime.stage import Decoder, Encoder


class _Stage(BatchStage):
    name = "process"

    def __init__(self) -> None:
        self.changelogs = {"in": "in.state"}
        self.released: list[tuple[str, list[int]]] = []

    @property
    def topics(self) -> Sequence[str]:
        return ["in", "other"]

    def decoder(self, topic: str) -> Decoder:
        return None  # type: ignore[return-value]  # nothing is decoded here

    def encoder(self, topic: str) -> Encoder:
        return None  # type: ignore[return-value]

    def process(self, batch: Sequence[InRecord]) -> StageOutput:
        return StageOutput()

    def restore(self, topic: str, partition: int, entries: Mapping[bytes, bytes]) -> None:
        pass

    def release(self, topic: str, partitions: Iterable[int]) -> None:
        self.released.append((topic, list(partitions)))


class _Committed:
    """Answers ``committed`` with the offsets it was given: the one thing ``_on_assign`` asks the consumer."""

    def __init__(self, offsets: dict[tuple[str, int], int]) -> None:
        self.offsets = offsets

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.offsets.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass


def _runtime(strategy: str) -> tuple[TransactionalRuntime, _Stage]:
    stage = _Stage()
    opts = RuntimeOptions(kafka=KafkaConnection(bootstrap_servers="127.0.0.1:1"), group_id="g", transactional_id="t",
                          dlq_topic="dlq", client_config={"partition.assignment.strategy": strategy})
    return TransactionalRuntime(stage, opts, None), stage  # type: ignore[arg-type]  # no dead letters here


def _tps(*keys: tuple[str, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in keys]


def test_state_that_comes_back_unchanged_is_kept_and_state_another_member_wrote_on_is_restored() -> None:
    runtime, stage = _runtime("range")
    everything = _tps(("in", 0), ("in", 1), ("in", 2), ("other", 0))
    runtime._on_assign(_Committed({("in", 0): 10, ("in", 1): 20, ("in", 2): 30}), everything)  # type: ignore[arg-type]
    runtime._restore.clear()  # restored
    runtime._done.update({("in", 0): 15, ("in", 1): 25})  # committed by this worker since; ("in", 2): nothing
    stage.released.clear()

    runtime._on_revoke(_Committed({}), everything)  # type: ignore[arg-type]
    assert stage.released == [], "an eager revoke keeps the state until the assignment that follows"

    # Back: in/0 unchanged since our commit; in/1 moved on (another member committed); in/2 as it was assigned.
    runtime._on_assign(_Committed({("in", 0): 15, ("in", 1): 27, ("in", 2): 30}),  # type: ignore[arg-type]
                       _tps(("in", 0), ("in", 1), ("in", 2)))
    assert runtime._restore == {("in", 1)}
    assert stage.released == [("in", [1])]


def test_kept_state_that_does_not_come_back_is_released() -> None:
    runtime, stage = _runtime("range")
    runtime._on_assign(_Committed({("in", 0): 1, ("in", 1): 1}), _tps(("in", 0), ("in", 1)))  # type: ignore[arg-type]
    runtime._restore.clear()
    runtime._on_revoke(_Committed({}), _tps(("in", 0), ("in", 1)))  # type: ignore[arg-type]
    runtime._on_assign(_Committed({("in", 0): 1}), _tps(("in", 0)))  # type: ignore[arg-type]
    assert runtime._restore == set()
    assert stage.released == [("in", [1])]


def test_state_waiting_for_its_restore_or_of_an_unknown_offset_is_not_kept() -> None:
    runtime, stage = _runtime("range")
    runtime._on_assign(_Committed({}), _tps(("in", 0)))  # type: ignore[arg-type]  # broker silent: offset unknown
    runtime._on_revoke(_Committed({}), _tps(("in", 0)))  # type: ignore[arg-type]  # still waiting for its restore
    assert stage.released == [("in", [0])]


def test_a_cooperative_revoke_releases_at_once() -> None:
    runtime, stage = _runtime("cooperative-sticky")
    runtime._on_assign(_Committed({("in", 0): 5}), _tps(("in", 0)))  # type: ignore[arg-type]
    runtime._restore.clear()
    runtime._on_revoke(_Committed({}), _tps(("in", 0)))  # type: ignore[arg-type]
    assert stage.released == [("in", [0])]
