"""The batch runtime every consuming stage runs on: consume a batch, hand it to a pure stage function,
produce its outputs and commit its input offsets in one Kafka transaction.

A stage (:class:`~crmflow.runtime.stage.BatchStage`) never touches Kafka: it gets decoded records and
returns records per topic, dead letters and state writes (:class:`~crmflow.runtime.stage.StageOutput`).
The runtime (:class:`~crmflow.runtime.loop.TransactionalRuntime`) owns the rest: the consumer group
(cooperative-sticky), decoding, encoding, producing, the transaction, offsets, partition-local state
restored from its changelog, metrics, lag and a clean stop on SIGTERM.
"""

from crmflow.runtime.loop import RuntimeOptions, TransactionalRuntime
from crmflow.runtime.stage import BatchStage, InRecord, OutRecord, Rejection, StageOutput, StateWrite

__all__ = [
    "BatchStage",
    "InRecord",
    "OutRecord",
    "Rejection",
    "RuntimeOptions",
    "StageOutput",
    "StateWrite",
    "TransactionalRuntime",
]
