"""Background processes with a PID file and a log file, as the local stack runs them."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"(no log at {path})"
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        return "".join(deque(fh, maxlen=lines))


class ManagedProcess:
    """One long-running child: started in its own session (so ``down`` can signal its whole group),
    recognised after a restart of crmflow by its PID file plus a marker in its command line (so a
    recycled PID is never mistaken for ours)."""

    def __init__(self, name: str, run_dir: Path, marker: str) -> None:
        self.name = name
        self.pid_file = run_dir / f"{name}.pid"
        self.log_file = run_dir / f"{name}.log"
        self.marker = marker

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if self.marker in " ".join(proc.cmdline()):
                return pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        return None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> int:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.pid_file.write_text(str(proc.pid))
        log.info("started %s (pid %d), log %s", self.name, proc.pid, self.log_file, extra={"part": self.name})
        return proc.pid

    def stop(self, timeout_s: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        procs = _family(pid)
        _signal_group(pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        if alive:
            log.warning("%s did not stop in %.0fs; killing", self.name, timeout_s, extra={"part": self.name})
            _signal_group(pid, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=10)
        self.pid_file.unlink(missing_ok=True)

    def alive_or_starting(self, started_at: float, grace_s: float = 1.0) -> bool:
        """True while the process runs; a just-started one gets a short grace period to write its PID."""
        return self.running() or time.monotonic() - started_at < grace_s


def _family(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(pid), sig)
