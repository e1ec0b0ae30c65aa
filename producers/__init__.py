"""Producers: legacy sources -> Kafka raw topics (``<prefix>.raw.<source>``, LegacyRecord envelopes).

``run_snapshot`` reads every configured source once (`crmflow snapshot`), resumably; see
:mod:`producers.snapshot`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use (PEP 562): importing a light module of the package (its config) must not pull in
# the snapshot producer and the registry client, which every `crmflow` command would then pay for.
_EXPORTS = {
    "SnapshotStats": "producers.report", "SourceStats": "producers.report", "new_run_id": "producers.runs",
    "SnapshotProducer": "producers.snapshot", "run_snapshot": "producers.snapshot",
    "SegmentFilter": "producers.sources", "SourceSpec": "producers.sources", "source_specs": "producers.sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'producers' has no attribute {name!r}")
