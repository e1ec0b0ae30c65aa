"""What the deduplicating agent sends on: one golden-record update per clean account (or contact).

:func:`golden_account` turns a clean account (a source record) and what the deduper decided about it
into the account record the sink writes: the cluster's surviving values under the record's own
``customer_id`` and lineage, ``golden_id``, the golden ids the arrival absorbed (``merged_golden_ids``)
and the decisions as JSON evidence (ids, rules and scores; no personal data). The sink keeps one account
per golden id and a cross-reference from every source record to it.

:func:`golden_contact` does the same for a clean contact. Its golden id goes in ``contact_golden_id`` (the
contact's ``golden_id`` is its parent account's golden id, which the sink fills), the golden ids it absorbed
in ``merged_contact_golden_ids``, and ``customer_id`` is the golden record's parent: the target attaches
the golden contact to that account's golden record.
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
#: Contact fields that come from the golden record (its parent account too: ``customer_id``).
CONTACT_GOLDEN_FIELDS: Final = ("full_name", "first_name", "last_name", "email", "phone", "job_title", "customer_id")


def golden_account(record: Mapping[str, Any], result: DedupeResult) -> dict[str, Any]:
    """The account to send for ``record`` once the deduper resolved it into ``result``."""
    out = _survivors(record, result, GOLDEN_FIELDS)
    out["golden_id"] = result.golden_id
    out["merged_golden_ids"] = _merged(result)
    out["match_evidence"] = _evidence(result)
    return out


def golden_contact(record: Mapping[str, Any], result: DedupeResult) -> dict[str, Any]:
    """The contact to send for ``record`` once the contact deduper resolved it into ``result``: the golden
    contact's values and parent (``customer_id``), its golden id in ``contact_golden_id``; ``golden_id`` (the
    parent account's golden id) is left as the record has it."""
    out = _survivors(record, result, CONTACT_GOLDEN_FIELDS)
    if not out.get("customer_id"):  # every member has a parent; keep the record's as a guard
        out["customer_id"] = record.get("customer_id")
    out["contact_golden_id"] = result.golden_id
    out["merged_contact_golden_ids"] = _merged(result)
    out["match_evidence"] = _evidence(result)
    return out


def _survivors(record: Mapping[str, Any], result: DedupeResult, fields: tuple[str, ...]) -> dict[str, Any]:
    out = dict(record)
    golden = result.golden_record
    for name in fields:  # dates back from the state's ISO strings
        value = golden.get(name)
        out[name] = date.fromisoformat(value) if name in _DATES and isinstance(value, str) else value
    if not out.get("full_name"):  # a golden record always has a name part; keep the record's as a guard
        out["full_name"] = record.get("full_name")
    return out


def _merged(result: DedupeResult) -> list[str]:
    # The cluster's whole absorption history, not only this arrival's: replayed after a crash, the
    # record that bridged two clusters finds them merged already and reports no merge of its own.
    if not result.absorbed and not result.cluster_merges:  # most records
        return []
    return sorted({*result.absorbed, *(absorbed for absorbed, _ in result.cluster_merges)})


def _evidence(result: DedupeResult) -> str | None:
    decisions = [e for e in result.evidence if e.get("decision") != "updated"]
    return json.dumps(decisions, separators=(",", ":"), sort_keys=True) if decisions else None
