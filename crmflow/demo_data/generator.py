"""One chunk of the demo legacy CRM: customer records with their children, and their truth.

A chunk streams: each slot makes one customer record and its children and writes them at once. Memory
stays flat because the only state is a bounded ring of recent persons, from which duplicates are drawn
(so duplicates are scattered, but never further apart than ``window`` persons), and counters.

Every record starts from canonical values (pooled, see :mod:`crmflow.demo_data.pools`); the noise
functions write them badly and the truth keeps the canonical value, or null plus a quality flag where
the noise destroys it. Nothing here parses a noisy value back.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Final

from crmflow.demo_data import hard, noise
from crmflow.demo_data.children import LAST_DAY, Children, Parent, email_address, optional_date, phone_number
from crmflow.demo_data.layout import CSV_MALFORMED, CUSTOMERS, ENCODING, REQUIRED
from crmflow.demo_data.plan import Chunk, Slot, chunk_slots
from crmflow.demo_data.pools import CountryPool, Street, build_pools
from crmflow.demo_data.rates import QualityRates
from crmflow.demo_data.truth import TruthWriter
from crmflow.demo_data.writer import CsvSink

_BIRTH_FIRST: Final = date(1940, 1, 1).toordinal()
_BIRTH_DAYS: Final = date(2005, 12, 31).toordinal() - _BIRTH_FIRST
_SINCE_FIRST: Final = date(2005, 1, 1).toordinal()
_UPPER: Final = "ABCDEFGHIJKLMNOPRSTW"
_NAME_VARIATIONS: Final = ("initial", "middle", "swap", "typo_first", "typo_last")
_OTHER_VARIATIONS: Final = ("case", "street", "phone", "email", "missing")
_MISSING_FIELDS: Final = ("street", "city", "postal_code", "birth_date", "customer_since")


class _Person:
    """A true person: canonical values every record of its cluster starts from."""

    __slots__ = (
        "birth",
        "city",
        "cluster",
        "digits",
        "email",
        "first",
        "house",
        "last",
        "nid",
        "phone",
        "pool",
        "postal",
        "records",
        "street",
        "street_text",
    )

    def __init__(self, cluster: str, pool: CountryPool, rng: random.Random, number: int) -> None:
        rnd = rng.random
        self.cluster = cluster
        self.pool = pool
        first = pool.first_names[int(rnd() * len(pool.first_names))]
        last = pool.last_names[int(rnd() * len(pool.last_names))]
        self.first, self.last = first.text, last.text
        self.email = email_address(first.ascii, last.ascii, str(number), pool, rng)
        self.phone, self.digits = phone_number(pool, rng)
        self.street = pool.streets[int(rnd() * len(pool.streets))]
        self.house = str(1 + int(rnd() * pool.max_house_number))
        self.street_text = self.street.template.format(self.house)
        self.city, self.postal = pool.places[int(rnd() * len(pool.places))]
        self.birth = _BIRTH_FIRST + int(rnd() * _BIRTH_DAYS)
        self.records: list[Parent] = []
        self.nid: str | None = None


def _abbreviated(street: Street, house: str, rng: random.Random) -> str:
    if not street.abbreviated:
        return street.template.format(house)
    return street.abbreviated[int(rng.random() * len(street.abbreviated))].format(house)


@dataclass(slots=True)
class ChunkStats:
    """What one chunk wrote, beyond the truth writer's per-file counts."""

    persons: int = 0
    duplicate_records: int = 0
    clusters_with_duplicates: int = 0
    deleted_customers: int = 0


@dataclass(frozen=True, slots=True)
class Sinks:
    """Where a chunk writes: the four CSV files (or parts of them) and the truth (or a part)."""

    customers: CsvSink
    contacts: CsvSink
    sales: CsvSink
    tickets: CsvSink
    truth: TruthWriter

    def close(self) -> None:
        for sink in (self.customers, self.contacts, self.sales, self.tickets, self.truth):
            sink.close()


class ChunkGenerator:
    """Writes the customer slots of one chunk; all randomness comes from ``(seed, chunk index)``."""

    def __init__(
        self,
        sinks: Sinks,
        seed: int,
        chunk: Chunk,
        rates: QualityRates,
        window: int,
        fx_rates: Mapping[str, Decimal],
        noise_profile: hard.NoiseProfile = "default",
    ) -> None:
        self.rng = random.Random(f"{seed}:data:{chunk.index}")
        self.slots = chunk_slots(seed, chunk.index, chunk.slots, rates)
        self.rates = rates
        pools = build_pools(seed)
        self.country_table = [
            pool for pool, w in zip(pools.countries, pools.country_weights, strict=True) for _ in range(round(w * 100))
        ]
        self.truth = sinks.truth
        self.customers = sinks.customers
        self.hard = noise_profile == "hard"
        self.children = Children(sinks, chunk.offsets, self.rng, rates, pools, fx_rates, hard_profile=self.hard)
        self.window: list[_Person] = []
        self.window_size = window
        self.window_pos = 0
        self.customer_seq = chunk.offsets.customers
        self.person_seq = chunk.offsets.persons
        self.stats = ChunkStats()
        r = rates
        self.reject_at = (
            r.csv_malformed,
            r.csv_malformed + r.encoding,
            r.csv_malformed + r.encoding + r.required_missing,
        )

    def run(self) -> ChunkStats:
        for slot in self.slots:
            self._slot(slot)
        return self.stats

    def _slot(self, slot: Slot) -> None:
        rnd = self.rng.random
        if slot.deleted_sales:
            self.customer_seq += 1
            self.stats.deleted_customers += 1
            pool = self.country_table[int(rnd() * len(self.country_table))]
            self.children.of_deleted(
                f"C{self.customer_seq:07d}", pool, self._since(), slot.deleted_sales, slot.deleted_tickets
            )
        window = self.window
        if slot.duplicate:
            person = window[int(rnd() * len(window))]
            self.stats.duplicate_records += 1
            if len(person.records) == 1:
                self.stats.clusters_with_duplicates += 1
        else:
            self.person_seq += 1
            self.stats.persons += 1
            pool = self.country_table[int(rnd() * len(self.country_table))]
            person = _Person(f"P{self.person_seq:07d}", pool, self.rng, self.person_seq)
            if self.hard and rnd() < hard.ID_PERSONS:
                person.nid = hard.national_id(self.rng)
            # Another person of a recent person's household, when both live in one country (its address patterns).
            household = self.hard and window and rnd() < hard.HOUSEHOLD
            other = window[int(rnd() * len(window))] if household else person
            if other.pool is person.pool and other is not person:
                person.last, person.street, person.house = other.last, other.street, other.house
                person.street_text, person.city, person.postal = other.street_text, other.city, other.postal
            if len(window) < self.window_size:
                window.append(person)
            else:
                window[self.window_pos] = person
                self.window_pos = (self.window_pos + 1) % self.window_size
        me, since = self._customer(person, slot.duplicate)
        self.children.of_customer(me, person.records, person.pool, since, slot)

    def _since(self) -> int:
        return _SINCE_FIRST + int(self.rng.random() * (LAST_DAY - 180 - _SINCE_FIRST))

    def _customer(self, p: _Person, dup: bool) -> tuple[Parent, int]:
        rng, r, pool = self.rng, self.rates, p.pool
        rnd = rng.random
        self.customer_seq += 1
        cid = f"C{self.customer_seq:07d}"
        first: str | None = p.first
        last: str | None = p.last
        names_case = rnd() < r.name_case
        abbreviate = rnd() < r.street_abbreviation
        phone_alt = rnd() < r.phone_format
        email_mixed = rnd() < r.email_case
        drop = ""
        birth_day, place, street_of, house = p.birth, (p.city, p.postal), p.street, p.house
        if dup and self.hard:  # see crmflow.demo_data.hard
            if rnd() < hard.HARD_NAME:
                first, last, _ = hard.vary_name(p.first, p.last, rng)
            drop = "both" if rnd() < hard.HARD_NO_CONTACT else ""
            if rnd() < hard.HARD_BIRTH:
                birth_day = hard.birth_typo(p.birth, rng)
            if not drop and rnd() < hard.HARD_MOVED:  # a moved person is only findable by e-mail or phone
                place = pool.places[int(rnd() * len(pool.places))]
                street_of = pool.streets[int(rnd() * len(pool.streets))]
                house = str(1 + int(rnd() * pool.max_house_number))
        elif dup:  # one change of the name, and/or one of the spelling of other fields
            kind = _NAME_VARIATIONS[int(rnd() * 5)] if rnd() < 0.65 else ""
            if kind == "initial":
                first = p.first[0] + "."
            elif kind == "middle":
                first = f"{p.first} {_UPPER[int(rnd() * len(_UPPER))]}."
            elif kind == "swap":
                first, last = p.last, p.first
            elif kind == "typo_first":
                first = noise.typo(p.first, rng)
            elif kind == "typo_last":
                last = noise.typo(p.last, rng)
            other = _OTHER_VARIATIONS[int(rnd() * 5)] if not kind or rnd() < 0.6 else ""
            names_case = names_case or other == "case"
            abbreviate = abbreviate or other == "street"
            phone_alt = phone_alt or other == "phone"
            email_mixed = email_mixed or other == "email"
            if other == "missing":
                drop = "email" if rnd() < 0.5 else "phone"

        flags: list[str] = []
        if names_case:
            first_s = noise.case_noise(first, rng) if first is not None else ""
            last_s = noise.case_noise(last, rng) if last is not None else ""
        else:
            first_s, last_s = first or "", last or ""
        u = rnd()
        reject = None
        if u < self.reject_at[2]:
            reject = CSV_MALFORMED if u < self.reject_at[0] else ENCODING if u < self.reject_at[1] else REQUIRED
            if reject == REQUIRED:
                first_s = last_s = " " if rnd() < 0.3 else ""
        unknown = rnd() < r.country_unknown

        email: str | None = p.email
        u = rnd()
        if drop in ("email", "both") or u < r.email_missing:
            email_s, email = "", None
            flags.append("email_missing")
        elif u < r.email_missing + r.email_invalid:
            email_s, email = noise.invalid_email(p.email, rng), None
            flags.append("email_invalid")
        else:
            email_s = noise.email_case(p.email, rng) if email_mixed else p.email

        phone: str | None
        u = rnd()
        if drop in ("phone", "both") or u < r.phone_missing:
            phone_s, phone = "", None
            flags.append("phone_missing")
        elif u < r.phone_missing + r.phone_invalid:
            invalid = pool.phones.invalid
            phone_s, phone = invalid[int(rnd() * len(invalid))], None
            flags.append("phone_invalid")
        else:
            pre = p.phone
            if unknown:  # no default region: only an international spelling parses
                template = pre.international[int(rnd() * len(pre.international))]
            elif phone_alt:
                template = pre.variants[int(rnd() * len(pre.variants))]
            else:
                template = pre.national
            phone_s, phone = template.format(*p.digits), pre.e164(p.digits)

        missing = _MISSING_FIELDS[int(rnd() * 5)] if rnd() < r.field_missing else ""
        street_text = p.street_text if street_of is p.street and house == p.house else street_of.template.format(house)
        street: str | None = street_text
        if missing == "street":
            street_s, street = "", None
        elif abbreviate and not unknown:  # Str → Straße depends on the country being known
            street_s = _abbreviated(street_of, house, rng)
        else:
            street_s = street_text
        city: str | None = place[0]
        if missing == "city":
            city_s, city = "", None
        else:
            city_s = noise.case_noise(place[0], rng) if names_case else place[0]
        postal: str | None = place[1]
        if missing == "postal_code" or unknown:  # no country, no pattern: leave it out
            postal_s, postal = "", None
        elif rnd() < r.postal_code_invalid:
            postal_s, postal = noise.invalid_postal(pool.code, place[1]), None
            flags.append("postal_code_invalid")
        else:
            postal_s = place[1].lower() if names_case else place[1]
        country: str | None = pool.code
        if unknown:
            country_s, country = pool.unknown_spellings[int(rnd() * len(pool.unknown_spellings))], None
            flags.append("country_unknown")
        elif rnd() < r.country_spelling:
            country_s = pool.spellings[int(rnd() * len(pool.spellings))]
        else:
            country_s = pool.code
        birth_s, birth = optional_date(birth_day, missing == "birth_date", "birth_date", flags, rng, r)
        since_day = self._since()
        since_s, since = optional_date(since_day, missing == "customer_since", "customer_since", flags, rng, r)

        fields = [
            cid,
            first_s,
            last_s,
            email_s,
            phone_s,
            street_s,
            city_s,
            postal_s,
            country_s,
            pool.region,
            birth_s,
            since_s,
        ]
        nid: str | None = None
        if self.hard:  # the hard profile's National_ID column
            if p.nid is not None and rnd() < hard.ID_ON_RECORD:
                nid = hard.id_typo(p.nid, rng) if rnd() < hard.ID_TYPO else p.nid
            fields.append(nid or "")
        if rnd() < r.whitespace:
            for _ in range(1 + int(rnd() * 2)):
                i = 1 + int(rnd() * 11)
                fields[i] = noise.pad_whitespace(fields[i], rng)
        if reject == CSV_MALFORMED:
            fields = noise.malformed(fields, rng)
        elif reject == ENCODING:
            fields = noise.mis_encoded(fields)
        line = self.customers.row(fields)
        if reject:
            self.truth.reject(CUSTOMERS, line, cid, p.cluster, reject)
        else:
            clean: tuple[str | None, ...] = (
                cid,
                " ".join(part for part in (first, last) if part),
                first,
                last,
                email,
                phone,
                street,
                city,
                postal,
                country,
                pool.region,
                birth,
                since,
                *((nid,) if self.hard else ()),
            )
            self.truth.ok(CUSTOMERS, line, cid, p.cluster, clean, flags)
        me = Parent(cid, reject is not None)
        p.records.append(me)
        return me, since_day
