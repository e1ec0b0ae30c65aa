"""What the deduplicating agent sends on: one golden-record update per clean account.

:func:`golden_account` turns a clean account (a source record) and what the deduper decided about it
into the account record the sink writes: the cluster's surviving values under the record's own
``customer_id`` and lineage, ``golden_id``, the golden ids the arrival absorbed (``merged_golden_ids``)
and the decisions as JSON evidence (ids, rules and scores; no personal data). The sink keeps one account
per golden id and a cross-reference from every source record to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from typing import Any, Final

from processors.dedupe.deduper import DedupeResult

#: Account fields that come from the golden record (the cluster's survivors), not from the member.
GOLDEN_FIELDS: Final = (
    "full_name", "first_name", "last_name", "email", "phone", "street", "city", "postal_code", "country",
    "region", "birth_date", "customer_since",
)  # fmt: skip
_DATES: Final = frozenset({"birth_date", "customer_since"})


def _value(name: str, value: Any) -> Any:
    if name in _DATES and isinstance(value, str):
        return date.fromisoformat(value)
    return value


def golden_account(record: Mapping[str, Any], result: DedupeResult) -> dict[str, Any]:
    """The account to send for ``record`` once the deduper resolved it into ``result``."""
    out = dict(record)
    golden = result.golden_record
    for name in GOLDEN_FIELDS:
        out[name] = _value(name, golden.get(name))
    if not out.get("full_name"):  # a golden record always has a name part; keep the record's as a guard
        out["full_name"] = record.get("full_name")
    out["golden_id"] = result.golden_id
    # The cluster's whole absorption history, not only this arrival's: replayed after a crash, the
    # record that bridged two clusters finds them merged already and reports no merge of its own.
    out["merged_golden_ids"] = sorted({*result.absorbed, *(absorbed for absorbed, _ in result.cluster_merges)})
    decisions = [e for e in result.evidence if e.get("decision") != "updated"]
    out["match_evidence"] = json.dumps(decisions, separators=(",", ":"), sort_keys=True) if decisions else None
    return out
