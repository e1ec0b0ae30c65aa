"""What every stack implementation offers, and the endpoints it hands to the rest of crmflow."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from crmflow.exceptions import NotReadyError


@dataclass(frozen=True)
class Endpoints:
    """How to reach the three services. ``postgres_dsn`` may name any database on the server."""

    bootstrap_servers: str
    registry_url: str
    postgres_dsn: str = field(repr=False)
    target_database: str = "crm_target"
    legacy_database: str = "crm_legacy"

    def dsn(self, database: str) -> str:
        """The DSN of another database on the same PostgreSQL server."""
        return make_conninfo(self.postgres_dsn, dbname=database)

    @property
    def target_dsn(self) -> str:
        return self.dsn(self.target_database)

    @property
    def legacy_dsn(self) -> str:
        return self.dsn(self.legacy_database)

    def redacted_postgres(self) -> str:
        """Host, port and user of PostgreSQL, without the password, for printing."""
        d = conninfo_to_dict(self.postgres_dsn)
        return f"{d.get('user', '?')}@{d.get('host', '?')}:{d.get('port', '5432')}"


@dataclass(frozen=True)
class PartStatus:
    name: str
    running: bool
    address: str
    pid: int | None = None
    detail: str = ""


class Stack(abc.ABC):
    """Lifecycle: ``up()`` starts (or finds running) every part and waits until each is ready, then
    returns the endpoints; calling it again is harmless. ``down()`` stops what ``up()`` started and leaves
    no process behind. ``status()`` and ``logs()`` never change anything."""

    mode: str

    @abc.abstractmethod
    def up(self) -> Endpoints: ...

    @abc.abstractmethod
    def down(self) -> None: ...

    @abc.abstractmethod
    def status(self) -> list[PartStatus]: ...

    @abc.abstractmethod
    def endpoints(self) -> Endpoints: ...

    def logs(self, part: str, lines: int = 50) -> str:
        return f"{self.mode} stack keeps no logs for {part}"


def wait_until(
    part: str,
    probe: Callable[[], bool],
    *,
    timeout_s: float,
    log_tail: Callable[[], str],
    alive: Callable[[], bool] = lambda: True,
    interval_s: float = 0.25,
) -> None:
    """Poll ``probe`` until it answers True; fail fast if the process died, else after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if probe():
            return
        if not alive():
            raise NotReadyError(f"{part} (process exited)", 0, log_tail())
        if time.monotonic() > deadline:
            raise NotReadyError(part, timeout_s, log_tail())
        time.sleep(interval_s)
