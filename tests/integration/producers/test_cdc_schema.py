"""Schema changes while the CDC producer runs: compatible ones register a new version and the stream goes on with
no restart; an incompatible one stops only its own table, whose changes go to the dead-letter topic."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client import REGISTRY

from crmflow.dlq import read_dead_letters
from crmflow.stack import Endpoints
from crmflow.topics import cdc_topic, dlq_topic
from producers.cdc.pgoutput import parse_lsn
from tests.helpers import wait_until
from tests.integration.producers.test_cdc import Event, Legacy, count, legacy, read_events, streaming  # noqa: F401

pytestmark = pytest.mark.integration


def versions(client: SchemaRegistryClient, topic: str) -> list[int]:
    return list(client.get_versions(f"{topic}-value"))


def test_compatible_schema_changes_register_new_versions_and_stream_on(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
    read_events: Callable[[str], list[Event]],  # noqa: F811
) -> None:  # fmt: skip
    customers, tickets = cdc_topic(legacy.prefix, "legacy.customers"), cdc_topic(legacy.prefix, "legacy.tickets")
    extra = cdc_topic(legacy.prefix, "legacy.extra")
    legacy.sql("alter table legacy.customers add column code varchar(10)")
    with streaming(legacy, endpoints, registry_client, init=True) as stats:
        legacy.sql("insert into legacy.customers (id, name, code) values (1, 'a', 'x1')",
                   "insert into legacy.tickets values (1, 1, 's')")  # fmt: skip
        wait_until(lambda: count(read_events, customers)() >= 1 and count(read_events, tickets)() >= 1, 30)
        assert len(versions(registry_client, customers)) == 1
        # ADD COLUMN, then a row using it, in one transaction with a change of another table
        legacy.sql("alter table legacy.customers add column vip boolean",
                   "insert into legacy.customers (id, name, vip) values (2, 'b', true)",
                   "insert into legacy.tickets values (2, 2, 's')")  # fmt: skip
        legacy.sql("alter table legacy.customers drop column notes",  # DROP COLUMN
                   "insert into legacy.customers (id, name) values (3, 'c')")  # fmt: skip
        legacy.sql("alter table legacy.tickets alter column customer_id type bigint",  # int -> bigint
                   "insert into legacy.tickets values (3, 9000000000, 's')")  # fmt: skip
        legacy.sql("alter table legacy.customers alter column code type text",  # varchar(n) -> text
                   "update legacy.customers set code = repeat('z', 40) where id = 1")  # fmt: skip
        # a new table in the publication
        legacy.sql("create table legacy.extra (id integer primary key, v text)",
                   f"alter publication {legacy.publication} add table legacy.extra")  # fmt: skip
        last = legacy.sql("insert into legacy.extra values (1, 'new')")
        wait_until(lambda: count(read_events, customers)() >= 4 and count(read_events, tickets)() >= 3
                   and count(read_events, extra)() >= 1, 30, what="every change after the DDL")  # fmt: skip
        wait_until(lambda: parse_lsn(legacy.slot_row()[1]) >= parse_lsn(last), 15)  # type: ignore[index]
    assert stats.reconnects == 0  # one session throughout: no restart
    after = {e.key["id"]: e.value["after"] for e in read_events(customers) if e.value and e.value["op"] == "c"}
    assert after[2]["vip"] is True and "notes" in after[2]
    assert "notes" not in after[3] and after[3]["vip"] is None
    upd = next(e.value for e in read_events(customers) if e.value and e.value["op"] == "u")
    assert upd["after"]["code"] == "z" * 40
    t3 = next(e.value for e in read_events(tickets) if e.key["id"] == 3)
    assert t3 and t3["after"]["customer_id"] == 9000000000
    assert len(versions(registry_client, customers)) >= 3  # +vip, -notes, (code varchar -> text: doc only)
    assert len(versions(registry_client, tickets)) == 2
    assert registry_client.get_compatibility(f"{customers}-value") == "BACKWARD"
    (ev,) = read_events(extra)
    assert ev.key == {"id": 1} and ev.value and ev.value["after"] == {"id": 1, "v": "new"}


def test_an_incompatible_change_stops_only_its_table_with_a_dead_letter(
    legacy: Legacy, endpoints: Endpoints, registry_client: SchemaRegistryClient,  # noqa: F811
    read_events: Callable[[str], list[Event]], caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:  # fmt: skip
    customers, tickets = cdc_topic(legacy.prefix, "legacy.customers"), cdc_topic(legacy.prefix, "legacy.tickets")
    with streaming(legacy, endpoints, registry_client, init=True):
        legacy.sql("insert into legacy.tickets values (1, 1, 's')")
        wait_until(count(read_events, tickets), 30)
        legacy.sql("alter table legacy.tickets alter column customer_id type text",  # int -> text: not BACKWARD
                   "insert into legacy.tickets values (2, 'c-2', 'after')",
                   "insert into legacy.customers (id, name) values (1, 'flows')")  # fmt: skip
        last = legacy.sql("insert into legacy.customers (id, name) values (2, 'still flows')",
                          "update legacy.tickets set subject = 'x' where id = 1")  # fmt: skip
        wait_until(lambda: count(read_events, customers)() >= 2, 30, what="the other table flowing")
        wait_until(lambda: parse_lsn(legacy.slot_row()[1]) >= parse_lsn(last), 15,  # type: ignore[index]
                   what="the slot confirmed past the dead letters")  # fmt: skip
    assert count(read_events, tickets)() == 1  # nothing of the stopped table in its topic
    letters = [d.record for d in read_dead_letters(endpoints.kafka, registry_client,
                                                   dlq_topic(legacy.prefix))]  # fmt: skip
    assert [(r["stage"], r["rule"], r["entity"]) for r in letters] == [("cdc", "schema_incompatible",
                                                                        "legacy.tickets")] * 2  # fmt: skip
    assert all("table legacy.tickets is stopped" in r["error"] and "tickets-value" in r["error"] for r in letters)
    assert REGISTRY.get_sample_value("crmflow_cdc_tables_stopped", {"slot": legacy.slot}) == 1
    assert any("legacy.tickets STOPPED" in r.getMessage() for r in caplog.records)
