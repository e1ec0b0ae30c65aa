"""The KRaft cluster id the local stack formats Kafka's log dir with."""

from __future__ import annotations

import base64
import uuid

import pytest

from crmflow.stack import local

pytestmark = pytest.mark.unit


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first UUID encodes to "-..." (0xf8 in the first byte): StorageTool would read it as an option.
    dashed, plain = uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=bytes(16))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    draws = iter([dashed, plain])
    monkeypatch.setattr(local.uuid, "uuid4", lambda: next(draws))
    cluster_id = local.new_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).rstrip(b"=").decode()
    assert len(cluster_id) == 22
