"""Shared fixtures: one real stack per session (picked by CRMFLOW_STACK), unique names per test.

- ``local`` (default): the stack crmflow runs itself; reused if it is already up, and stopped at the end
  only if this session started it.
- ``docker``: testcontainers, removed at the end of the session.
- ``external``: CRMFLOW_BOOTSTRAP_SERVERS, CRMFLOW_REGISTRY_URL, CRMFLOW_POSTGRES_DSN.

Unit tests never touch these fixtures, so ``pytest -m unit`` starts nothing.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.settings import stack_settings
from crmflow.stack import Endpoints, get_stack

#: Test files that read the expensive session fixtures no test changes (the migrations ``small_migration`` and
#: ``dedupe_migration``, a whole ``migrate --workers 2`` with dedupe): under xdist (``make test``) the files of one
#: entry run on one worker, which builds each fixture once instead of each worker that runs one of them.
#: (test_validate reads both, so both are one entry.)
SHARED_SESSION_FIXTURES = {
    "small_migration+dedupe_migration": (
        "tests/e2e/test_dedupe.py", "tests/e2e/test_exactly_once.py", "tests/e2e/test_golden_determinism.py",
        "tests/e2e/test_migrate.py", "tests/e2e/test_run_report.py", "tests/e2e/test_validate.py",
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(FileGroupScheduler(), "crmflow-file-group-scheduler")


class FileGroupScheduler:
    """``--dist loadfile`` with the files of one :data:`SHARED_SESSION_FIXTURES` entry as one unit (one worker runs
    them, in collection order); every other file is its own unit, as in loadfile. (xdist's ``loadgroup`` does not
    serve: it sends every unmarked test on its own, which builds module fixtures on every worker, and with pytest 9
    its ``xdist_group`` marks group nothing: it renames items through an attribute pytest no longer reads.)"""

    @pytest.hookimpl(tryfirst=True)  # before xdist's own, which answers for every --dist
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadFileScheduling

        group_of = {path: name for name, paths in SHARED_SESSION_FIXTURES.items() for path in paths}

        class FileGroupScheduling(LoadFileScheduling):
            def _split_scope(self, nodeid: str) -> str:
                path = super()._split_scope(nodeid)
                return group_of.get(path, path)

        return FileGroupScheduling(config, log)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    settings = stack_settings()
    stack = get_stack(settings)
    already_running = settings.stack == "local" and all(p.running for p in stack.status())
    ep = stack.up()
    yield ep
    if settings.stack == "docker" or (settings.stack == "local" and not already_running):
        stack.down()


@pytest.fixture(scope="session")
def admin(endpoints: Endpoints) -> AdminClient:
    return AdminClient(endpoints.kafka.client_config())


@pytest.fixture(scope="session")
def registry_client(endpoints: Endpoints) -> SchemaRegistryClient:
    return endpoints.registry.client()


@pytest.fixture
def topic_factory(admin: AdminClient) -> Iterator[Callable[..., str]]:
    """``topic_factory(prefix="t", partitions=1) -> str``: a new topic, deleted after the test."""
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = unique(prefix)
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for fut in admin.delete_topics(created).values():
            with contextlib.suppress(Exception):  # best-effort clean-up
                fut.result(timeout=30)


@pytest.fixture
def group_factory() -> Callable[[], str]:
    """``group_factory() -> str``: a consumer group id no other test uses."""
    return lambda: unique("g")


def _databases(endpoints: Endpoints) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(template: str | None = None) -> str:
        name = unique("t").replace("-", "_")
        with psycopg.connect(endpoints.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'create database "{name}"' + (f' template "{template}"' if template else ""))
        created.append(name)
        return endpoints.dsn(name)

    yield make
    with psycopg.connect(endpoints.postgres_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def pg_dsn_factory(endpoints: Endpoints) -> Iterator[Callable[..., str]]:
    """``pg_dsn_factory() -> str``: the DSN of a fresh, empty database, dropped after the test;
    ``pg_dsn_factory(template=name)``: a copy of database ``name`` (no one may be connected to it)."""
    yield from _databases(endpoints)


@pytest.fixture(scope="session")
def session_pg_dsn_factory(endpoints: Endpoints) -> Iterator[Callable[..., str]]:
    """``pg_dsn_factory`` for a session-scoped fixture: the databases are dropped at the end of the session."""
    yield from _databases(endpoints)
