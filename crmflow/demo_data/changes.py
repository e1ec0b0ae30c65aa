"""A change workload on the legacy database, for CDC demos and benchmarks (`crmflow demo-data --changes RATE`).

Inserts, updates and deletes over the four related ``legacy`` tables (customers and their contacts, sales and
tickets) at a steady rate of changed rows per second, several rows per transaction:

- ``new``: a customer with one or two contacts, a sale and a ticket (4–5 inserts, one statement);
- ``update``: a customer's city and phone, and the status of one of its tickets (1–2 updates, two statements);
- ``large``: a ticket whose subject is 8–24 kB of incompressible text, inserted or rewritten (TOASTed out of line;
  later updates that leave it alone exercise pgoutput's unchanged-TOAST marker);
- ``delete``: a customer and every child row it has (children first, in the same transaction).

Each committed change is appended to a JSON-lines log, ``{"table", "id", "op", "txid", "committed_at"}``, with
``committed_at`` the client's wall clock (Unix seconds) right after COMMIT returned: the source side of an
end-to-end latency measurement (source commit → target commit). New rows get keys of their own range
(``C8xxxxxx``, ``K8xxxxxx``...), so the workload never collides with the demo data it runs on. Commits are
synchronous, as a CRM's are (``synchronous_commit=False`` switches that off), and the child tables get an index
on ``customer_id`` (created if missing).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from faker import Faker
from psycopg import sql

from crmflow.connections import PostgresConnection, as_postgres
from crmflow.demo_data.legacy_db import create_legacy_schema
from crmflow.demo_data.phones import build_phone_plan

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


class _Values:
    """Faker's values, drawn once per run (``size`` of each kind) and then picked at random: Faker costs tens of
    microseconds a value, which at thousands of changes a second was a good part of the machine. E-mail addresses
    and phone numbers get a per-row number, so different customers do not share them."""

    def __init__(self, seed: int, size: int = 1000) -> None:
        fake = Faker()
        fake.seed_instance(seed)

        def draw(make: Callable[[], Any]) -> list[Any]:
            return [make() for _ in range(size)]

        self.first, self.last = draw(fake.first_name), draw(fake.last_name)
        self.domains = draw(fake.free_email_domain)
        self.streets, self.cities, self.postcodes = draw(fake.street_address), draw(fake.city), draw(fake.postcode)
        self.countries, self.jobs, self.words = draw(fake.country), draw(fake.job), draw(fake.word)
        self.sentences = draw(fake.sentence)
        self.births = draw(lambda: fake.date_of_birth().isoformat())
        self.phones = build_phone_plan("US", random.Random(seed))
        self.decade = draw(lambda: fake.date_this_decade().isoformat())
        self.year = draw(lambda: fake.date_this_year().isoformat())


class _Workload:
    """One connection's transactions. Worker ``w`` of ``n`` numbers its keys first + w, first + w + n, ...

    Each transaction kind is one or two statements (the inserts of ``new`` and the deletes of ``delete`` are one
    statement each, chained with WITH), and its first statement also returns ``txid_current()``: a round trip to the
    server costs both sides more CPU than the rows it carries."""

    def __init__(self, conn: psycopg.Connection[Any], seed: int, first: int, worker: int, workers: int,
                 values: _Values) -> None:  # fmt: skip
        self.conn, self.rng, self.v = conn, random.Random(seed + worker), values
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

    def _email(self, first: str, last: str) -> str:
        local = "".join(c for c in f"{first}.{last}".lower() if c.isascii() and (c.isalnum() or c == "."))
        return f"{local}{self.seq}@{self.rng.choice(self.v.domains)}"

    def _phone(self) -> str:
        """A valid US number, written internationally: a checked prefix and random trailing digits (random area
        codes and exchanges were invalid numbers more often than not, which the initial load never has)."""
        prefix = self.rng.choice(self.v.phones.prefixes)
        digits = f"{self.rng.randrange(10**prefix.tail):0{prefix.tail}d}"
        return self.rng.choice(prefix.international).format(*digits)

    def _txid(self, cur: psycopg.Cursor[Any]) -> int:
        return int(cur.fetchone()[0])  # type: ignore[index]

    def new(self) -> tuple[int | None, list[Change]]:
        cid = self._key("C")
        v, pick = self.v, self.rng.choice
        first, last = pick(v.first), pick(v.last)
        contacts = []
        for _ in range(self.rng.choice((1, 2))):
            kf, kl = pick(v.first), pick(v.last)
            contacts.append((self._key("K"), cid, kf, kl, self._email(kf, kl), self._phone(), pick(v.jobs)))
        sid, tid = self._key("S"), self._key("T")
        rows = sql.SQL(", ").join(sql.SQL("(%s, %s, %s, %s, %s, %s, %s)") for _ in contacts)
        cur = self.conn.execute(sql.SQL(
            "with c as (insert into legacy.customers (customer_id, first_name, last_name, contact_email, phone, "
            "street_address, city, postal_code, country, region, birth_date, customer_since) values "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)), "
            "k as (insert into legacy.contacts (contact_id, customer_id, first_name, last_name, contact_email, phone, "
            "job_title) values {}), "
            "s as (insert into legacy.sales (sale_id, customer_id, sales_amount, sale_date, product) values "
            "(%s, %s, %s, %s, %s)), "
            "t as (insert into legacy.tickets (ticket_id, customer_id, support_ticket_date, subject, status, "
            "priority) values (%s, %s, %s, %s, 'open', 'medium')) "
            "select txid_current()").format(rows),
            (cid, first, last, self._email(first, last), self._phone(), pick(v.streets), pick(v.cities),
             pick(v.postcodes), pick(v.countries), "EMEA", pick(v.births), pick(v.decade),
             *(x for c in contacts for x in c),
             sid, cid, f"{self.rng.uniform(10, 5000):.2f}", pick(v.year), pick(v.words),
             tid, cid, pick(v.year), pick(v.sentences)))  # fmt: skip
        self.customers.append(cid)
        return self._txid(cur), [("customers", cid, "c"), *(("contacts", c[0], "c") for c in contacts),
                                 ("sales", sid, "c"), ("tickets", tid, "c")]  # fmt: skip

    def _customer(self) -> str | None:
        return self.rng.choice(self.customers) if self.customers else None

    def update(self) -> tuple[int | None, list[Change]]:
        """Two statements: the customer's city and phone, then the status of one of its tickets."""
        cid = self._customer()
        if cid is None:
            return self.new()
        out: list[Change] = []
        cur = self.conn.execute(
            "with u as (update legacy.customers set city = %s, phone = %s where customer_id = %s returning 1) "
            "select txid_current(), (select count(*) from u)", (self.rng.choice(self.v.cities), self._phone(), cid))
        txid, updated = cur.fetchone()  # type: ignore[misc]
        if updated:
            out.append(("customers", cid, "u"))
        row = self.conn.execute("update legacy.tickets set status = %s where ticket_id = (select ticket_id from "
                                "legacy.tickets where customer_id = %s limit 1) returning ticket_id",
                                (self.rng.choice(STATUSES), cid)).fetchone()  # fmt: skip
        if row:
            out.append(("tickets", row[0], "u"))
        return int(txid), out

    def large(self) -> tuple[int | None, list[Change]]:
        cid = self._customer()
        if cid is None or self.rng.random() < 0.5:
            tid = self._key("T")
            cur = self.conn.execute(
                "with t as (insert into legacy.tickets (ticket_id, customer_id, support_ticket_date, subject, status, "
                "priority) values (%s, %s, %s, %s, 'open', 'high')) select txid_current()",
                (tid, cid, self.rng.choice(self.v.year), self._large()))  # fmt: skip
            return self._txid(cur), [("tickets", tid, "c")]
        cur = self.conn.execute(
            "with t as (update legacy.tickets set subject = %s where ticket_id = (select ticket_id from "
            "legacy.tickets where customer_id = %s limit 1) returning ticket_id) "
            "select txid_current(), (select ticket_id from t)", (self._large(), cid))  # fmt: skip
        txid, ticket = cur.fetchone()  # type: ignore[misc]
        return int(txid), [("tickets", ticket, "u")] if ticket else []

    def delete(self) -> tuple[int | None, list[Change]]:
        """A customer and its children, children first, in one statement."""
        cid = self._customer()
        if cid is None:
            return None, []
        self.customers.remove(cid)
        rows = self.conn.execute(
            "with k as (delete from legacy.contacts where customer_id = %(c)s returning 'contacts' as t, contact_id), "
            "s as (delete from legacy.sales where customer_id = %(c)s returning 'sales' as t, sale_id), "
            "t as (delete from legacy.tickets where customer_id = %(c)s returning 'tickets' as t, ticket_id), "
            "c as (delete from legacy.customers where customer_id = %(c)s returning 'customers' as t, customer_id) "
            "select txid_current(), t, contact_id from k union all select txid_current(), t, sale_id from s "
            "union all select txid_current(), t, ticket_id from t union all select txid_current(), t, customer_id "
            "from c", {"c": cid}).fetchall()  # fmt: skip
        order = {"contacts": 0, "sales": 1, "tickets": 2, "customers": 3}
        changes = sorted(((str(t), str(k), "d") for _, t, k in rows), key=lambda c: order[c[0]])
        return (int(rows[0][0]) if rows else None), changes

    def transaction(self, kinds: Sequence[tuple[str, float]] = KINDS) -> tuple[int | None, list[Change]]:
        """One transaction of a kind drawn by weight: its xid (None if it changed nothing) and its changes."""
        kind = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        with self.conn.transaction():
            txid, changes = getattr(self, kind)()
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
    synchronous_commit: bool = True,
) -> ChangeStats:
    """Change ``rate`` rows/s of the legacy tables for ``seconds`` (or until ``stop``); see the module doc.

    ``workers`` connections share the rate (0: one per 100 changes/s, at most 8): one connection waits for each
    statement's round trip, so a single one tops out at a few hundred changes/s. ``kinds``: the transaction
    kinds and their weights (default :data:`KINDS`). ``synchronous_commit=False`` runs the sessions with
    ``synchronous_commit = off``: more changes/s per connection, but a commit is decoded only once the WAL
    writer flushed it (``wal_writer_delay``, 200 ms by default), which a latency measurement then counts.
    """
    stop = stop or threading.Event()
    workers = workers or max(1, min(8, math.ceil(rate / 100)))
    stats = ChangeStats()
    lock = threading.Lock()
    # A CRM's commits are durable: COMMIT returns once its WAL is flushed, and the walsender decodes it at once.
    options = "" if synchronous_commit else "-c synchronous_commit=off"
    db = as_postgres(dsn, setting="--dsn")
    with db.connect(options=options) as conn:
        with conn.transaction():
            create_legacy_schema(conn)
            for table in ("contacts", "sales", "tickets"):  # children by parent: the updates' and deletes' lookups
                conn.execute(f"create index if not exists {table}_customer_id on legacy.{table} (customer_id)")
        first = _first_key(conn)
    values = _Values(seed)
    out: IO[str] | None = log_path.open("a", encoding="utf-8") if log_path else None
    started = time.monotonic()
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            with db.connect(options=options) as conn:
                work = _Workload(conn, seed, first, w, workers, values)
                done = 0
                while not stop.is_set() and (now := time.monotonic()) - started < seconds:
                    ahead = started + done / (rate / workers) - now  # steady pace: changes done vs the clock
                    if ahead > 0:
                        stop.wait(min(ahead, 0.5))
                        continue
                    try:
                        txid, changes = work.transaction(kinds)
                    except (psycopg.errors.IntegrityError, psycopg.errors.DeadlockDetected):
                        # a key raced by another writer, or two writers' rows locked in opposite orders: the
                        # server rolled the transaction back, as it would an application's, and the next one goes on
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
