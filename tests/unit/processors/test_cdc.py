"""Change envelopes → LegacyRecords (processors.cdc), and the processor stage mapping changes, without Kafka."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crmflow.config import MigrationConfig, load_config
from crmflow.runtime import InRecord
from processors.cdc import CdcSource, ChangeFormatError, envelope_to_legacy, format_lsn, pg_text
from processors.mapping import build_mappers
from processors.masking import Masker
from processors.stage import ProcessStage

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"
CDC = "crmflow.demo.cdc.legacy.customers"
COMMIT_MS = 1_700_000_000_123


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        ("plain", "plain"),
        ('{"a": 1}', '{"a": 1}'),  # jsonb: its canonical text, as the producer sends it
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-(2**40), "-1099511627776"),
        (Decimal("12.30"), "12.30"),  # numeric(p, 2) keeps its scale
        (Decimal("1E+3"), "1000"),
        (1.5, "1.5"),
        (100.0, "100"),
        (1e20, "1e+20"),
        (float("nan"), "NaN"),
        (date(2024, 2, 29), "2024-02-29"),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02 03:04:05+00"),
        (datetime(2024, 1, 2, 3, 4, 5, 120000, tzinfo=UTC), "2024-01-02 03:04:05.12+00"),
    ],
)
def test_values_take_postgresql_text_form(value: Any, text: str | None) -> None:
    assert pg_text(value) == text


def test_the_unchanged_marker_is_never_a_value() -> None:
    with pytest.raises(ValueError, match="Unchanged"):
        pg_text({})


def test_lsn_is_printed_as_postgresql_does() -> None:
    assert format_lsn(0x16B3748) == "0/16B3748"
    assert format_lsn((5 << 32) | 0xAB) == "5/AB"


def _envelope(
    op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, lsn: int = 0x16B3748
) -> dict[str, Any]:
    return {"before": before, "after": after, "op": op, "ts_ms": COMMIT_MS + 500,
            "source": {"connector": "crmflow", "db": "legacy", "schema": "legacy", "table": "customers", "lsn": lsn,
                       "txId": 7, "ts_ms": COMMIT_MS, "snapshot": op == "r"}}  # fmt: skip


ROW = {"customer_id": "C0000001", "first_name": "Anne", "notes": "x" * 10, "score": 3, "amount": Decimal("1.50"),
       "active": True, "born": date(1980, 3, 4), "email": None}  # fmt: skip


def _convert(envelope: dict[str, Any]) -> Any:
    return envelope_to_legacy(envelope, source="legacy_db", entity="account", key="customer_id", run_id="r1",
                              origin="t[0]@5")


@pytest.mark.parametrize(("op", "expected"), [("c", "INSERT"), ("u", "UPDATE"), ("r", "SNAPSHOT")])
def test_a_change_becomes_the_legacy_record_of_its_row(op: str, expected: str) -> None:
    change = _convert(_envelope(op, None, ROW))
    rec = change.record
    assert rec["op"] == expected and rec["source"] == "legacy_db" and rec["entity"] == "account"
    assert rec["source_key"] == "C0000001" and rec["run_id"] == "r1"
    assert rec["position"] == "legacy.customers@0/16B3748"
    assert rec["captured_at"] == datetime.fromtimestamp(COMMIT_MS / 1000, UTC)  # the commit, not ts_ms
    assert rec["fields"] == {"customer_id": "C0000001", "first_name": "Anne", "notes": "x" * 10, "score": "3",
                             "amount": "1.50", "active": "true", "born": "1980-03-04", "email": None}
    assert change.lsn == 0x16B3748 and change.unchanged == frozenset() and not change.deleted


def test_a_change_is_ordered_by_its_transaction_s_commit_lsn_and_positioned_at_its_own() -> None:
    """The commit order is the order of a row's changes: a change written before a snapshot chunk was read
    (lower WAL position) and committed after it (higher commit LSN) is the newer one."""
    envelope = _envelope("u", None, ROW, lsn=0x100)
    change = _convert({**envelope, "source": {**envelope["source"], "commit_lsn": 0x300}})
    assert change.lsn == 0x300 and change.record["position"] == "legacy.customers@0/100"
    assert _convert(envelope).lsn == 0x100  # an envelope without commit_lsn (an older producer): its own LSN


def test_an_unchanged_toasted_column_without_the_old_row_is_carried_as_unchanged() -> None:
    change = _convert(_envelope("u", None, {**ROW, "notes": {}}))
    assert "notes" not in change.record["fields"]
    assert change.unchanged == frozenset({"notes"})
    assert {} not in change.record["fields"].values()


def test_replica_identity_full_gives_the_unchanged_value_from_before() -> None:
    change = _convert(_envelope("u", {**ROW, "notes": "long text"}, {**ROW, "first_name": "Ann", "notes": {}}))
    assert change.record["fields"]["notes"] == "long text"
    assert change.record["fields"]["first_name"] == "Ann"
    assert change.unchanged == frozenset()


def test_a_delete_reads_its_old_row() -> None:
    key_only = dict.fromkeys(ROW) | {"customer_id": "C0000001"}
    change = _convert(_envelope("d", key_only, None))
    assert change.deleted and change.record["op"] == "DELETE"
    assert change.record["fields"]["customer_id"] == "C0000001" and change.record["fields"]["first_name"] is None


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (_envelope("x", None, ROW), "op 'x'"),
        (_envelope("c", None, None), "without its after row"),
        (_envelope("c", None, {**ROW, "customer_id": None}), "key column customer_id"),
    ],
)
def test_unreadable_changes_name_the_event(envelope: dict[str, Any], message: str) -> None:
    with pytest.raises(ChangeFormatError, match=message) as info:
        _convert(envelope)
    assert "t[0]@5" in str(info.value)


# ------------------------------------------------------------------------------------------- the stage


class _Identity:
    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        raise AssertionError("the stage never decodes")

    def encode_many(self, objs: Any) -> list[bytes]:
        return [b"" for _ in objs]


@pytest.fixture(scope="module")
def stage() -> ProcessStage:
    cfg: MigrationConfig = load_config(DEMO)
    mappers = build_mappers(cfg)
    k = cfg.kafka
    mapped = {e: k.mapped_topic(e) for e in mappers}
    built = ProcessStage(
        raw_topics={}, mappers=mappers, masker=Masker.from_config(cfg), mapped_topics=mapped,
        decoders={CDC: _Identity()}, encoders=dict.fromkeys(mapped.values(), _Identity()),
        cdc_topics={CDC: CdcSource("customers", "account", "Customer_ID")}, run_id="demo-cdc",
    )  # fmt: skip
    return built.with_sources({n: s.entity for n, s in cfg.sources.items()})


CUSTOMER = {"Customer_ID": "C0000001", "First_Name": "anne", "Last_Name": "obrien", "Contact_Email": "a@example.com",
            "Phone": "(212) 555-0134", "Street_Address": "123 Main St.", "City": "New York", "Postal_Code": "10001",
            "Country": "US", "Region": "NA", "Birth_Date": "03/04/1980", "Customer_Since": "2019-12-31"}  # fmt: skip


def _in(offset: int, envelope: dict[str, Any]) -> InRecord:
    return InRecord(CDC, 0, offset, b"k", envelope, b"raw")


def test_the_stage_maps_changes_like_snapshots_with_their_lsn(stage: ProcessStage) -> None:
    out = stage.process([
        _in(0, _envelope("c", None, CUSTOMER, lsn=100)),
        _in(1, _envelope("u", None, {**CUSTOMER, "Street_Address": {}, "City": "Boston"}, lsn=200)),
        _in(2, _envelope("d", dict.fromkeys(CUSTOMER) | {"Customer_ID": "C0000001"}, None, lsn=300)),
        _in(3, _envelope("c", None, {**CUSTOMER, "Customer_ID": "C0000002", "First_Name": None,
                                     "Last_Name": None}, lsn=400)),
    ])  # fmt: skip
    values = [dict(r.value) for r in out.records]
    assert [v["source_lsn"] for v in values] == [100, 200, 300]
    inserted, updated, deleted = values
    assert inserted["full_name"] == "Anne Obrien" and inserted["street"] == "123 Main Street" and not inserted.get(
        "unchanged_fields"
    )
    assert inserted["source_position"] == "legacy.customers@0/64"
    assert updated["city"] == "Boston" and updated["street"] is None and updated["unchanged_fields"] == ["street"]
    assert deleted["deleted"] is True and deleted["customer_id"] == "C0000001"
    assert all(r.key == b"C0000001" for r in out.records)
    # The change that fails a rule is a dead letter with its reason and position, like any record.
    [rejection] = out.rejections
    assert rejection.index == 3 and rejection.rule == "required" and rejection.field == "full_name"
    assert rejection.source_position == "legacy.customers@0/190"


def test_an_unchanged_column_leaves_the_fields_reading_it_unchanged_and_a_required_one_rejects() -> None:
    from processors.exceptions import RecordRejected
    from processors.mapping import Mapper

    mapper = Mapper.from_config(load_config(DEMO), "account")
    assert mapper.unchanged_targets(["Street_Address"]) == {"street"}
    # full_name joins first_name and last_name: it follows them.
    assert mapper.unchanged_targets(["first_name"]) == {"first_name", "full_name"}
    meta = {"run_id": "r", "source": "customers", "source_position": "legacy.customers@0/1"}
    with pytest.raises(RecordRejected) as info:
        mapper.map({k: v for k, v in CUSTOMER.items() if k != "First_Name"}, {**meta, "unchanged": {"First_Name"}})
    assert (info.value.rule, info.value.field) == ("unchanged_required", "full_name")
    assert "REPLICA IDENTITY FULL" in info.value.message


def test_with_contact_dedupe_a_contact_delete_goes_to_the_sink_and_the_deduper_forgets_it() -> None:
    """As an account delete does: straight to the mapped topic (the sink drops the record from its golden row),
    and to every partition of the dedupe topic, where the deduper that knows the record forgets it."""
    cfg: MigrationConfig = load_config(DEMO)
    assert cfg.dedupe is not None
    mappers = build_mappers(cfg)
    k = cfg.kafka
    mapped = {e: k.mapped_topic(e) for e in mappers}
    contacts_cdc, dedupe, contacts = "crmflow.demo.cdc.legacy.contacts", k.dedupe_topic("account"), \
        k.dedupe_topic("contact")
    matcher = cfg.dedupe.matcher()
    stage = ProcessStage(
        raw_topics={}, mappers=mappers, masker=Masker.from_config(cfg), mapped_topics=mapped,
        decoders={contacts_cdc: _Identity()}, encoders=dict.fromkeys([*mapped.values(), dedupe, contacts], _Identity()),
        dedupe=matcher, dedupe_topic=dedupe, changelog=f"{dedupe}.state", contact_dedupe=matcher.for_contacts(),
        contact_topic=contacts, contact_changelog=f"{contacts}.state",
        cdc_topics={contacts_cdc: CdcSource("contacts", "contact", "Contact_ID")}, run_id="demo-cdc",
    ).with_sources({n: s.entity for n, s in cfg.sources.items()})
    row = {"Contact_ID": "K0000001", "Customer_ID": "C0000001", "First_Name": "bo", "Last_Name": "park",
           "Contact_Email": "bo@example.com", "Phone": None, "Job_Title": "Buyer"}
    out = stage.process([InRecord(contacts_cdc, 0, 0, b"k", _envelope("c", None, row, lsn=100), b"raw"),
                         InRecord(contacts_cdc, 0, 1, b"k", _envelope("d", row, None, lsn=200), b"raw")])
    assert [(r.topic, r.key, r.partition) for r in out.records] == [
        (contacts, b"bp", -1), (mapped["contact"], b"K0000001", -1), (contacts, b"K0000001", 0)]
    assert out.records[1].value["deleted"] is True and out.records[1].value["source_lsn"] == 200
    assert out.records[2].value == out.records[1].value
    # The dedupe topic's partition 0 reads the insert, then the delete.
    resolved = stage.process([InRecord(contacts, 0, 0, b"bp", out.records[0].value, b"raw"),
                              InRecord(contacts, 0, 1, b"K0000001", out.records[2].value, b"raw")])
    assert [r.topic for r in resolved.records] == [mapped["contact"]], "the insert's golden contact, nothing more"
    counts = resolved.counts
    assert counts[("dedupe", "contact", "forgotten")] == 1 and counts[("dedupe", "contact", "in")] == 1
    written = {w.key: w.value for w in resolved.state}
    assert written[b"r:K0000001"] is None and written[b"g:K0000001"] is None, "tombstones: record and cluster gone"
