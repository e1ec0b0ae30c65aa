"""Throughput of the PostgreSQL sink (not a test): rows/s for N accounts, on the running local stack.

    .venv/bin/python tests/integration/sinks/bench_postgres_sink.py [--rows 100000] [--batch 1000 5000]

For each batch size, in a fresh database: (1) ``write_batch`` straight into PostgreSQL (COPY + one upsert
per batch, one transaction each), (2) the same records again (a re-delivery: every row unchanged), (3) one
contact per account (children find their account through ``crm.xref``), and (4) end to end through
Kafka — Avro-encoded records on a fresh 6-partition topic, ``run_sink`` in drain mode (consume, decode,
write, commit). Prints rows/s for each. ``--golden`` adds the same with dedupe on: clusters of three
source records per golden id, every 50th cluster merged into the one before it.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from crmflow.serialization import AvroCodec
from crmflow.stack import Endpoints, get_stack
from sinks.base import SinkRecord
from sinks.params import SinkParams
from sinks.postgres import PostgresSink
from sinks.runner import run_sink


def account(n: int) -> dict[str, Any]:
    return {
        "customer_id": f"C{n:07d}", "full_name": f"Ann Lee{n}", "first_name": "Ann", "last_name": f"Lee{n}",
        "email": f"ann.lee{n}@example.com", "phone": f"+1415{n % 10_000_000:07d}", "street": f"{n} Main Street",
        "city": "Springfield", "postal_code": f"{n % 100_000:05d}", "country": "US", "region": "NA",
        "birth_date": date(1950, 1, 1) + timedelta(days=n % 18_000), "customer_since": date(2010, 1, 1),
        "run_id": "bench", "source": "legacy", "source_position": f"customers.csv:{n + 2}",
        "quality_flags": ["email_invalid"] if n % 7 == 0 else [], "mapped_at": datetime.now(UTC), "golden_id": None,
    }


def golden(n: int) -> dict[str, Any]:
    """Account ``n`` with dedupe on: clusters of three (golden id = the first member); the last member of
    every 50th cluster bridges it into the previous cluster, whose golden id survives."""
    cluster = n // 3
    gid = f"C{cluster * 3:07d}"
    value = account(cluster * 3) | {"customer_id": f"C{n:07d}", "source_position": f"customers.csv:{n + 2}",
                                    "golden_id": gid, "merged_golden_ids": [], "match_evidence": None}
    if n % 3:
        value["match_evidence"] = json.dumps([{"rule": "email_exact", "score": 1.0, "matched_id": gid,
                                               "golden_id": gid, "decision": "merge", "veto": None}])
    if n % 3 == 2 and cluster % 50 == 49:
        value["golden_id"] = f"C{(cluster - 1) * 3:07d}"
        value["merged_golden_ids"] = [gid]
    return value


def contact(n: int) -> dict[str, Any]:
    return {"contact_id": f"K{n:07d}", "customer_id": f"C{n:07d}", "full_name": "Bo Park", "first_name": "Bo",
            "last_name": "Park", "email": f"bo{n}@example.com", "phone": None, "job_title": "Buyer",
            "run_id": "bench", "source": "legacy", "source_position": f"contacts.csv:{n + 2}", "quality_flags": [],
            "mapped_at": datetime.now(UTC), "golden_id": None}


def fresh_db(ep: Endpoints) -> tuple[str, str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ep.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"'.encode())
    return name, ep.dsn(name)


def drop_db(ep: Endpoints, name: str) -> None:
    with psycopg.connect(ep.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)'.encode())


def direct(ep: Endpoints, values: list[dict[str, Any]], batch: int) -> tuple[float, float, float]:
    name, dsn = fresh_db(ep)
    sink = PostgresSink(dsn)
    try:
        sink.setup()
        records = [SinkRecord("account", v, "bench.mapped.account", 0, i, None, b"") for i, v in enumerate(values)]
        children = [SinkRecord("contact", contact(i), "bench.mapped.contact", 0, i, None, b"")
                    for i in range(len(values))]
        rates = []
        # first: inserts; second: the same records again (all unchanged); third: a contact per account
        for recs in (records, records, children):
            started = time.perf_counter()
            for i in range(0, len(recs), batch):
                result = sink.write_batch(recs[i : i + batch])
                assert not result.rejects and not result.parked
            rates.append(len(recs) / (time.perf_counter() - started))
        return rates[0], rates[1], rates[2]
    finally:
        sink.close()
        drop_db(ep, name)


def through_kafka(ep: Endpoints, values: list[dict[str, Any]], batch: int) -> float:
    topic, dlq = f"bench-{uuid.uuid4().hex[:8]}", f"bench-dlq-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(ep.kafka.client_config())
    for fut in admin.create_topics([NewTopic(topic, 6, 1), NewTopic(dlq, 1, 1)]).values():
        fut.result(30)
    name, dsn = fresh_db(ep)
    try:
        codec = AvroCodec.for_topic(ep.registry.client(), topic, "target/account")
        producer = Producer({**ep.kafka.client_config(), "linger.ms": 20, "enable.idempotence": True})
        for v, data in zip(values, codec.encode_many(values), strict=True):
            while True:
                try:
                    producer.produce(topic, key=v["customer_id"].encode(), value=data)
                    break
                except BufferError:
                    producer.poll(0.1)
        assert producer.flush(60) == 0
        params = SinkParams(kafka=ep.kafka, registry=ep.registry, target_dsn=dsn,
                            topics={topic: "account"}, dlq_topic=dlq, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                            batch_size=batch, consume_batch=max(batch, 1000), max_batch_age_s=0.5)
        PostgresSink(dsn).setup()  # migrations outside the timed part
        started = time.perf_counter()
        stats = run_sink(params, drain=True)
        elapsed = time.perf_counter() - started
        assert stats.written == len(values), stats
        return len(values) / elapsed
    finally:
        drop_db(ep, name)
        admin.delete_topics([topic, dlq])  # best effort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--no-kafka", action="store_true", help="Only the direct database figures.")
    parser.add_argument("--golden", action="store_true", help="Also with dedupe on (golden records).")
    args = parser.parse_args()
    ep = get_stack().endpoints()
    modes = [("dedupe off", [account(n) for n in range(args.rows)])]
    if args.golden:
        modes.append(("dedupe on", [golden(n) for n in range(args.rows)]))
    print(f"{args.rows:,} accounts into PostgreSQL")
    for mode, values in modes:
        for batch in args.batch:
            insert, unchanged, contacts = direct(ep, values, batch)
            line = (f"{mode}, batch {batch:>6,}: write_batch {insert:>9,.0f} rows/s, re-delivery "
                    f"{unchanged:>9,.0f} rows/s, contacts {contacts:>9,.0f} rows/s")
            if not args.no_kafka and mode == "dedupe off":
                line += f", Kafka→Avro→PostgreSQL (drain) {through_kafka(ep, values, batch):>9,.0f} rows/s"
            print(line, flush=True)


if __name__ == "__main__":
    main()
