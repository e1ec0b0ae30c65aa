"""Sealing the processor's internal values: the cipher, when it is on, and the stage's sealed state writes."""

from __future__ import annotations

import json
import timeit
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from crmflow.config import MigrationConfig, load_config
from crmflow.configbase import ConfigLoadError
from crmflow.pii import PiiConfig, PiiKeyError, SealedDataError, StateCipher, state_cipher
from crmflow.runtime import InRecord, StageOutput
from crmflow.serialization import SerializationError
from processors.mapping import build_mappers
from processors.masking import Masker, state_cipher_of
from processors.sealing import SealedDecoder, SealedEncoder
from processors.stage import ProcessStage

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"
DEDUPE = "crmflow.demo.dedupe.account"
KEY = SecretStr("k" * 32)


def _cipher(key: str = "k" * 32) -> StateCipher:
    return StateCipher(SecretStr(key))


def test_a_sealed_value_opens_only_with_its_key_and_context() -> None:
    cipher = _cipher()
    sealed = cipher.seal(b'{"em":"anne.obrien@example.com"}', b"r:C1")
    assert b"anne" not in sealed and sealed.startswith(StateCipher.MAGIC)
    assert cipher.open(sealed, b"r:C1") == b'{"em":"anne.obrien@example.com"}'
    assert cipher.seal(b"x", b"c") != cipher.seal(b"x", b"c"), "a fresh nonce per value"
    with pytest.raises(SealedDataError, match="authentication"):
        cipher.open(sealed, b"r:C2")  # moved to another key
    with pytest.raises(SealedDataError) as err:
        _cipher("another key of 32 bytes.........").open(sealed, b"r:C1")
    assert cipher.key_id in str(err.value) and "anne" not in str(err.value)
    assert "k" * 32 not in repr(cipher)


def test_a_value_written_before_sealing_was_on_is_read_as_it_is() -> None:
    assert _cipher().open(b'{"fn":"Anne"}', b"r:C1") == b'{"fn":"Anne"}'
    assert _cipher().open(b"\x00\x00\x00\x00\x01avro", b"t") == b"\x00\x00\x00\x00\x01avro"


def test_when_the_internal_topics_are_sealed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMFLOW_PII_KEY", raising=False)
    assert state_cipher(PiiConfig(), "production") is None, "production without a key: clear (with a warning)"
    assert state_cipher(PiiConfig(encrypt_state=False), "staging") is None
    with pytest.raises(PiiKeyError, match="CRMFLOW_PII_KEY"):
        state_cipher(PiiConfig(profile="staging"), "staging")
    with pytest.raises(PiiKeyError, match="CRMFLOW_PII_KEY"):
        state_cipher(PiiConfig(encrypt_state=True), "production")
    monkeypatch.setenv("CRMFLOW_PII_KEY", "k" * 32)
    production = state_cipher(PiiConfig(), "production")
    assert production is not None and production.key_id == _cipher().key_id
    assert state_cipher(PiiConfig(profile="staging"), "staging") is not None


def test_a_missing_key_names_the_variable_the_file_and_the_line(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMFLOW_PII_KEY", raising=False)
    text = DEMO.read_text().replace("  profile: production\n", "  profile: production\n  encrypt_state: true\n")
    assert "encrypt_state: true" in text
    path = tmp_path / "crmflow.yaml"
    path.write_text(text.replace("${CRMFLOW_DEMO_DATA:-../../.crmflow/demo-data}", str(tmp_path)))
    cfg = load_config(path)
    with pytest.raises(ConfigLoadError) as err:
        state_cipher_of(cfg, "production")
    message = str(err.value)
    assert "CRMFLOW_PII_KEY" in message and "pii.key_env" in message and str(path) in message


class _Json:
    """A stand-in for the Avro codec (this tests the sealing around it)."""

    def encode_many(self, objs: Iterable[Mapping[str, Any]]) -> list[bytes]:
        return [json.dumps(dict(o)).encode() for o in objs]

    def decode(self, data: bytes, *, origin: str | None = None) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(data)
        return value


def test_the_dedupe_codecs_seal_on_the_way_out_and_open_on_the_way_in() -> None:
    cipher = _cipher()
    [sealed] = SealedEncoder(_Json(), cipher, DEDUPE).encode_many([{"email": "anne.obrien@example.com"}])
    assert b"anne" not in sealed
    assert SealedDecoder(_Json(), cipher, DEDUPE).decode(sealed) == {"email": "anne.obrien@example.com"}
    with pytest.raises(SerializationError, match=r"x\[0\]@1: .*pii key"):  # dead-lettered, still sealed
        SealedDecoder(_Json(), _cipher("z" * 32), DEDUPE).decode(sealed, origin="x[0]@1")
    with pytest.raises(SerializationError):
        SealedDecoder(_Json(), cipher, "another.topic").decode(sealed)


# ------------------------------------------------------------------------------------------ the stage


@pytest.fixture(scope="module")
def demo() -> MigrationConfig:
    return load_config(DEMO)


def _stage(cfg: MigrationConfig, cipher: StateCipher | None) -> ProcessStage:
    mappers = build_mappers(cfg)
    mapped = {e: cfg.kafka.mapped_topic(e) for e in mappers}
    assert cfg.dedupe is not None
    return ProcessStage(
        raw_topics={}, mappers=mappers, masker=Masker.from_config(cfg), mapped_topics=mapped, decoders={},
        encoders={}, dedupe=cfg.dedupe.matcher(), dedupe_topic=DEDUPE, changelog=f"{DEDUPE}.state", cipher=cipher)


def _accounts(cfg: MigrationConfig, n: int) -> list[dict[str, Any]]:
    mapper = build_mappers(cfg)["account"]
    meta = {"run_id": "run-1", "source": "customers", "source_position": "x"}
    fields = {"First_Name": "Anne", "Last_Name": "Obrien", "Phone": "(212) 555-0134", "Street_Address": "123 Main St.",
              "City": "New York", "Postal_Code": "10001", "Country": "US", "Region": "NA", "Birth_Date": "03/04/1980",
              "Customer_Since": "2019-12-31"}
    return [mapper({**fields, "Customer_ID": f"C{i:07d}", "Contact_Email": f"anne.obrien{i % 2}@example.com"}, meta)
            for i in range(n)]


def _resolve(stage: ProcessStage, accounts: list[dict[str, Any]], start: int = 0) -> StageOutput:
    return stage.process([InRecord(DEDUPE, 0, start + i, b"ao", a, b"") for i, a in enumerate(accounts)])


def _committed(out: StageOutput) -> dict[bytes, bytes]:
    changelog: dict[bytes, bytes] = {}
    for w in out.state:
        if w.value is None:
            changelog.pop(w.key, None)
        else:
            changelog[w.key] = w.value
    return changelog


def test_sealed_state_writes_hold_no_clear_value_and_restore_to_the_same_decisions(demo: MigrationConfig) -> None:
    accounts = _accounts(demo, 6)
    expected = _resolve(_stage(demo, None), accounts)
    clear = _committed(_resolve(_stage(demo, None), accounts[:3]))
    assert any(b"anne.obrien" in v for v in clear.values()), "the control: unsealed state holds the e-mail"

    changelog = _committed(_resolve(_stage(demo, _cipher()), accounts[:3]))
    assert changelog and not any(b"anne" in v.lower() or b"obrien" in v.lower() or b"555" in v
                                 for v in changelog.values())
    successor = _stage(demo, _cipher())
    successor.restore(DEDUPE, 0, changelog)
    rest = _resolve(successor, accounts[3:], start=3)
    assert [r.value["golden_id"] for r in rest.records] == [r.value["golden_id"] for r in expected.records[3:]]

    with pytest.raises(SealedDataError, match=r"partition 0 .*pii key") as err:
        _stage(demo, _cipher("another key of 32 bytes.........")).restore(DEDUPE, 0, changelog)
    assert "anne" not in str(err.value).lower()


def test_sealing_a_typical_state_value_costs_microseconds() -> None:
    """The per-record cost (the README quotes it): seal + open of a typical feature dict."""
    cipher = _cipher()
    value = json.dumps({"fn": "Anne", "ln": "Obrien", "em": "anne.obrien@example.com", "ph": "+12125550134",
                        "st": "123 Main Street", "ci": "New York", "pc": "10001", "co": "US", "rg": "NA",
                        "bd": "1980-03-04", "cs": "2019-12-31", "src": "customers", "#": 12}).encode()
    n = 2000
    seconds = timeit.timeit(lambda: cipher.open(cipher.seal(value, b"r:C0000001"), b"r:C0000001"), number=n)
    assert seconds / n < 200e-6, f"{seconds / n * 1e6:.1f} µs per seal + open"
