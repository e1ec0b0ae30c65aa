"""The secure local stack for the ``secure`` tests: one per session, started if it does not run.

With ``CRMFLOW_STACK=local-secure`` the tests use that stack (its home and ports, as CI sets them);
otherwise they run their own secure stack next to the plain one (:func:`sibling_settings`: ports + 100, its
own home), so ``pytest -m secure`` works on any machine, even next to running stacks. A stack this session
started is stopped at its end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from crmflow.settings import StackSettings, stack_settings
from crmflow.stack.secure import SecureStack, sibling_settings


def secure_settings() -> StackSettings:
    s = stack_settings()
    return s if s.stack == "local-secure" else sibling_settings(s)


@pytest.fixture(scope="session")
def secure_stack() -> Iterator[SecureStack]:
    stack = SecureStack(secure_settings())
    already_running = all(p.running for p in stack.status())
    stack.up()
    yield stack
    if not already_running:
        stack.down()


@pytest.fixture
def topic_prefix(secure_stack: SecureStack) -> str:
    """A fresh topic prefix whose stage ACLs are granted."""
    prefix = f"sec-{uuid.uuid4().hex[:10]}"
    secure_stack.grant(prefix)
    return prefix


@pytest.fixture
def admin_conn(secure_stack: SecureStack) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(secure_stack.endpoints().postgres_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def scratch_target(secure_stack: SecureStack, admin_conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A fresh target database set up for the sink role as `stack up --secure` sets up crm_target."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_conn.execute(f'create database "{name}"')
    secure_stack.prepare_target(name)
    yield name
    admin_conn.execute(f'drop database if exists "{name}" with (force)')
