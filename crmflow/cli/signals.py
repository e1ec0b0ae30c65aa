"""SIGINT and SIGTERM for the commands that run stages: the first asks the run to stop cleanly, a second stops at
once (the default action of the signal)."""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console

from crmflow.exceptions import RunInterruptedError

if TYPE_CHECKING:
    from crmflow.pipeline.migrate import RunControl

err_console = Console(stderr=True)


def stop_on_signals(control: RunControl, what: str | None = None) -> None:
    """On SIGINT or SIGTERM, ``control.request_stop`` (saying ``stopping {what}`` on stderr when given); a second
    signal while stopping is delivered again with its default action."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if control.stop.is_set():  # a second signal: stop waiting for a clean stop
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        if what:
            err_console.print(f"[yellow]{name}: stopping {what} (a second {name} stops at once)…[/yellow]")
        control.request_stop(RunInterruptedError(name))

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
