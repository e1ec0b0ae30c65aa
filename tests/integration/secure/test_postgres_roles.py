"""PostgreSQL on the secure stack: TLS and passwords required, and each role limited to what it needs."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from crmflow.stack import roles
from crmflow.stack.secure import SecureStack
from sinks.postgres.migrate import apply_migrations, load_migrations

pytestmark = pytest.mark.secure  # not `integration`: it needs the secure stack, `make test-secure`


def _as(stack: SecureStack, role: str, database: str) -> str:
    return stack.postgres_dsn(database, role, stack.secrets.postgres[role])


def test_plaintext_connection_is_refused(secure_stack: SecureStack) -> None:
    dsn = make_conninfo(secure_stack.endpoints().postgres_dsn, sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(dsn, connect_timeout=5)


def test_wrong_password_is_refused_without_echoing_it(secure_stack: SecureStack) -> None:
    dsn = secure_stack.postgres_dsn("crm_target", roles.SINK_ROLE, "not-the-password-4711")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed") as info:
        psycopg.connect(dsn, connect_timeout=5)
    assert "not-the-password-4711" not in str(info.value)


def test_server_certificate_is_verified(secure_stack: SecureStack, tmp_path: Any) -> None:
    """verify-full against a CA that did not sign the server certificate fails."""
    other_ca = tmp_path / "other.crt"
    other_ca.write_text(secure_stack.certs.client_cert.read_text())
    dsn = make_conninfo(secure_stack.endpoints().postgres_dsn, sslrootcert=str(other_ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(dsn, connect_timeout=5)


@pytest.fixture
def legacy_table(admin_conn: psycopg.Connection[Any], secure_stack: SecureStack) -> Any:
    """A legacy table made by the admin after the stack's grants (default privileges must cover it)."""
    table = f"legacy.t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(secure_stack.endpoints().dsn("crm_legacy"), autocommit=True) as conn:  # as the admin
        conn.execute(f"create table {table} (id int primary key, name text)")
        conn.execute(f"insert into {table} values (1, 'a'), (2, 'b')")
        yield conn, table
        conn.execute(f"drop table {table}")


def test_capture_reads_legacy_but_cannot_write_it(secure_stack: SecureStack, legacy_table: Any) -> None:
    _, table = legacy_table
    with psycopg.connect(_as(secure_stack, roles.CAPTURE_ROLE, "crm_legacy"), autocommit=True) as conn:
        assert conn.execute(f"select count(*) from {table}").fetchone() == (2,)
        for stmt in (f"insert into {table} values (3, 'c')", f"update {table} set name = 'x'",
                     f"delete from {table}", f"truncate {table}", f"alter table {table} add column y int"):
            with pytest.raises((errors.InsufficientPrivilege,)):
                conn.execute(stmt)


def test_capture_owns_the_publication_and_replicates(secure_stack: SecureStack, legacy_table: Any) -> None:
    admin, table = legacy_table
    pub, slot = f"pub_{uuid.uuid4().hex[:8]}", f"slot_{uuid.uuid4().hex[:8]}"
    secure_stack.create_publication(pub, [table])
    try:
        with psycopg.connect(_as(secure_stack, roles.CAPTURE_ROLE, "crm_legacy"), autocommit=True) as conn:
            conn.execute(f"comment on publication {pub} is 'progress'")  # what crmflow cdc records
            conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            conn.execute("select pg_logical_emit_message(true, 'crmflow', 'watermark')")
            changes = conn.execute("select count(*) from pg_logical_slot_peek_binary_changes(%s, null, null, "
                                   "'proto_version', '1', 'publication_names', %s)", (slot, pub)).fetchone()
            assert changes is not None
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
            with pytest.raises(errors.InsufficientPrivilege):  # adding tables stays the tables' owner's job
                conn.execute(f"alter publication {pub} add table {table}")
    finally:
        admin.execute(f"drop publication if exists {pub}")


def test_capture_cannot_connect_to_the_target(secure_stack: SecureStack) -> None:
    with pytest.raises(psycopg.OperationalError, match='permission denied for database "crm_target"'):
        psycopg.connect(_as(secure_stack, roles.CAPTURE_ROLE, "crm_target"), connect_timeout=5)


def test_sink_cannot_connect_to_legacy(secure_stack: SecureStack) -> None:
    with pytest.raises(psycopg.OperationalError, match='permission denied for database "crm_legacy"'):
        psycopg.connect(_as(secure_stack, roles.SINK_ROLE, "crm_legacy"), connect_timeout=5)


def test_sink_runs_the_migrations_and_owns_the_schema(secure_stack: SecureStack, scratch_target: str) -> None:
    dsn = _as(secure_stack, roles.SINK_ROLE, scratch_target)
    applied = apply_migrations(dsn)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert apply_migrations(dsn) == []  # up to date
    with psycopg.connect(dsn) as conn:
        owner = conn.execute("select nspowner::regrole::text from pg_namespace where nspname = 'crm'").fetchone()
        tables = conn.execute("select count(*) from pg_tables where schemaname = 'crm' "
                              "and tableowner = %s", (roles.SINK_ROLE,)).fetchone()
        assert owner == (roles.SINK_ROLE,)
        assert tables is not None and tables[0] > 5
        conn.execute("create temp table _stage (id int)")  # the sink stages its batches in temp tables
        with pytest.raises(errors.InsufficientPrivilege):  # no superuser powers
            conn.execute("create role intruder")


def test_other_roles_cannot_connect_to_either_database(secure_stack: SecureStack,
                                                       admin_conn: psycopg.Connection[Any]) -> None:
    role, pw = f"r_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin_conn.execute(f"create role {role} login password '{pw}'")
    try:
        for db in ("crm_legacy", "crm_target"):
            with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                psycopg.connect(secure_stack.postgres_dsn(db, role, pw), connect_timeout=5)
    finally:
        admin_conn.execute(f"drop role {role}")


def test_stack_up_run_several_times_at_once_sets_the_roles_up_without_colliding(secure_stack: SecureStack) -> None:
    """The suite's workers each bring the running secure stack up (its session fixture): the role setup of each
    alters the same roles. Without one lock around it, PostgreSQL refused all but one ("tuple concurrently
    updated"): about half of 20 setups failed in four threads started together."""
    errors: list[str] = []

    def up(barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            secure_stack.up()
        except Exception as exc:  # noqa: BLE001 - collected, asserted below
            errors.append(repr(exc)[:200])

    for _ in range(3):
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=up, args=(barrier,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []
