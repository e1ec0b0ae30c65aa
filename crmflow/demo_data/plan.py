"""The shape of a run, decided before any record is written: chunks and their id offsets.

The customers are generated in chunks of :data:`CHUNK_SIZE` customer slots. What a slot holds (is it
a duplicate, how many children, is a deleted customer's debris written before it) comes from a
*plan* stream of its own, seeded by ``(seed, chunk)``; the record contents come from a second stream.
Counting a chunk's ids and lines is therefore cheap (only the plan stream runs), so every chunk knows
its id and line offsets up front and chunks can be generated in any order, in any process, with the
same bytes as a single sequential run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, NamedTuple

from crmflow.demo_data.rates import QualityRates

CHUNK_SIZE: Final = 25_000

# Children per customer record, as lookup tables indexed by int(random() * 100).
_CONTACT_COUNTS: Final = (0,) * 45 + (1,) * 35 + (2,) * 15 + (3,) * 5
_SALE_COUNTS: Final = (0,) * 20 + (1,) * 30 + (2,) * 25 + (3,) * 15 + (4,) * 10
_TICKET_COUNTS: Final = (0,) * 50 + (1,) * 30 + (2,) * 15 + (3,) * 5


class Slot(NamedTuple):
    """One customer record and its children; ``deleted_sales > 0`` puts a deleted customer first."""

    deleted_sales: int
    deleted_tickets: int
    duplicate: bool
    contacts: int
    sales: int
    tickets: int


@dataclass(frozen=True, slots=True)
class Counts:
    """Ids used (customer ids include deleted customers), or ids used before a chunk.

    ``records`` counts customer records (lines of customers.csv); every other id is one line.
    """

    records: int = 0
    customers: int = 0
    persons: int = 0
    contacts: int = 0
    sales: int = 0
    tickets: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.records + other.records,
            self.customers + other.customers,
            self.persons + other.persons,
            self.contacts + other.contacts,
            self.sales + other.sales,
            self.tickets + other.tickets,
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    slots: int
    offsets: Counts


def chunk_sizes(customers: int, chunk_size: int = CHUNK_SIZE) -> list[int]:
    """Customer slots per chunk: full chunks, then the rest."""
    full, rest = divmod(customers, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def chunk_slots(seed: int, index: int, n_slots: int, rates: QualityRates) -> list[Slot]:
    """The plan of chunk ``index``; the first slot of a chunk is never a duplicate (empty window)."""
    rnd = random.Random(f"{seed}:plan:{index}").random
    orphan, duplicate = rates.orphan, rates.duplicate
    slots = []
    for i in range(n_slots):
        deleted_sales = deleted_tickets = 0
        if rnd() < orphan:
            deleted_sales, deleted_tickets = 1 + int(rnd() * 3), int(rnd() * 3)
        slots.append(
            Slot(
                deleted_sales,
                deleted_tickets,
                rnd() < duplicate and i > 0,
                _CONTACT_COUNTS[int(rnd() * 100)],
                _SALE_COUNTS[int(rnd() * 100)],
                _TICKET_COUNTS[int(rnd() * 100)],
            )
        )
    return slots


def count(slots: list[Slot]) -> Counts:
    """Ids a chunk with this plan uses."""
    deleted = sum(1 for s in slots if s.deleted_sales)
    return Counts(
        records=len(slots),
        customers=len(slots) + deleted,
        persons=sum(1 for s in slots if not s.duplicate),
        contacts=sum(s.contacts for s in slots),
        sales=sum(s.sales + s.deleted_sales for s in slots),
        tickets=sum(s.tickets + s.deleted_tickets for s in slots),
    )


def plan_chunks(seed: int, customers: int, rates: QualityRates, chunk_size: int = CHUNK_SIZE) -> list[Chunk]:
    """All chunks of a run with their offsets (runs only the plan streams: about 1 s per million)."""
    chunks: list[Chunk] = []
    used = Counts()
    for index, n in enumerate(chunk_sizes(customers, chunk_size)):
        chunks.append(Chunk(index, n, used))
        used = used + count(chunk_slots(seed, index, n, rates))
    return chunks
