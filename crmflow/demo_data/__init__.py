"""``crmflow demo-data``: a deterministic legacy CRM dataset with injected quality problems.

:func:`generate` writes ``customers.csv``, ``contacts.csv``, ``sales.csv``, ``tickets.csv`` and the
ground truth ``truth.jsonl`` (see ``docs/data-contract.md``); :func:`load_legacy_db` loads the CSV files
into the PostgreSQL "legacy database".
"""

from __future__ import annotations

from crmflow.demo_data.rates import QualityRates, parse_rate_overrides, rate_names
from crmflow.demo_data.run import DEMO_FX_RATES, generate
from crmflow.demo_data.truth import FileSummary, Summary

__all__ = [
    "DEMO_FX_RATES",
    "FileSummary",
    "QualityRates",
    "Summary",
    "generate",
    "parse_rate_overrides",
    "rate_names",
]
