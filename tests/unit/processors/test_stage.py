"""The processor's pure batch stage, without Kafka: mapping, rejections, dedupe state writes and restores."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from crmflow.config import MigrationConfig, load_config
from crmflow.runtime import InRecord, StageOutput
from crmflow.serialization import JsonCodec, load_schema
from processors.mapping import build_mappers
from processors.masking import Masker
from processors.stage import ProcessStage
from tests.avro_round_trip import round_trip

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"
RAW_CUSTOMERS = "crmflow.demo.raw.customers"
RAW_SALES = "crmflow.demo.raw.sales"
DEDUPE = "crmflow.demo.dedupe.account"
RAW_CONTACTS = "crmflow.demo.raw.contacts"
CONTACTS = "crmflow.demo.dedupe.contact"
MAPPED_CONTACT = "crmflow.demo.mapped.contact"


class _Identity:
    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        raise AssertionError("the stage never decodes")

    def encode_many(self, objs: Any) -> list[bytes]:
        return [b"" for _ in objs]


@pytest.fixture(scope="module")
def demo() -> MigrationConfig:
    return load_config(DEMO)


def _stage(cfg: MigrationConfig, *, dedupe: bool, contacts: bool = False) -> ProcessStage:
    mappers = build_mappers(cfg)
    k = cfg.kafka
    raw = {k.raw_topic(n): s.entity for n, s in cfg.sources.items()}
    mapped = {e: k.mapped_topic(e) for e in mappers}
    matcher = cfg.dedupe.matcher() if dedupe and cfg.dedupe else None
    stage = ProcessStage(
        raw_topics=raw, mappers=mappers, masker=Masker.from_config(cfg), mapped_topics=mapped,
        decoders=dict.fromkeys([*raw, DEDUPE, CONTACTS], _Identity()),
        encoders=dict.fromkeys([*mapped.values(), DEDUPE, CONTACTS], _Identity()),
        dedupe=matcher, dedupe_topic=DEDUPE, changelog=f"{DEDUPE}.state",
        contact_dedupe=matcher.for_contacts() if matcher is not None and contacts else None,
        contact_topic=CONTACTS, contact_changelog=f"{CONTACTS}.state",
    )
    return stage.with_sources({n: s.entity for n, s in cfg.sources.items()})


def _customer(i: int, first: str = "Anne", last: str = "Obrien", email: str | None = None) -> dict[str, Any]:
    return {"source": "customers", "entity": "customers", "source_key": f"C{i:07d}",
            "position": f"customers.csv:{i + 1}", "run_id": "run-1", "op": "SNAPSHOT", "captured_at": None,
            "fields": {"Customer_ID": f"C{i:07d}", "First_Name": first, "Last_Name": last,
                       "Contact_Email": email or f"{first}.{last}{i}@example.com".lower(), "Phone": "(212) 555-0134",
                       "Street_Address": "123 Main St.", "City": "New York", "Postal_Code": "10001",
                       "Country": "US", "Region": "NA", "Birth_Date": "03/04/1980", "Customer_Since": "2019-12-31"}}


def _rec(topic: str, offset: int, value: dict[str, Any], partition: int = 0, key: bytes | None = None) -> InRecord:
    return InRecord(topic, partition, offset, key, value, b"raw-bytes")


def test_a_raw_batch_maps_to_its_entity_topics_and_rejects_name_rule_and_field(demo: MigrationConfig) -> None:
    stage = _stage(demo, dedupe=False)
    bad = _customer(2)
    bad["fields"]["Customer_ID"] = "  "  # the key is required
    sale = {"source": "sales", "entity": "sales", "source_key": "S1", "position": "sales.csv:2", "run_id": "run-1",
            "op": "SNAPSHOT", "captured_at": None,
            "fields": {"Sale_ID": "S1", "Customer_ID": "C0000001", "Sales_Amount": "not money",
                       "Sale_Date": "2024-01-02", "Currency": "USD", "Product": "X"}}
    out = stage.process([_rec(RAW_CUSTOMERS, 0, _customer(1)), _rec(RAW_CUSTOMERS, 1, bad), _rec(RAW_SALES, 0, sale)])
    assert [(r.topic, r.key) for r in out.records] == [("crmflow.demo.mapped.account", b"C0000001")]
    assert out.records[0].value["full_name"] == "Anne Obrien"
    assert sorted((r.index, r.stage, r.rule) for r in out.rejections)[0][:1] == (1,)
    assert {r.index for r in out.rejections} == {1, 2}
    assert all(r.error and "Anne" not in r.error for r in out.rejections), "reasons carry no values"
    assert out.counts[("process", "account", "in")] == 2
    assert out.counts[("process", "account", "out")] == 1
    assert out.counts[("process", "account", "rejected")] == 1
    assert not out.state


def test_with_dedupe_clean_accounts_go_to_the_dedupe_topic_by_shard_key(demo: MigrationConfig) -> None:
    stage = _stage(demo, dedupe=True)
    out = stage.process([_rec(RAW_CUSTOMERS, 0, _customer(1))])
    assert [(r.topic, r.key) for r in out.records] == [(DEDUPE, b"ao")]
    assert out.records[0].value["email"] == "anne.obrien1@example.com", "unmasked: the matcher needs it"


def _resolve(stage: ProcessStage, accounts: list[dict[str, Any]], start: int = 0) -> StageOutput:
    return stage.process([_rec(DEDUPE, start + i, a, key=b"ao") for i, a in enumerate(accounts)])


def _accounts(demo: MigrationConfig, n: int) -> list[dict[str, Any]]:
    mapper = build_mappers(demo)["account"]
    meta = {"run_id": "run-1", "source": "customers", "source_position": "x"}
    same_email = "anne.obrien@example.com"
    return [mapper(_customer(i, email=same_email if i % 2 else None)["fields"], meta) for i in range(n)]


def test_resolution_writes_state_that_restores_to_the_same_decisions(demo: MigrationConfig) -> None:
    accounts = _accounts(demo, 6)
    whole = _stage(demo, dedupe=True)
    expected = _resolve(whole, accounts)
    assert expected.state, "the deduper's writes come out as state writes"
    assert {w.partition for w in expected.state} == {0}

    # A worker that processed the first half, committed, and crashed: its successor restores the
    # committed changelog and must decide the second half exactly as the uninterrupted worker did.
    first = _stage(demo, dedupe=True)
    committed = _resolve(first, accounts[:3])
    changelog: dict[bytes, bytes] = {}
    for w in committed.state:
        if w.value is None:
            changelog.pop(w.key, None)
        else:
            changelog[w.key] = w.value
    successor = _stage(demo, dedupe=True)
    successor.restore(DEDUPE, 0, changelog)
    rest = _resolve(successor, accounts[3:], start=3)
    assert [r.value["golden_id"] for r in rest.records] == [r.value["golden_id"] for r in expected.records[3:]]
    assert [r.value["merged_golden_ids"] for r in rest.records] == [
        r.value["merged_golden_ids"] for r in expected.records[3:]]


def test_a_released_partition_forgets_its_state(demo: MigrationConfig) -> None:
    accounts = _accounts(demo, 2)
    stage = _stage(demo, dedupe=True)
    first = _resolve(stage, accounts[1:2])
    stage.release(DEDUPE, [0])
    again = _resolve(stage, accounts[1:2])
    decisions: Mapping[tuple[str, str], int] = again.decisions
    assert decisions.get(("account", "founded")) == 1, "after a release the record is new to the partition"
    assert first.records[0].value["golden_id"] == again.records[0].value["golden_id"]
    assert all(orjson.loads(w.value) is not None for w in again.state if w.value is not None)


# ------------------------------------------------------------------------------------------- contacts


def _raw_contact(i: int, customer: int, first: str = "Anne", last: str = "Obrien", email: str = "",
                 title: str = "Buyer") -> dict[str, Any]:
    return {"source": "contacts", "entity": "contacts", "source_key": f"K{i:07d}",
            "position": f"contacts.csv:{i + 1}", "run_id": "run-1", "op": "SNAPSHOT", "captured_at": None,
            "fields": {"Contact_ID": f"K{i:07d}", "Customer_ID": f"C{customer:07d}", "First_Name": first,
                       "Last_Name": last, "Contact_Email": email, "Phone": "", "Job_Title": title}}


def _contacts(demo: MigrationConfig) -> list[dict[str, Any]]:
    """Clean contacts: K1 and K2 the same person on one account (same e-mail), K3 and K4 namesakes on other
    accounts with nothing else in common, K5 the same person as K1 on another account (same e-mail)."""
    mapper = build_mappers(demo)["contact"]
    meta = {"run_id": "run-1", "source": "contacts", "source_position": "x"}
    raws = [_raw_contact(1, 1, email="anne@example.com"), _raw_contact(2, 1, first="Ann", email="anne@example.com"),
            _raw_contact(3, 2, title="Nurse"), _raw_contact(4, 3, title="Pilot"),
            _raw_contact(5, 4, email="anne@example.com")]
    return [mapper(r["fields"], meta) for r in raws]


def _resolve_contacts(stage: ProcessStage, contacts: list[dict[str, Any]], start: int = 0) -> StageOutput:
    return stage.process([_rec(CONTACTS, start + i, c, key=b"ao") for i, c in enumerate(contacts)])


def test_with_contact_dedupe_clean_contacts_go_to_their_dedupe_topic_by_shard_key(demo: MigrationConfig) -> None:
    stage = _stage(demo, dedupe=True, contacts=True)
    assert stage.changelogs == {DEDUPE: f"{DEDUPE}.state", CONTACTS: f"{CONTACTS}.state"}
    assert set(stage.internal_topics()) == {DEDUPE, CONTACTS} and CONTACTS in stage.topics
    out = stage.process([_rec(RAW_CONTACTS, 0, _raw_contact(1, 1, email="anne@example.com")),
                         _rec(RAW_CUSTOMERS, 0, _customer(1))])
    assert sorted((r.topic, r.key) for r in out.records) == [(DEDUPE, b"ao"), (CONTACTS, b"ao")]
    contact = next(r.value for r in out.records if r.topic == CONTACTS)
    assert contact["email"] == "anne@example.com", "unmasked: the matcher needs it"
    assert not out.state, "mapping writes no state"


def test_without_contact_dedupe_contacts_go_straight_to_the_mapped_topic(demo: MigrationConfig) -> None:
    stage = _stage(demo, dedupe=True, contacts=False)
    assert stage.changelogs == {DEDUPE: f"{DEDUPE}.state"} and CONTACTS not in stage.topics
    out = stage.process([_rec(RAW_CONTACTS, 0, _raw_contact(1, 1))])
    assert [(r.topic, r.key) for r in out.records] == [(MAPPED_CONTACT, b"K0000001")]
    assert "contact_golden_id" not in out.records[0].value


def test_contacts_resolve_into_golden_contacts_with_their_own_state(demo: MigrationConfig) -> None:
    stage = _stage(demo, dedupe=True, contacts=True)
    out = _resolve_contacts(stage, _contacts(demo))
    assert [r.topic for r in out.records] == [MAPPED_CONTACT] * 5
    values = [r.value for r in out.records]
    assert [v["contact_golden_id"] for v in values] == ["K0000001", "K0000001", "K0000003", "K0000004", "K0000001"]
    assert all(v["golden_id"] is None for v in values), "golden_id stays the parent account's (the sink fills it)"
    assert [v["contact_id"] for v in values] == [f"K{i:07d}" for i in range(1, 6)], "each keeps its own id"
    assert values[1]["customer_id"] == "C0000001" and values[1]["match_evidence"] is not None
    assert values[2]["match_evidence"] is None and values[2]["merged_contact_golden_ids"] == []
    assert {w.topic for w in out.state} == {CONTACTS}, "contact state goes to the contact changelog only"
    assert out.decisions[("contact", "joined")] == 2 and out.counts[("dedupe", "contact", "in")] == 5


def test_a_contact_bridging_two_clusters_reports_the_absorbed_golden_contact(demo: MigrationConfig) -> None:
    stage = _stage(demo, dedupe=True, contacts=True)
    k1, k2, _, _, k5 = _contacts(demo)
    # K5 first founds a cluster; K2 (same e-mail) then joins it; K1 (smaller id) takes it over.
    out = _resolve_contacts(stage, [k5, k2, k1])
    assert [r.value["contact_golden_id"] for r in out.records] == ["K0000005", "K0000002", "K0000001"]
    assert out.records[1].value["merged_contact_golden_ids"] == ["K0000005"]
    assert out.records[2].value["merged_contact_golden_ids"] == ["K0000002", "K0000005"], "the whole history"


def test_contact_state_restores_per_topic_to_the_same_decisions(demo: MigrationConfig) -> None:
    contacts = _contacts(demo)
    accounts = _accounts(demo, 4)
    whole = _stage(demo, dedupe=True, contacts=True)
    expected = _resolve_contacts(whole, contacts)

    first = _stage(demo, dedupe=True, contacts=True)
    committed_contacts = _resolve_contacts(first, contacts[:2])
    committed_accounts = _resolve(first, accounts)
    changelogs: dict[str, dict[bytes, bytes]] = {DEDUPE: {}, CONTACTS: {}}
    for w in [*committed_contacts.state, *committed_accounts.state]:
        if w.value is None:
            changelogs[w.topic].pop(w.key, None)
        else:
            changelogs[w.topic][w.key] = w.value
    assert changelogs[DEDUPE] and changelogs[CONTACTS]
    successor = _stage(demo, dedupe=True, contacts=True)
    successor.restore(DEDUPE, 0, changelogs[DEDUPE])
    successor.restore(CONTACTS, 0, changelogs[CONTACTS])
    rest = _resolve_contacts(successor, contacts[2:], start=2)
    assert [r.value["contact_golden_id"] for r in rest.records] == [
        r.value["contact_golden_id"] for r in expected.records[2:]]

    # Releasing the account partition 0 leaves the contact partition 0 as it is, and the other way round.
    successor.release(DEDUPE, [0])
    again = _resolve_contacts(successor, contacts[4:], start=4)
    assert again.decisions.get(("contact", "updated")) == 1, "the contact state of partition 0 is still there"
    successor.release(CONTACTS, [0])
    fresh = _resolve_contacts(successor, contacts[4:], start=5)
    assert fresh.decisions.get(("contact", "founded")) == 1, "after its release the contact is new to the partition"


def test_dedupe_contacts_is_on_by_default_and_false_keeps_contacts_out_of_the_stream(demo: MigrationConfig) -> None:
    from processors.service import dedupe_entities

    assert demo.dedupe is not None and demo.dedupe.contacts
    assert dedupe_entities(demo) == ["account", "contact"]
    off = demo.model_copy(update={"dedupe": demo.dedupe.model_copy(update={"contacts": False})})
    assert dedupe_entities(off) == ["account"]
    assert dedupe_entities(demo.model_copy(update={"dedupe": None})) == []
    assert "contacts" not in demo.dedupe.matcher().model_dump(), "the matcher's config has no stream settings"


def test_the_dedupe_topics_json_gives_the_matcher_what_an_avro_round_trip_gives(demo: MigrationConfig) -> None:
    """The clean records cross their dedupe topic as JSON: decoded, each equals its Avro round trip (dates,
    instants cut to the millisecond, defaults, no stray keys), so the matcher's input did not change."""
    stage = _stage(demo, dedupe=True, contacts=True)
    undated = _customer(2, "Bob", "Stone")
    undated["fields"].update(Birth_Date="", Customer_Since="not a date", Phone="")
    out = stage.process([_rec(RAW_CUSTOMERS, 0, _customer(1)), _rec(RAW_CUSTOMERS, 1, undated),
                         _rec(RAW_CONTACTS, 0, _raw_contact(1, 1, email="anne@example.com")),
                         _rec(RAW_CONTACTS, 1, _raw_contact(2, 2))])
    hops = [(r.topic, r.value) for r in out.records if r.topic in (DEDUPE, CONTACTS)]
    assert sorted(t for t, _ in hops) == [DEDUPE, DEDUPE, CONTACTS, CONTACTS]
    cdc_like = {**hops[0][1], "source_lsn": 2**40 + 7, "unchanged_fields": ["phone"], "stray": object()}
    hops.append((DEDUPE, cdc_like))
    for topic, value in hops:
        schema = load_schema(f"target/{'account' if topic == DEDUPE else 'contact'}")
        codec = JsonCodec(schema)
        via_avro = round_trip(schema, value)
        via_json = codec.decode(codec.encode_many([value])[0])
        assert via_json == via_avro
        assert [type(v) for v in via_json.values()] == [type(v) for v in via_avro.values()]
    assert hops[0][1]["mapped_at"].microsecond % 1000, "the mapped instant has microseconds the hop must cut"
