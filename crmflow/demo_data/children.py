"""Contacts, sales and tickets of a customer record, and orphans of deleted customers.

A child's own reject cause (bad line, unparseable amount or date, missing required field) wins over
``orphan``: the snapshot and process stages come before the sink that finds the parent missing. A child
is an orphan when its parent customer record was rejected or was deleted from the legacy CRM (its id
never appears in ``customers.csv``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Final, NamedTuple

from crmflow.demo_data import hard, noise
from crmflow.demo_data.layout import (
    CSV_MALFORMED,
    CURRENCY_FORMAT,
    DATE_FORMAT,
    ENCODING,
    ORPHAN,
    REQUIRED,
)
from crmflow.demo_data.phones import PhonePrefix
from crmflow.demo_data.plan import Counts, Slot
from crmflow.demo_data.pools import CountryPool, Pools
from crmflow.demo_data.rates import QualityRates
from crmflow.demo_data.writer import CsvSink

if TYPE_CHECKING:
    from crmflow.demo_data.generator import Sinks

BASE_CURRENCY: Final = "USD"
LAST_DAY: Final = date(2025, 6, 30).toordinal()


class Parent(NamedTuple):
    """A customer id a child may point at, and whether that customer never reaches the sink."""

    customer_id: str
    rejected: bool


def email_address(first: str, last: str, suffix: str, pool: CountryPool, rng: random.Random) -> str:
    """A canonical (lower-case, valid) address on an example domain, unique by ``suffix``."""
    k = rng.random()
    if k < 0.4:
        local = f"{first}.{last}"
    elif k < 0.6:
        local = f"{first[0]}{last}"
    elif k < 0.75:
        local = f"{first}_{last}"
    elif k < 0.9:
        local = f"{last}.{first}"
    else:
        local = f"{first}{last[0]}"
    domains = pool.email_domains
    return f"{local}{suffix}@{domains[int(rng.random() * len(domains))]}"


def phone_number(pool: CountryPool, rng: random.Random) -> tuple[PhonePrefix, str]:
    """A valid number of the pool's country: a checked prefix and its random trailing digits."""
    prefixes = pool.phones.prefixes
    prefix = prefixes[int(rng.random() * len(prefixes))]
    return prefix, f"{int(rng.random() * 10**prefix.tail):0{prefix.tail}d}"


def optional_date(
    day: int, missing: bool, field: str, flags: list[str], rng: random.Random, rates: QualityRates
) -> tuple[str, str | None]:
    """Source text and clean ISO value of an optional date; appends ``<field>_invalid`` if broken."""
    if missing:
        return "", None
    u = rng.random()
    if u < rates.date_invalid:
        flags.append(f"{field}_invalid")
        return noise.invalid_date_text(date.fromordinal(day), rng), None
    texts = noise.date_texts()
    i = day - texts.first
    if u > 1.0 - rates.date_format:
        return texts.styles[1 + int(rng.random() * 2)][i], texts.iso[i]
    return texts.iso[i], texts.iso[i]


_CONTACT_WINDOW: Final = 2000


class _ContactPerson(NamedTuple):
    """Hard profile: a contact person's first record, which its duplicates start from."""

    cluster: str
    parent: Parent
    first: str
    last: str
    email: str | None
    phone: str | None
    phone_text: str
    job: str | None


class Children:
    """Writes ``contacts.csv``, ``sales.csv`` and ``tickets.csv`` and their truth lines.

    The common path of each record (no reject, little noise) is kept short on purpose: these three
    methods run about three times per customer record.
    """

    def __init__(
        self,
        sinks: Sinks,
        offsets: Counts,
        rng: random.Random,
        rates: QualityRates,
        pools: Pools,
        fx_rates: Mapping[str, Decimal],
        *,
        hard_profile: bool = False,
    ) -> None:
        self.rng = rng
        #: The hard profile: contacts get duplicates and a truth cluster (see :mod:`crmflow.demo_data.hard`).
        self.hard = hard_profile
        self.contact_persons: list[_ContactPerson] = []
        self.contact_window_pos = 0
        self.rates = rates
        self.pools = pools
        self.truth = sinks.truth
        self.fx_rates = {cur: rate.as_integer_ratio() for cur, rate in fx_rates.items()}
        self.amounts = noise.amount_table()
        self.dates = noise.date_texts()
        self.contacts, self.sales, self.tickets = sinks.contacts, sinks.sales, sinks.tickets
        self.contact_seq, self.sale_seq, self.ticket_seq = offsets.contacts, offsets.sales, offsets.tickets
        r = rates
        self.reject_at = (
            r.csv_malformed,
            r.csv_malformed + r.encoding,
            r.csv_malformed + r.encoding + r.required_missing,
        )
        # A draw at or above these is a record without reject cause (the common path, one comparison).
        self.contact_ok_from = self.reject_at[2]
        self.sale_ok_from = self.reject_at[2] + r.amount_reject
        self.ticket_ok_from = self.reject_at[2] + r.date_reject

    def of_customer(self, me: Parent, records: Sequence[Parent], pool: CountryPool, since: int, slot: Slot) -> None:
        """Children of customer record ``me``; with duplicates they may point at any of ``records``."""
        rnd = self.rng.random
        mix = self.rates.duplicate_child_mix if len(records) > 1 else 0.0
        for _ in range(slot.contacts):
            self._contact(records[int(rnd() * len(records))] if rnd() < mix else me, pool)
        for _ in range(slot.sales):
            self._sale(records[int(rnd() * len(records))] if rnd() < mix else me, pool, since)
        for _ in range(slot.tickets):
            self._ticket(records[int(rnd() * len(records))] if rnd() < mix else me, since)

    def of_deleted(self, customer_id: str, pool: CountryPool, since: int, sales: int, tickets: int) -> None:
        """Sales and tickets left behind by a customer deleted from the legacy CRM."""
        parent = Parent(customer_id, True)
        for _ in range(sales):
            self._sale(parent, pool, since)
        for _ in range(tickets):
            self._ticket(parent, since)

    def _reject(self, u: float, own_rule: str) -> str:
        """The reject cause a draw ``u`` below the entity's ``*_ok_from`` stands for."""
        at = self.reject_at
        if u >= at[2]:
            return own_rule
        return CSV_MALFORMED if u < at[0] else ENCODING if u < at[1] else REQUIRED

    def _emit(
        self,
        sink: CsvSink,
        fields: list[str],
        reject: str | None,
        parent: Parent,
        key: str,
        clean: tuple[str | None, ...],
        flags: list[str],
        cluster: str | None = None,
    ) -> None:
        rng = self.rng
        if rng.random() < self.rates.whitespace:  # never the ids: they are the keys
            i = 2 + int(rng.random() * (len(fields) - 2))
            fields[i] = noise.pad_whitespace(fields[i], rng)
        if reject is None:
            line = sink.row(fields)
            if parent.rejected:
                self.truth.reject(sink.source, line, key, None, ORPHAN)
            else:
                self.truth.ok(sink.source, line, key, cluster, clean, flags)
            return
        if reject == CSV_MALFORMED:
            fields = noise.malformed(fields, rng)
        elif reject == ENCODING:
            fields = noise.mis_encoded(fields)
        self.truth.reject(sink.source, sink.row(fields), key, cluster, reject)

    def _contact(self, parent: Parent, pool: CountryPool) -> None:
        rng, r = self.rng, self.rates
        rnd = rng.random
        if self.hard and self.contact_persons and rnd() < hard.CONTACT_DUPLICATE:
            self._duplicate_contact(parent)
            return
        self.contact_seq += 1
        key = f"K{self.contact_seq:07d}"
        fn = pool.first_names[int(rnd() * len(pool.first_names))]
        ln = pool.last_names[int(rnd() * len(pool.last_names))]
        first, last = fn.text, ln.text
        if rnd() < r.name_case:
            first_s, last_s = noise.case_noise(first, rng), noise.case_noise(last, rng)
        else:
            first_s, last_s = first, last
        u = rnd()
        reject = None if u >= self.contact_ok_from else self._reject(u, REQUIRED)
        if reject == REQUIRED:
            first_s = last_s = ""
        flags: list[str] = []
        email: str | None = email_address(fn.ascii, ln.ascii, f".c{self.contact_seq}", pool, rng)
        email_s = email or ""
        u = rnd()
        if u < r.email_missing:
            email_s, email = "", None
            flags.append("email_missing")
        elif u < r.email_missing + r.email_invalid:
            email_s, email = noise.invalid_email(email_s, rng), None
            flags.append("email_invalid")
        elif u > 1.0 - r.email_case:
            email_s = noise.email_case(email_s, rng)
        phone: str | None
        u = rnd()
        if u < r.phone_missing:
            phone_s, phone = "", None
            flags.append("phone_missing")
        elif u < r.phone_missing + r.phone_invalid:
            invalid = pool.phones.invalid
            phone_s, phone = invalid[int(rnd() * len(invalid))], None
            flags.append("phone_invalid")
        else:  # contacts have no country column: their phones are written internationally
            prefixes = pool.phones.prefixes
            pre = prefixes[int(rnd() * len(prefixes))]
            digits = f"{int(rnd() * 10**pre.tail):0{pre.tail}d}"
            spellings = pre.international
            template = spellings[int(rnd() * len(spellings))] if rnd() < r.phone_format else spellings[0]
            phone_s, phone = template.format(*digits), pre.e164(digits)
        job: str | None = None if rnd() < r.field_missing else pool.job_titles[int(rnd() * len(pool.job_titles))]
        fields = [key, parent.customer_id, first_s, last_s, email_s, phone_s, job or ""]
        clean = (key, parent.customer_id, f"{first} {last}", first, last, email, phone, job)
        if not self.hard:
            self._emit(self.contacts, fields, reject, parent, key, clean, flags)
            return
        person = _ContactPerson(key, parent, first, last, email, phone, phone_s if phone else "", job)
        if len(self.contact_persons) < _CONTACT_WINDOW:
            self.contact_persons.append(person)
        else:
            self.contact_persons[self.contact_window_pos] = person
            self.contact_window_pos = (self.contact_window_pos + 1) % _CONTACT_WINDOW
        self._emit(self.contacts, fields, reject, parent, key, clean, flags, key)

    def _duplicate_contact(self, parent: Parent) -> None:
        """Hard profile: a further record of a recent contact person, on its account or on ``parent``.

        On its own account it loses e-mail and phone at the hard rate; on another account it keeps one of them
        (see :data:`hard.CONTACT_SAME_ACCOUNT`), drawn from the same numbers, so the rest of the data set is the
        same bytes as before that rule."""
        rng = self.rng
        rnd = rng.random
        self.contact_seq += 1
        key = f"K{self.contact_seq:07d}"
        person = self.contact_persons[int(rnd() * len(self.contact_persons))]
        on = person.parent if rnd() < hard.CONTACT_SAME_ACCOUNT else parent
        if person.email is None and person.phone is None:
            # Nothing but a name could link it on another account: such a person is entered again on its own.
            on = person.parent
        first: str | None = person.first
        last: str | None = person.last
        if rnd() < hard.HARD_NAME:
            first, last, _ = hard.vary_name(person.first, person.last, rng)
        flags: list[str] = []
        email, phone, phone_s = person.email, person.phone, person.phone_text
        u = rnd()
        if u < hard.HARD_NO_CONTACT:
            if on.customer_id == person.parent.customer_id:
                email, phone, phone_s = None, None, ""
            elif email is not None and (phone is None or u < hard.HARD_NO_CONTACT / 2):
                phone, phone_s = None, ""  # on another account it keeps one channel: here its e-mail
            else:
                email = None  # ... or its phone (a mobile)
        if email is None:
            flags.append("email_missing")
        if phone is None:
            flags.append("phone_missing")
        job = person.job if rnd() < 0.5 else None
        u = rnd()
        reject = None if u >= self.contact_ok_from else self._reject(u, REQUIRED)
        first_s, last_s = (first or "", last or "") if reject != REQUIRED else ("", "")
        fields = [key, on.customer_id, first_s, last_s, email or "", phone_s, job or ""]
        full = " ".join(part for part in (first, last) if part)
        clean = (key, on.customer_id, full, first, last, email, phone, job)
        self._emit(self.contacts, fields, reject, on, key, clean, flags, person.cluster)

    def _sale(self, parent: Parent, pool: CountryPool, since: int) -> None:
        rng, r = self.rng, self.rates
        rnd = rng.random
        self.sale_seq += 1
        key = f"S{self.sale_seq:07d}"
        amounts = self.amounts
        cents = amounts[int(rnd() * len(amounts))] + int(rnd() * 100)
        currency = pool.currency
        u = rnd()
        reject = None if u >= self.sale_ok_from else self._reject(u, CURRENCY_FORMAT)
        if reject is None or reject in (CSV_MALFORMED, ENCODING):
            amount_s = noise.amount_text(cents, currency, rng)
        elif reject == REQUIRED:
            amount_s = " " if rnd() < 0.3 else ""
        else:
            amount_s = noise.invalid_amount_text(rng)
        flags: list[str] = []
        missing = ("sale_date", "product")[int(rnd() * 2)] if rnd() < r.field_missing else ""
        day = since + int(rnd() * (LAST_DAY - since + 1))
        date_s, sale_date = optional_date(day, missing == "sale_date", "sale_date", flags, rng, r)
        products = self.pools.products
        product = None if missing == "product" else products[int(rnd() * len(products))]
        fields = [key, parent.customer_id, amount_s, date_s, product or ""]
        total = noise.to_base_cents(cents, self.fx_rates[currency])
        clean = (
            key,
            parent.customer_id,
            f"{total // 100}.{total % 100:02d}",
            BASE_CURRENCY,
            f"{cents // 100}.{cents % 100:02d}",
            currency,
            sale_date,
            product,
        )
        self._emit(self.sales, fields, reject, parent, key, clean, flags)

    def _ticket(self, parent: Parent, since: int) -> None:
        rng, r, pools, dates = self.rng, self.rates, self.pools, self.dates
        rnd = rng.random
        self.ticket_seq += 1
        key = f"T{self.ticket_seq:07d}"
        u = rnd()
        reject = None if u >= self.ticket_ok_from else self._reject(u, DATE_FORMAT)
        day = since + int(rnd() * (LAST_DAY - since + 1))
        if reject is None or reject in (CSV_MALFORMED, ENCODING):
            date_s = dates.styles[1 + int(rnd() * 2) if rnd() < r.date_format else 0][day - dates.first]
        elif reject == REQUIRED:
            date_s = " " if rnd() < 0.3 else ""
        else:
            date_s = noise.invalid_date_text(date.fromordinal(day), rng)
        missing = ("subject", "priority")[int(rnd() * 2)] if rnd() < r.field_missing else ""
        subject = None if missing == "subject" else pools.subjects[int(rnd() * len(pools.subjects))]
        priority = None if missing == "priority" else pools.priorities[int(rnd() * len(pools.priorities))]
        status = pools.statuses[int(rnd() * len(pools.statuses))]
        fields = [key, parent.customer_id, date_s, subject or "", status, priority or ""]
        clean = (key, parent.customer_id, dates.iso[day - dates.first], subject, status, priority)
        self._emit(self.tickets, fields, reject, parent, key, clean, [])
