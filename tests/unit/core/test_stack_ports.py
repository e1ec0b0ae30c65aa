"""A port another process holds is named, with the variable that sets it, before the local stack starts anything."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from crmflow.exceptions import StackError
from crmflow.pii import scrub_text
from crmflow.settings import StackSettings
from crmflow.stack import tools
from crmflow.stack.local import LocalStack
from crmflow.stack.secure import SecureStack

pytestmark = pytest.mark.unit


@pytest.fixture
def held() -> Iterator[int]:
    """A port a listening socket holds on 127.0.0.1 for the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _settings(tmp_path: Path, **ports: int) -> StackSettings:
    free = {name: tools.free_port() for name in ("kafka_port", "kafka_controller_port", "registry_port",
                                                  "postgres_port")}
    return StackSettings(home=tmp_path / "home", postgres_dir=tmp_path / "pg", **{**free, **ports})


def test_a_held_port_is_named_with_its_variable_and_a_free_one_passes(held: int) -> None:
    with pytest.raises(StackError) as err:
        tools.ensure_port_free(held, "CRMFLOW_POSTGRES_PORT", "postgres")
    assert f"postgres cannot listen on 127.0.0.1:{held}" in str(err.value)
    assert "set CRMFLOW_POSTGRES_PORT to a free one" in str(err.value)
    tools.ensure_port_free(tools.free_port(), "CRMFLOW_POSTGRES_PORT", "postgres")


def test_a_port_in_the_ephemeral_range_gets_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "ephemeral_ports", lambda: (32768, 60999))
    assert "pick one below 32768" in tools.port_hint(35532)
    # The range reads as it is through the log's PII scrubber (a "(32768-60999)" looked like a phone number).
    assert "32768 to 60999" in scrub_text(tools.port_hint(35532))
    assert tools.port_hint(15432) == "" and tools.port_hint(61000) == ""


@pytest.mark.parametrize("setting", ["postgres_port", "kafka_port", "kafka_controller_port", "registry_port"])
def test_the_local_stack_refuses_to_start_on_a_held_port(tmp_path: Path, held: int, setting: str) -> None:
    stack = LocalStack(_settings(tmp_path, **{setting: held}))
    with pytest.raises(StackError, match=f"set CRMFLOW_{setting.upper()} to a free one"):
        stack.up()
    assert not (tmp_path / "home" / "dist").exists() and not (tmp_path / "pg").exists(), "nothing was started"


def test_the_secure_stack_names_the_registry_backend_and_the_proxy(tmp_path: Path, held: int) -> None:
    backend = SecureStack(_settings(tmp_path).model_copy(update={"secure_registry_backend_port": held}))
    with pytest.raises(StackError, match=r"registry cannot listen.*CRMFLOW_SECURE_REGISTRY_BACKEND_PORT"):
        backend.check_ports()
    proxy = SecureStack(_settings(tmp_path, registry_port=held, secure_registry_backend_port=tools.free_port()))
    with pytest.raises(StackError, match=r"registry-proxy cannot listen.*CRMFLOW_REGISTRY_PORT"):
        proxy.check_ports()


def test_an_ephemeral_port_is_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path)
    monkeypatch.setattr(tools, "ephemeral_ports", lambda: (settings.postgres_port, settings.postgres_port))
    with caplog.at_level(logging.WARNING):
        LocalStack(settings).check_ports()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"CRMFLOW_POSTGRES_PORT={settings.postgres_port}"]
