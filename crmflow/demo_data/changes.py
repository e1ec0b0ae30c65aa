"""A change workload on the legacy database, for CDC demos and benchmarks (`crmflow demo-data --changes RATE`).

Inserts, updates and deletes over the four related ``legacy`` tables (customers and their contacts, sales and
tickets) at a steady rate of changed rows per second, in multi-statement transactions:

- ``new``: a customer with one or two contacts, a sale and a ticket (4–5 inserts);
- ``update``: a customer's city and phone, and the status of one of its tickets (1–2 updates);
- ``large``: a ticket whose subject is 8–24 kB of incompressible text, inserted or rewritten (TOASTed out of line;
  later updates that leave it alone exercise pgoutput's unchanged-TOAST marker);
- ``delete``: a customer and every child row it has (children first, in the same transaction).

Each committed change is appended to a JSON-lines log, ``{"table", "id", "op", "txid", "committed_at"}``, with
``committed_at`` the client's wall clock (Unix seconds) right after COMMIT returned: the source side of an
end-to-end latency measurement (source commit → target commit). New rows get keys of their own range
(``C8xxxxxx``, ``K8xxxxxx``...), so the workload never collides with the demo data it runs on. The session runs
with ``synchronous_commit = off`` and the child tables get an index on ``customer_id`` (created if missing).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from faker import Faker

from crmflow.connections import PostgresConnection, as_postgres
from crmflow.demo_data.legacy_db import create_legacy_schema

__all__ = ["KINDS", "ChangeStats", "run_changes"]

log = logging.getLogger(__name__)

KEY_BASE = 8_000_000  # new keys from here: above any demo data set's sequence
KINDS = (("new", 0.3), ("update", 0.45), ("large", 0.15), ("delete", 0.1))
STATUSES = ("open", "pending", "closed")

Change = tuple[str, str, str]  # table, id, op (c, u, d)


@dataclass
class ChangeStats:
    transactions: int = 0
    changes: Counter[str] = field(default_factory=Counter)  # "table op" -> rows
    seconds: float = 0.0
    failed: int = 0  # transactions rolled back (a key raced by another writer); retried as a new one

    @property
    def total(self) -> int:
        return sum(self.changes.values())

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


def _first_key(conn: psycopg.Connection[Any]) -> int:
    """The first key number of this run: past every key an earlier run inserted."""
    row = conn.execute("select max(substr(customer_id, 2)) from legacy.customers where customer_id like 'C8%'")
    found = row.fetchone()
    conn.commit()
    return max(KEY_BASE, int(found[0]) + 1) if found and found[0] and str(found[0]).isdigit() else KEY_BASE


class _Workload:
    """One connection's transactions. Worker ``w`` of ``n`` numbers its keys first + w, first + w + n, ..."""

    def __init__(self, conn: psycopg.Connection[Any], seed: int, first: int, worker: int, workers: int) -> None:
        self.conn, self.rng, self.fake = conn, random.Random(seed + worker), Faker()
        self.fake.seed_instance(seed + worker)
        self.seq, self.step = first + worker - workers, workers
        self.customers: list[str] = [r[0] for r in conn.execute(
            "select customer_id from legacy.customers where abs(hashtext(customer_id)) %% %s = %s "
            "order by random() limit 20000", (workers, worker))]  # fmt: skip
        conn.commit()

    def _key(self, letter: str) -> str:
        self.seq += self.step
        return f"{letter}{self.seq:07d}"

    def _large(self) -> str:
        return self.rng.randbytes(self.rng.randrange(4_000, 12_000)).hex()  # 8-24 kB, not compressible

    def new(self) -> list[Change]:
        cid = self._key("C")
        f = self.fake
        x = self.conn.execute
        x("insert into legacy.customers (customer_id, first_name, last_name, contact_email, phone, street_address, "
          "city, postal_code, country, region, birth_date, customer_since) values "
          "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
          (cid, f.first_name(), f.last_name(), f.email(), f.phone_number(), f.street_address(), f.city(),
           f.postcode(), f.country(), "EMEA", f.date_of_birth().isoformat(), f.date_this_decade().isoformat()))
        out = [("customers", cid, "c")]
        for _ in range(self.rng.choice((1, 2))):
            kid = self._key("K")
            x("insert into legacy.contacts (contact_id, customer_id, first_name, last_name, contact_email, phone, "
              "job_title) values (%s, %s, %s, %s, %s, %s, %s)",
              (kid, cid, f.first_name(), f.last_name(), f.email(), f.phone_number(), f.job()))
            out.append(("contacts", kid, "c"))
        sid, tid = self._key("S"), self._key("T")
        x("insert into legacy.sales (sale_id, customer_id, sales_amount, sale_date, product) values "
          "(%s, %s, %s, %s, %s)", (sid, cid, f"{self.rng.uniform(10, 5000):.2f}", f.date_this_year().isoformat(),
                                   f.word()))
        x("insert into legacy.tickets (ticket_id, customer_id, support_ticket_date, subject, status, priority) values "
          "(%s, %s, %s, %s, %s, %s)", (tid, cid, f.date_this_year().isoformat(), f.sentence(), "open", "medium"))
        self.customers.append(cid)
        return [*out, ("sales", sid, "c"), ("tickets", tid, "c")]  # fmt: skip

    def _customer(self) -> str | None:
        return self.rng.choice(self.customers) if self.customers else None

    def update(self) -> list[Change]:
        cid = self._customer()
        if cid is None:
            return self.new()
        out: list[Change] = []
        if self.conn.execute("update legacy.customers set city = %s, phone = %s where customer_id = %s",
                             (self.fake.city(), self.fake.phone_number(), cid)).rowcount:  # fmt: skip
            out.append(("customers", cid, "u"))
        row = self.conn.execute("update legacy.tickets set status = %s where ticket_id = (select ticket_id from "
                                "legacy.tickets where customer_id = %s limit 1) returning ticket_id",
                                (self.rng.choice(STATUSES), cid)).fetchone()  # fmt: skip
        if row:
            out.append(("tickets", row[0], "u"))
        return out

    def large(self) -> list[Change]:
        cid = self._customer()
        if cid is None or self.rng.random() < 0.5:
            tid = self._key("T")
            self.conn.execute("insert into legacy.tickets (ticket_id, customer_id, support_ticket_date, subject, "
                              "status, priority) values (%s, %s, %s, %s, 'open', 'high')",
                              (tid, cid, self.fake.date_this_year().isoformat(), self._large()))  # fmt: skip
            return [("tickets", tid, "c")]
        row = self.conn.execute("update legacy.tickets set subject = %s where ticket_id = (select ticket_id from "
                                "legacy.tickets where customer_id = %s limit 1) returning ticket_id",
                                (self._large(), cid)).fetchone()  # fmt: skip
        return [("tickets", row[0], "u")] if row else []

    def delete(self) -> list[Change]:
        cid = self._customer()
        if cid is None:
            return []
        self.customers.remove(cid)
        out: list[Change] = []
        for table, key in (("contacts", "contact_id"), ("sales", "sale_id"), ("tickets", "ticket_id")):
            rows = self.conn.execute(f"delete from legacy.{table} where customer_id = %s returning {key}", (cid,))
            out += [(table, r[0], "d") for r in rows]
        if self.conn.execute("delete from legacy.customers where customer_id = %s", (cid,)).rowcount:
            out.append(("customers", cid, "d"))
        return out

    def transaction(self, kinds: Sequence[tuple[str, float]] = KINDS) -> tuple[int, list[Change]]:
        kind = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        with self.conn.transaction():
            txid = int(self.conn.execute("select txid_current()").fetchone()[0])  # type: ignore[index]
            changes: list[Change] = getattr(self, kind)()
        return txid, changes


def run_changes(
    dsn: PostgresConnection | str,
    rate: float,
    seconds: float,
    *,
    log_path: Path | None = None,
    seed: int = 42,
    workers: int = 0,
    stop: threading.Event | None = None,
    kinds: Sequence[tuple[str, float]] = KINDS,
) -> ChangeStats:
    """Change ``rate`` rows/s of the legacy tables for ``seconds`` (or until ``stop``); see the module doc.

    ``workers`` connections share the rate (0: one per 100 changes/s, at most 8): one connection waits for each
    statement's round trip, so a single one tops out at a few hundred changes/s. ``kinds``: the transaction
    kinds and their weights (default :data:`KINDS`).
    """
    stop = stop or threading.Event()
    workers = workers or max(1, min(8, math.ceil(rate / 100)))
    stats = ChangeStats()
    lock = threading.Lock()
    options = "-c synchronous_commit=off"
    # synchronous_commit off: a commit does not wait for its WAL flush (logical decoding sees it all the same), so
    # a connection is not capped at the disk's fsync rate; the workload's rows are demo rows.
    db = as_postgres(dsn, setting="--dsn")
    with db.connect(options=options) as conn:
        with conn.transaction():
            create_legacy_schema(conn)
            for table in ("contacts", "sales", "tickets"):  # children by parent: the updates' and deletes' lookups
                conn.execute(f"create index if not exists {table}_customer_id on legacy.{table} (customer_id)")
        first = _first_key(conn)
    out: IO[str] | None = log_path.open("a", encoding="utf-8") if log_path else None
    started = time.monotonic()
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            with db.connect(options=options) as conn:
                work = _Workload(conn, seed, first, w, workers)
                done = 0
                while not stop.is_set() and (now := time.monotonic()) - started < seconds:
                    ahead = started + done / (rate / workers) - now  # steady pace: changes done vs the clock
                    if ahead > 0:
                        stop.wait(min(ahead, 0.5))
                        continue
                    try:
                        txid, changes = work.transaction(kinds)
                    except psycopg.errors.IntegrityError:  # a key raced by another writer
                        with lock:
                            stats.failed += 1
                        continue
                    committed_at = round(time.time(), 6)
                    done += len(changes) or 1
                    lines = [json.dumps({"table": f"legacy.{t}", "id": k, "op": op, "txid": txid,
                                         "committed_at": committed_at}) + "\n" for t, k, op in changes]  # fmt: skip
                    with lock:
                        stats.transactions += bool(changes)  # one that changed no row is none in the WAL either
                        stats.changes.update(f"{t} {op}" for t, _, op in changes)
                        if out is not None:
                            out.writelines(lines)
        except Exception as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(w,), name=f"changes-{w}") for w in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stats.seconds = time.monotonic() - started
        if out is not None:
            out.close()
    if errors:
        raise errors[0]
    log.info("change workload: %d changes in %d transactions, %.0f/s on %d connection(s)", stats.total,
             stats.transactions, stats.rate, workers)  # fmt: skip
    return stats
