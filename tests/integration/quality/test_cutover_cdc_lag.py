"""cutover status's CDC lag check on the real PostgreSQL: NO-GO while the slot lags, GO once it confirmed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from types import SimpleNamespace

import psycopg
import pytest

from crmflow.quality.cutover import Check, cdc_check
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_cdc_lag_no_go_then_go(pg_dsn_factory: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = pg_dsn_factory()
    slot = f"t_{uuid.uuid4().hex[:12]}"
    env = f"CUTOVER_LEGACY_{slot.upper()}"
    monkeypatch.setenv(env, dsn)
    cfg = SimpleNamespace(
        cdc=SimpleNamespace(dsn_env=env, slot=slot), validation=SimpleNamespace(max_cdc_lag_bytes=512 * 1024)
    )
    missing = cdc_check(cfg)
    assert missing is not None and not missing.ok and "does not exist" in missing.detail
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            conn.execute("create table t (id int primary key, v text)")
            conn.execute("insert into t select g, repeat('x', 100) from generate_series(1, 20000) g")
            lagging = cdc_check(cfg)
            assert lagging is not None and not lagging.ok and "WAL byte(s) behind" in lagging.detail

            def advanced_and_go() -> Check | None:
                # WAL is the whole cluster's: other tests' writes between the advance and the check can put the
                # slot behind again, so advance and check until one check sees it caught up.
                conn.execute("select pg_replication_slot_advance(%s, pg_current_wal_lsn())", (slot,))
                check = cdc_check(cfg)
                assert check is not None
                return check if check.ok else None

            wait_until(advanced_and_go, timeout_s=30, what="the cdc_lag check to pass once the slot is advanced")
        finally:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
    assert cdc_check(SimpleNamespace(cdc=None)) is None
