"""Producers: legacy sources -> Kafka raw topics (``<prefix>.raw.<source>``, LegacyRecord envelopes).

``run_snapshot`` reads every configured source once (`crmflow snapshot`), resumably; see
:mod:`producers.snapshot`.
"""

from __future__ import annotations

from producers.report import SnapshotStats, SourceStats
from producers.runs import new_run_id
from producers.snapshot import SnapshotProducer, run_snapshot
from producers.sources import SegmentFilter, SourceSpec, source_specs

__all__ = [
    "SegmentFilter",
    "SnapshotProducer",
    "SnapshotStats",
    "SourceSpec",
    "SourceStats",
    "new_run_id",
    "run_snapshot",
    "source_specs",
]
