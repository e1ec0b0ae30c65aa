"""Stopping services: each gets one SIGTERM. A stage takes a second one as "stop at once" (it exits without
closing its consumer, and the next member of its group waits out the dead member's session), so stopping
several side by side must never signal one twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crmflow.pipeline.services import Service, stop_all
from tests.helpers import wait_until

pytestmark = pytest.mark.unit

# Like a stage: the first SIGTERM finishes the work (here 0.3 s of it) and exits 0; a second one exits at once.
STAGE = """
import signal, sys, time
from pathlib import Path
asked = []
def on_term(signum, frame):
    if asked:
        sys.exit(9)
    asked.append(time.monotonic())
signal.signal(signal.SIGTERM, on_term)
Path(sys.argv[1]).write_text("ready")
while not asked:
    time.sleep(0.01)
while time.monotonic() - asked[0] < 0.3:
    time.sleep(0.01)
Path(sys.argv[1]).write_text("stopped cleanly")
"""


class _Stage(Service):
    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", STAGE, str(self.log_file)])


def test_each_service_stopped_side_by_side_gets_one_sigterm_and_stops_cleanly(tmp_path: Path) -> None:
    services: list[Service] = [_Stage(f"stage-{i}", [], tmp_path / f"stage-{i}.log", {}) for i in range(3)]
    wait_until(lambda: all(s.log_file.exists() and s.log_file.read_text() == "ready" for s in services),
               timeout_s=30, interval_s=0.02, what="the stages to start")
    stop_all(services, timeout_s=20)
    assert [s.proc.returncode for s in services] == [0, 0, 0]
    assert [s.log_file.read_text() for s in services] == ["stopped cleanly"] * 3
    services[0].terminate()  # an exited service is not signalled again
    assert services[0].stop(1) == 0
