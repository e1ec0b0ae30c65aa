"""The guard around librdkafka's blocking calls: a call past its deadline triggers the stall action (in a
service, the process's exit), a call within it never does."""

from __future__ import annotations

import threading
import time

import pytest

from crmflow.runtime.watchdog import CallWatchdog
from tests.helpers import wait_until

pytestmark = pytest.mark.unit


def test_a_call_blocked_past_its_timeout_and_grace_is_reported_with_its_name() -> None:
    stalls: list[tuple[str, float]] = []
    dog = CallWatchdog("sink", grace_s=0.2, on_stall=lambda what, s: stalls.append((what, s)))
    release = threading.Event()

    def blocked() -> None:
        with dog.guard("send_offsets_to_transaction", timeout_s=0.2):
            release.wait(10)  # a C call that ignores its own timeout

    t = threading.Thread(target=blocked)
    t.start()
    try:
        wait_until(lambda: stalls, timeout_s=5, what="the stall reported")
    finally:
        release.set()
        t.join()
    (what, blocked_s), = stalls
    assert what == "send_offsets_to_transaction" and blocked_s >= 0.4


def test_calls_that_return_in_time_never_trigger_it() -> None:
    stalls: list[tuple[str, float]] = []
    dog = CallWatchdog("process", grace_s=0.1, on_stall=lambda what, s: stalls.append((what, s)))
    for _ in range(5):
        with dog.guard("commit_transaction", timeout_s=0.2):
            time.sleep(0.1)
    time.sleep(0.6)  # well past every deadline: an armed guard would have fired by now
    assert stalls == []
