"""Incremental clustering: golden ids, bridging merges, refusals, updates, evidence, state as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from datetime import date
from typing import Any

import pytest

from processors.dedupe import DedupeConfig, Deduper, DedupeState, RecordWithoutId

pytestmark = pytest.mark.unit

#: The clustering mechanics here (bridges, refusals, updates) are pinned on the points scorer, whose name
#: floors keep two bare records of one name apart; the Fellegi-Sunter default merges them on name and address.
POINTS = DedupeConfig(scoring="points")

BARE = {"birth_date": None, "street": None, "city": None, "postal_code": None}  # only names, e-mail, phone


def test_duplicates_join_a_cluster_whose_golden_id_is_its_smallest_member_id(account: Any) -> None:
    deduper = Deduper(POINTS)
    first = deduper.process(account(customer_id="C0000007"))
    second = deduper.process(account(customer_id="C0000009", first_name="J.", email=None))
    third = deduper.process(account(customer_id="C0000003", first_name="John D.", phone=None))
    assert first.golden_id == "C0000007" and first.merged_into is None and first.evidence == []
    assert second.golden_id == "C0000007"  # a larger id joins: the golden id stays
    assert second.merged_into == "C0000007" and second.cluster_merges == []
    assert [(e["rule"], e["matched_id"], e["decision"]) for e in second.evidence] == [("phone", "C0000007", "merged")]
    # A smaller id joins: the cluster takes its id, the old golden id is absorbed (the sink re-points it).
    assert third.golden_id == third.merged_into == "C0000003"
    assert third.cluster_merges == [("C0000007", "C0000003")] and third.absorbed == ["C0000007"]
    assert third.golden_record["member_count"] == 3 and third.golden_record["first_name"] == "John"
    assert deduper.state.goldens["C0000003"]["members"] == ["C0000003", "C0000007", "C0000009"]
    assert "C0000007" not in deduper.state.goldens
    assert {deduper.state.clusters[r] for r in ("C0000003", "C0000007", "C0000009")} == {"C0000003"}


def test_a_late_record_bridging_two_clusters_merges_them(account: Any) -> None:
    deduper = Deduper(POINTS)
    a = deduper.process(account(customer_id="C0000005", phone=None, **BARE))
    b = deduper.process(account(customer_id="C0000003", email=None, phone="+14146519999", **BARE))
    assert a.golden_id == "C0000005" and b.golden_id == "C0000003"  # name alone: two clusters
    bridge = deduper.process(account(customer_id="C0000008", phone="+14146519999", **BARE))
    assert bridge.golden_id == "C0000003"  # the smaller golden id survives
    assert bridge.merged_into == "C0000003"
    assert bridge.cluster_merges == [("C0000005", "C0000003")]
    assert {e["rule"] for e in bridge.evidence} == {"email", "phone"}
    st = deduper.state
    assert {st.clusters[r] for r in ("C0000003", "C0000005", "C0000008")} == {"C0000003"}
    assert "C0000005" not in st.goldens
    assert st.goldens["C0000003"]["members"] == ["C0000003", "C0000005", "C0000008"]


def test_joining_is_refused_when_the_cluster_would_hold_two_birth_dates(account: Any) -> None:
    deduper = Deduper(POINTS)
    deduper.process(account(customer_id="C1", phone=None))
    deduper.process(account(customer_id="C2", birth_date=None))  # joins C1 by e-mail
    other = deduper.process(account(customer_id="C3", email=None, birth_date=date(1980, 2, 2)))
    # C3 shares C2's phone and C2 has no birth date, but C2's cluster knows C1's birth date.
    assert other.golden_id == "C3" and other.merged_into is None
    refused = [e for e in other.evidence if e["decision"] == "refused"]
    assert [(e["matched_id"], e["veto"]) for e in refused] == [("C2", "birth_date")]
    vetoed = [e for e in other.evidence if e["decision"] == "vetoed"]
    assert [(e["matched_id"], e["veto"]) for e in vetoed] == [("C1", "birth_date")]


def test_clusters_do_not_grow_beyond_the_limit(account: Any) -> None:
    deduper = Deduper(DedupeConfig(scoring="points", max_cluster_size=2))
    results = [deduper.process(account(customer_id=f"C{i}")) for i in range(3)]
    assert [r.golden_id for r in results] == ["C0", "C0", "C2"]
    assert results[2].evidence[0]["decision"] == "refused" and results[2].evidence[0]["veto"] == "cluster_size"


def test_an_update_replaces_features_and_block_memberships(account: Any) -> None:
    config = DedupeConfig(scoring="points", hash_block_keys=False)
    deduper = Deduper(config)
    deduper.process(account(customer_id="C1"))
    deduper.process(account(customer_id="C2", first_name="J."))
    updated = deduper.process(account(customer_id="C1", email="new@example.com"))
    assert updated.updated and updated.golden_id == "C1" and updated.cluster_merges == []
    assert updated.evidence[0] == {"rule": "external_id", "score": None, "matched_id": "C1", "golden_id": "C1",
                                   "decision": "updated"}  # fmt: skip
    blocks = deduper.state.blocks
    assert blocks["e|john.doe1@example.com"] == ["C2"] and blocks["e|new@example.com"] == ["C1"]
    assert deduper.state.records["C1"]["em"] == "new@example.com"
    assert updated.golden_record["member_count"] == 2


def test_an_update_can_bridge_to_another_cluster(account: Any) -> None:
    deduper = Deduper(POINTS)
    deduper.process(account(customer_id="C1", phone=None, **BARE))
    deduper.process(account(customer_id="C2", email=None, phone="+14146519999", **BARE))
    result = deduper.process(account(customer_id="C2", phone="+14146519999", **BARE))  # now with C1's e-mail
    assert result.updated and result.golden_id == "C1" and result.cluster_merges == [("C2", "C1")]


def test_a_record_without_id_is_rejected(account: Any) -> None:
    with pytest.raises(RecordWithoutId, match="customer_id"):
        Deduper(POINTS).process(account(customer_id=None, source_position="customers.csv:9"))


def test_contacts_cluster_by_parent_and_name(contact: Any) -> None:
    deduper = Deduper(DedupeConfig(scoring="points", entity="contact"))
    deduper.process(contact())
    same = deduper.process(contact(contact_id="K2", first_name="J.", email=None, phone=None))
    other_parent = deduper.process(contact(contact_id="K3", customer_id="C9", email=None, phone=None))
    joined = deduper.process(
        contact(contact_id="K4", customer_id="C9", email=None, phone=None), parent_golden_id="C0000001"
    )
    assert same.golden_id == "K0000001" and other_parent.golden_id == "K3"
    assert joined.golden_id == "K0000001"


class JsonTable(MutableMapping[str, Any]):
    """Stores values as JSON text, as a changelog-backed table does: a read returns a fresh copy, so a
    change made in place to a value read from it is lost unless the value is assigned back."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def __getitem__(self, key: str) -> Any:
        return json.loads(self.data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        assert isinstance(key, str)
        self.data[key] = json.dumps(value)

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def _stream(account: Any) -> list[dict[str, Any]]:
    return [
        account(customer_id="C1", phone=None, **BARE),
        account(customer_id="C2", email=None, phone="+14146519999", **BARE),
        account(customer_id="C3", first_name="J.", email=None),
        account(customer_id="C4", phone="+14146519999", **BARE),
        account(customer_id="C5", first_name="Mary", birth_date=date(1990, 3, 3)),
        account(customer_id="C3", first_name="Jon", email=None),
        account(customer_id="C6", first_name="Doe", last_name="John", email=None, phone=None),
    ]


def test_state_in_json_tables_gives_the_same_results_as_plain_dicts(account: Any) -> None:
    plain = Deduper(POINTS, DedupeState())
    tables = Deduper(POINTS, DedupeState(JsonTable(), JsonTable(), JsonTable(), JsonTable()))
    for record in _stream(account):
        assert tables.process(record) == plain.process(record)
    assert tables.state.to_json() == plain.state.to_json()


def test_state_survives_a_json_round_trip_mid_stream(account: Any) -> None:
    records = _stream(account)
    uninterrupted = Deduper(POINTS)
    for record in records:
        uninterrupted.process(record)
    first = Deduper(POINTS)
    for record in records[:3]:
        first.process(record)
    restored = Deduper(POINTS, DedupeState.from_json(first.state.to_json()))
    for record in records[3:]:
        restored.process(record)
    assert restored.state.to_json() == uninterrupted.state.to_json()


def test_same_input_order_gives_the_same_golden_ids_and_state(account: Any) -> None:
    runs = []
    for _ in range(2):
        deduper = Deduper(POINTS)
        ids = [deduper.process(r).golden_id for r in _stream(account)]
        runs.append((ids, deduper.state.to_json()))
    assert runs[0] == runs[1]
    assert runs[0][0] == ["C1", "C2", "C3", "C1", "C5", "C3", "C3"]


def test_a_forgotten_record_leaves_its_cluster_and_its_blocks(account: Any) -> None:
    """A record deleted at the source: the cluster keeps its golden id with the members left, its golden value
    no longer holds the record's values, a later record meets it no more, and the last member takes the cluster
    with it. A record this deduper never saw is not known."""
    deduper = Deduper(POINTS)
    deduper.process(account(customer_id="C0000003", phone="+14146510001", city="Dallas"))
    deduper.process(account(customer_id="C0000007", phone=None, city="Austin"))  # same e-mail: one cluster
    st = deduper.state
    assert st.goldens["C0000003"]["members"] == ["C0000003", "C0000007"]
    assert deduper.forget("C0000003") == "C0000003"
    assert st.goldens["C0000003"]["members"] == ["C0000007"], "the golden id stays, as the target's row does"
    golden = deduper.golden("C0000003")
    assert golden is not None and golden["phone"] is None and golden["city"] == "Austin", "only C7's values left"
    assert "C0000003" not in st.records and "C0000003" not in st.clusters
    assert all("C0000003" not in ids for ids in st.blocks.values())
    # A record that shares only the forgotten one's phone founds a cluster of its own.
    alone = deduper.process(account(customer_id="C0000009", email=None, phone="+14146510001", **BARE))
    assert alone.golden_id == "C0000009" and alone.merged_into is None
    assert deduper.forget("C0000007") == "C0000003"
    assert "C0000003" not in st.goldens and "C0000007" not in st.records
    assert deduper.forget("C0000404") is None
