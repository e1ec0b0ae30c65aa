"""The CDC producer survives PostgreSQL going away: a restart of the legacy cluster and a terminated walsender.

While a writer commits transactions before, during and after the outage, every committed change must arrive in
Kafka (replays allowed, losses not): the set of (table, key, transaction id, op) committed is compared with the
events' (table, key, source.txId, op). The restart test restarts the stack's PostgreSQL (pg_ctl stop/start of
the local stack's cluster); it is skipped on the docker stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client import REGISTRY

from crmflow.stack import Endpoints, get_stack
from crmflow.topics import cdc_topic
from producers.cdc.stream import run_cdc
from tests.helpers import wait_until
from tests.integration.producers.test_cdc import (  # noqa: F401
    Event,
    Legacy,
    legacy,
    load_config_kafka,
    read_events,
    streaming,
)

pytestmark = pytest.mark.integration

Change = tuple[str, int, int, str]  # table, key, txid, op


class Writer:
    """Commits small multi-table transactions in a loop; keeps what PostgreSQL acknowledged as committed."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.committed: set[Change] = set()
        self.failures = 0
        self.stop = threading.Event()
        self.next_id = 1
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _one(self, conn: psycopg.Connection[Any]) -> None:
        i = self.next_id
        with conn.transaction():
            xid = int(conn.execute("select txid_current()").fetchone()[0])  # type: ignore[index]
            conn.execute("insert into legacy.customers (id, name) values (%s, %s)", (i, f"c{i}"))
            conn.execute("insert into legacy.tickets (id, customer_id, subject) values (%s, %s, 's')", (i, i))
            changes = [("customers", i, xid, "c"), ("tickets", i, xid, "c")]
            # i - 1 may never have been inserted (a failed attempt skips its key): count only a real update
            update = "update legacy.customers set name = 'u' where id = %s"
            if i > 1 and i % 3 == 0 and conn.execute(update, (i - 1,)).rowcount == 1:
                changes.append(("customers", i - 1, xid, "u"))
        self.committed.update(changes)  # only after COMMIT returned
        self.next_id += 1

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    while not self.stop.is_set():
                        self._one(conn)
                        self.stop.wait(0.01)
            except psycopg.OperationalError:
                self.failures += 1  # the database is away: try again
                self.next_id += 1  # an unknown outcome: never reuse the key
                self.stop.wait(0.1)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def captured(read: Callable[[str], list[Event]], prefix: str) -> set[Change]:
    out: set[Change] = set()
    for table in ("customers", "tickets"):
        for e in read(cdc_topic(prefix, f"legacy.{table}")):
            if e.value is not None:
                out.add((table, e.key["id"], e.value["source"]["txId"], e.value["op"]))
    return out


def outage_then_check(legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
                      read: Callable[[str], list[Event]], outage: Callable[[], None]) -> None:  # fmt: skip
    before = REGISTRY.get_sample_value("crmflow_cdc_reconnects_total", {"slot": legacy.slot}) or 0.0
    with streaming(legacy, endpoints, registry_client, init=True, reconnect_initial_s=0.2, reconnect_max_s=2,
                   feedback_interval_s=0.2) as stats, Writer(legacy.dsn) as writer:  # fmt: skip
        wait_until(lambda: len(writer.committed) > 30, 30, what="changes before the outage")
        outage()
        mark = len(writer.committed)
        wait_until(lambda: len(writer.committed) > mark + 30, 60, what="changes after the outage")
        wait_until(lambda: (row := legacy.slot_row()) is not None and row[0] is not None, 30,
                   what="the slot streaming again")  # fmt: skip
        writer.stop.set()
        writer.thread.join(30)
        expected = set(writer.committed)
        wait_until(lambda: expected <= captured(read, legacy.prefix), 60, what="every committed change in Kafka")
    missing = expected - captured(read, legacy.prefix)
    assert not missing, f"{len(missing)} committed changes never reached Kafka, e.g. {sorted(missing)[:5]}"
    after = REGISTRY.get_sample_value("crmflow_cdc_reconnects_total", {"slot": legacy.slot}) or 0.0
    assert stats.reconnects >= 1 and after - before == stats.reconnects
    print(f"{len(expected)} changes committed around the outage, all in Kafka; {stats.reconnects} reconnect(s), "
          f"{writer.failures} writer retries")  # fmt: skip


@pytest.mark.serial  # restarts the shared stack's PostgreSQL: `make test` runs it alone
def test_a_restart_of_postgresql_loses_no_change(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
    read_events: Callable[[str], list[Event]],  # noqa: F811
) -> None:  # fmt: skip
    stack = get_stack()
    pg = getattr(stack, "pg", None)
    if pg is None:
        pytest.skip("restarting PostgreSQL needs the local stack (pg_ctl)")

    def restart() -> None:
        pg.stop()  # pg_ctl stop -m fast: every connection, the walsender included, is closed
        pg.start()
        wait_until(lambda: pg.accepts(endpoints), 60, what="PostgreSQL back")

    outage_then_check(legacy, endpoints, registry_client, read_events, restart)


def test_a_terminated_walsender_loses_no_change(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
    read_events: Callable[[str], list[Event]],  # noqa: F811
) -> None:  # fmt: skip
    def terminate() -> None:
        row = legacy.slot_row()
        assert row is not None and row[0] is not None
        with psycopg.connect(legacy.dsn, autocommit=True) as conn:
            assert conn.execute("select pg_terminate_backend(%s)", (row[0],)).fetchone() == (True,)

    outage_then_check(legacy, endpoints, registry_client, read_events, terminate)


def test_a_slot_dropped_during_an_outage_stops_with_an_error_naming_it(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
) -> None:  # fmt: skip
    from producers.cdc.exceptions import SlotError

    stop, box = threading.Event(), {}
    # Create the slot and load first (a stopped --init run), so that the slot is active below only while the
    # producer streams: a walsender terminated during --init is a different error (the load cannot resume).
    created = threading.Event()
    created.set()
    run_cdc(legacy.cdc(), load_config_kafka(legacy.prefix), connection=endpoints.kafka,
            registry_client=registry_client, init=True, stop_event=created)  # fmt: skip
    assert legacy.slot_row() is not None

    def run() -> None:
        try:
            run_cdc(legacy.cdc(reconnect_initial_s=3, reconnect_max_s=3), load_config_kafka(legacy.prefix),
                    connection=endpoints.kafka, registry_client=registry_client,
                    stop_event=stop)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - checked below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: (row := legacy.slot_row()) is not None and row[0] is not None, 30, what="streaming")
        with psycopg.connect(legacy.dsn, autocommit=True) as conn:

            def terminate_then_drop() -> bool:
                """Terminate the walsender; drop the slot in the backoff window before the reconnect."""
                row = legacy.slot_row()
                if row is None:
                    return True
                if row[0] is not None:
                    conn.execute("select pg_terminate_backend(%s)", (row[0],))
                    return False
                try:
                    conn.execute("select pg_drop_replication_slot(%s)", (legacy.slot,))
                except psycopg.errors.ObjectInUse:  # the producer took it back first: again
                    return False
                return True

            wait_until(terminate_then_drop, 30, interval_s=0.1, what="the slot dropped while the producer waits")
        wait_until(lambda: "error" in box, 30, what="the producer stopping on the missing slot")
    finally:
        stop.set()
        thread.join(30)
    assert isinstance(box["error"], SlotError)
    assert f"slot {legacy.slot} does not exist" in str(box["error"]) and "--init" in str(box["error"])
    assert legacy.slot_row() is None  # no new slot created silently
