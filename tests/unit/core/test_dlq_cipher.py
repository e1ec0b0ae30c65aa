from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from crmflow.dlq import DlqCipher, DlqKeyError

pytestmark = pytest.mark.unit


def test_round_trip_and_key_id_names_the_key() -> None:
    key = Fernet.generate_key()
    cipher = DlqCipher(key)
    token = cipher.encrypt(b"jane.doe@example.com")
    assert b"jane" not in token
    assert cipher.decrypt(token, cipher.key_id) == b"jane.doe@example.com"
    assert DlqCipher(key).key_id == cipher.key_id


def test_wrong_key_is_a_clear_error() -> None:
    a, b = DlqCipher(Fernet.generate_key()), DlqCipher(Fernet.generate_key())
    with pytest.raises(DlqKeyError, match="encrypted with key"):
        b.decrypt(a.encrypt(b"x"), a.key_id)


def test_malformed_key_is_rejected() -> None:
    with pytest.raises(DlqKeyError, match="not a valid Fernet key"):
        DlqCipher(b"short")


def test_env_key_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key()
    monkeypatch.setenv("CRMFLOW_DLQ_KEY", key.decode())
    assert DlqCipher.from_env().key_id == DlqCipher(key).key_id
