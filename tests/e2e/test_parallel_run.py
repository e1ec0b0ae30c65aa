"""`crmflow parallel-run` on the real stack (issue 10, item 6): the demo's table-source config on a legacy
database loaded with generated demo data, a few seconds of the change workload, and then the command must
exit 0, say it caught up, and the target must equal the legacy database after mapping, which this test
checks on its own, account by account and field by field, through the processor's mappers.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from crmflow.config import load_config
from crmflow.demo_data.legacy_db import load_legacy_db
from crmflow.demo_data.run import generate
from processors.exceptions import RecordRejected
from processors.mapping import build_mappers
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CDC_CONFIG = REPO / "deploy" / "demo" / "crmflow-cdc.yaml"
COLUMNS = ["customer_id", "first_name", "last_name", "contact_email", "phone", "street_address", "city",
           "postal_code", "country", "region", "birth_date", "customer_since"]  # fmt: skip
FIELDS = ["full_name", "email", "phone", "city", "country", "region", "birth_date"]


def _config(tmp_path: Path, legacy_env: str, target_env: str, tag: str, dedupe: bool = False) -> Path:
    raw: dict[str, Any] = yaml.safe_load(CDC_CONFIG.read_text())
    raw["dedupe"]["enabled"] = dedupe
    raw["run"]["name"] = f"e2epr{tag}"
    raw["kafka"]["topic_prefix"] = f"e2e-pr-{tag}"
    for src in raw["sources"].values():
        src["dsn_env"] = legacy_env
    raw["cdc"].update(dsn_env=legacy_env, slot=f"e2e_pr_{tag}", publication=f"e2e_pr_{tag}")
    raw["target"]["dsn_env"] = target_env
    path = tmp_path / "crmflow-cdc.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _accounts(config: Path, legacy_dsn: str, target_dsn: str) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    """(legacy customers after mapping, target accounts, ids whose current legacy row fails a rule)."""
    mapper = build_mappers(load_config(config))["account"]
    expected: dict[str, Any] = {}
    failing: set[str] = set()
    with psycopg.connect(legacy_dsn) as conn:
        for row in conn.execute(f"select {', '.join(c + '::text' for c in COLUMNS)} from legacy.customers"):
            raw = dict(zip(COLUMNS, row, strict=True))
            try:
                mapped = mapper(raw, {"run_id": "r", "source": "customers", "source_position": "p"})
            except RecordRejected:
                failing.add(str(raw["customer_id"]))
                continue
            expected[str(raw["customer_id"])] = {f: mapped[f] for f in FIELDS}
    with psycopg.connect(target_dsn) as conn:
        got = {r[0]: dict(zip(FIELDS, r[1:], strict=True)) for r in conn.execute(
            f"select external_id, {', '.join(FIELDS)} from crm_cdc.accounts where deleted_at is null")}  # fmt: skip
    return expected, got, failing


def _dedupe_records(config: Path) -> set[str]:
    """The account ids whose record the dedupe state holds now: the live ``r:<id>`` keys of its changelog."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from crmflow.stack import get_stack
    from processors.service import changelog_topic

    topic = changelog_topic(load_config(config))
    kafka = get_stack().endpoints().kafka
    consumer = Consumer({**kafka.client_config(), "group.id": f"t-{uuid.uuid4().hex[:8]}",
                         "isolation.level": "read_committed", "enable.partition.eof": True,
                         "enable.auto.commit": False})  # fmt: skip
    live: dict[str, bool] = {}
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        ends = 0
        while ends < len(partitions):
            for msg in consumer.consume(1000, 2.0):
                err = msg.error()
                if err is not None:
                    ends += err.code() == KafkaError._PARTITION_EOF
                    continue
                key = (msg.key() or b"").decode()
                if key.startswith("r:"):
                    live[key[2:]] = msg.value() is not None
    finally:
        consumer.close()
    return {rid for rid, alive in live.items() if alive}


@dataclass
class _Run:
    done: subprocess.CompletedProcess[str]
    config: Path
    legacy_dsn: str
    target_dsn: str
    loaded: dict[str, int]


@contextlib.contextmanager
def _parallel_run(pg_dsn_factory: Callable[[], str], tmp_path: Path, changes: int, seconds: int,
                  dedupe: bool = False) -> Iterator[_Run]:
    """`crmflow parallel-run` on 300 generated customers in a legacy database of its own, under a change workload
    of ``changes``/s for ``seconds``; the slot is dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    legacy_dsn, target_dsn = pg_dsn_factory(), pg_dsn_factory()
    generate(tmp_path / "data", 300, 5)
    loaded = load_legacy_db(legacy_dsn, tmp_path / "data")
    legacy_env, target_env = f"E2E_PR_LEGACY_{tag.upper()}", f"E2E_PR_TARGET_{tag.upper()}"
    config = _config(tmp_path, legacy_env, target_env, tag, dedupe=dedupe)
    env = {**os.environ, legacy_env: legacy_dsn, target_env: target_dsn, "PYTHONUNBUFFERED": "1",
           "CRMFLOW_HOME": os.environ.get("CRMFLOW_HOME", str(tmp_path / "home"))}  # fmt: skip
    try:
        done = subprocess.run([sys.executable, "-m", "crmflow", "parallel-run", "-c", str(config), "--changes",
                               str(changes), "--seconds", str(seconds), "--json", "--timeout", "300"],
                              env=env, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        yield _Run(done, config, legacy_dsn, target_dsn, loaded)
    finally:
        with psycopg.connect(legacy_dsn, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
            slot = f"e2e_pr_{tag}"
            wait_until(lambda: conn.execute("select active_pid is null from pg_replication_slots where slot_name = %s",
                                            (slot,)).fetchone() in (None, (True,)), 15, what="the slot released")
            conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
                         (slot,))  # fmt: skip


def test_parallel_run_catches_up_and_the_target_equals_the_legacy_database(
    pg_dsn_factory: Callable[[], str], tmp_path: Path
) -> None:
    with _parallel_run(pg_dsn_factory, tmp_path, changes=15, seconds=4) as run:
        done, config, legacy_dsn, target_dsn, loaded = run.done, run.config, run.legacy_dsn, run.target_dsn, run.loaded
        assert done.returncode == 0, done.stderr[-4000:]
        result = json.loads(done.stdout)
        assert result["caught_up"] is True and result["in_step"] is True
        assert result["workload"]["changes"] > 0
        assert result["initial_rows"]["account"] > 0 and result["initial_rows"]["account"] <= loaded["customers"]
        v = result["validation"]
        assert (v["missing"], v["extra"], v["wrong"]) == (0, 0, 0) and v["compared"] > 0
        assert result["latency"]["measured"] > 0 and result["latency"]["p50_s"] >= 0
        assert "caught up" in done.stderr
        # On its own: every legacy customer that maps is in the target with the mapped values, and nothing else
        # is, but the rows whose latest change failed a rule (the target keeps their last good version).
        expected, got, failing = _accounts(config, legacy_dsn, target_dsn)
        assert {k: v for k, v in got.items() if k not in failing} == expected
        assert set(got) - set(expected) <= failing
        # The change workload's own keys (C8...) got there: inserts reached the target.
        assert any(k.startswith("C8") for k in got)


def test_with_dedupe_a_customer_deleted_at_the_source_leaves_the_deduper_and_its_golden_account(
    pg_dsn_factory: Callable[[], str], tmp_path: Path
) -> None:
    """The parallel run with deduplication on: every customer the workload deletes is forgotten by the deduper
    (its delete went to every partition of the dedupe topic) and left its golden account (its xref entry), and
    no golden account is left without a member."""
    with _parallel_run(pg_dsn_factory, tmp_path, changes=30, seconds=6, dedupe=True) as run:
        done, config, legacy_dsn, target_dsn = run.done, run.config, run.legacy_dsn, run.target_dsn
        result = json.loads(done.stdout)
        assert result["caught_up"] is True, done.stderr[-4000:]
        deleted = result["workload"]["by_table_op"].get("customers d", 0)
        assert deleted > 0, result["workload"]
        with psycopg.connect(legacy_dsn) as conn:
            present = {r[0] for r in conn.execute("select customer_id::text from legacy.customers")}
        remembered = _dedupe_records(config)
        assert remembered and not remembered - present, sorted(remembered - present)[:5]
        with psycopg.connect(target_dsn) as conn:
            members = {r[0] for r in conn.execute("select source_id from crm_cdc.xref where entity = 'account'")}
            lonely = conn.execute("select count(*) from crm_cdc.accounts a where not exists (select 1 from "
                                  "crm_cdc.xref x where x.entity = 'account' and x.target_id = a.id)").fetchone()
        assert members and not members - present, sorted(members - present)[:5]
        assert lonely == (0,)
