"""Progress bars on stderr for the long stages: one bar per source while the snapshot reads, then one per
downstream stage (records processed, records written), each with its rate and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichBar
from rich.progress import Task as RichTask
from rich.text import Text

from producers.report import NullProgress


class _RateColumn(ProgressColumn):
    """Speed in the task's unit: MB/s for files (bytes), rows/s for tables."""

    def render(self, task: RichTask) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("-", style="progress.data.speed")
        if task.fields.get("unit") == "bytes":
            return Text(f"{speed / 1e6:.1f} MB/s", style="progress.data.speed")
        if task.fields.get("unit") == "records":
            return Text(f"{speed:,.0f} rec/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} rows/s", style="progress.data.speed")


class RichProgress:
    """One bar per source on stderr, with rate and ETA; implements ``producers.report.Progress``, and
    :meth:`stage` for the stages after the snapshot (unit: records)."""

    def __init__(self, console: Console) -> None:
        self.bar = RichBar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def start(self, source: str, *, total: int | None, completed: int, unit: str) -> None:
        self.tasks[source] = self.bar.add_task(source, total=total, completed=completed, unit=unit)

    def update(self, source: str, completed: int) -> None:
        self.bar.update(self.tasks[source], completed=completed)

    def finish(self, source: str) -> None:
        task = self.tasks[source]
        total = self.bar.tasks[task].total
        if total is not None and self.bar.tasks[task].completed >= total:
            self.bar.update(task, completed=total)
        self.bar.stop_task(task)

    def stage(self, name: str, completed: int, total: int | None) -> None:
        """Create or move the bar of a stage measured in records (``total`` may grow while it runs)."""
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total, completed=completed, unit="records")
        else:
            self.bar.update(self.tasks[name], completed=completed, total=total)

    def done(self, name: str) -> None:
        """Mark a stage's bar complete."""
        if name in self.tasks:
            task = self.tasks[name]
            total = self.bar.tasks[task].total
            self.bar.update(task, completed=total if total is not None else self.bar.tasks[task].completed)
            self.bar.stop_task(task)


class NoProgress(NullProgress):
    """The same interface, silent: ``--no-progress``, or stderr not being a terminal."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def stage(self, name: str, completed: int, total: int | None) -> None:
        return None

    def done(self, name: str) -> None:
        return None
