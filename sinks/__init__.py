"""Write mapped records into the target CRM: the sink contract (``base``), the Kafka loop (``runner``)
and the targets (``postgres``). See :mod:`sinks.base` for how to add another target."""

from sinks.base import BatchingSink, BatchResult, FlushOutcome, HeldDeadLetter, Reject, RetryPolicy, Sink, SinkRecord

__all__ = [
    "BatchResult",
    "BatchingSink",
    "FlushOutcome",
    "HeldDeadLetter",
    "Reject",
    "RetryPolicy",
    "Sink",
    "SinkRecord",
]
