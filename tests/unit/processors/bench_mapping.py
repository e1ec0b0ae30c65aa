"""Micro-benchmark of the mapping hot path (not a test): µs per record per entity, demo config.

    .venv/bin/python tests/unit/processors/bench_mapping.py [records per entity | demo data dir] [passes]

With a directory (``crmflow demo-data --out DIR``), the records are the first lines of its CSV files.

Records are realistic and mostly unique (phones, e-mails, amounts, dates), and the transforms' caches are
cleared before every pass, so caching does not flatter the figure. Each entity is timed over several
passes and timed in CPU time of this process (time.process_time), so other processes on the machine
disturb the figure less; the best pass and the median are shown.
"""

from __future__ import annotations

import csv
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import phonenumbers

from crmflow.config import load_config
from processors.exceptions import RecordRejected
from processors.mapping import build_mappers
from processors.transforms import address, contact, dates, money, text
from processors.transforms import phone as phone_module

CACHES = (text._name_case, dates._parse, money._parse, money._convert, contact._email,
          phone_module.parse_e164, address._street)  # fmt: skip

CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"
FIRST = ["anne-marie", "John", "MARY", "j.", "Jürgen", "Zoë", "Pierre", "Sven", "Olivia", "Liam"] * 30
LAST = ["o'brien", "Smith", "MÜLLER", "van Dijk", "Dubois", "Jansen", "Taylor", "Brown", "Schmidt"] * 30
ASCII = ["anne", "john", "mary", "juergen", "zoe", "pierre", "sven", "olivia", "obrien", "smith", "vandijk"]
COUNTRIES = [("US", "usa"), ("CA", "Canada"), ("DE", "Deutschland"), ("FR", "FR"), ("NL", "nl"), ("GB", "UK")]
POSTAL = {"US": "10001", "CA": "K1A 0B1", "DE": "10115", "FR": "75001", "NL": "1011 AB", "GB": "SW1A 1AA"}
STREETS = ["123 Main St.", "45 Oak Ave", "7 Elm Rd", "Berliner Str. 12", "9 Sunset Blvd.", "Rue de Rivoli 3"]
DATE_STYLES: list[Callable[[date], str]] = [
    lambda d: d.isoformat(),
    lambda d: d.strftime("%m/%d/%Y"),
    lambda d: d.strftime("%d.%m.%Y"),
]
AMOUNTS: list[Callable[[float], str]] = [
    lambda a: f"${a:,.2f}",
    lambda a: f"{a:.2f}",
    lambda a: f"{a:,.2f} EUR".replace(",", "X").replace(".", ",").replace("X", ".").replace(",EUR", " EUR"),
    lambda a: f"£{a:,.2f}",
    lambda a: f"{a:.2f} CAD",
]


def phone(rng: random.Random, region: str) -> str:
    cc = phonenumbers.country_code_for_region(region)
    example = phonenumbers.example_number(region)
    assert example is not None
    nsn = str(example.national_number)
    while True:
        candidate = nsn[:-4] + f"{rng.randrange(10000):04d}"
        number = phonenumbers.parse(f"+{cc}{candidate}", None)
        if phonenumbers.is_valid_number(number):
            break
    style = rng.randrange(3)
    fmt = [phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
           phonenumbers.PhoneNumberFormat.E164][style]  # fmt: skip
    return str(phonenumbers.format_number(number, fmt))


def international(rng: random.Random, region: str) -> str:
    number = phonenumbers.parse(phone(rng, region), region)
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))


def day(rng: random.Random) -> str:
    return rng.choice(DATE_STYLES)(date(1950, 1, 1) + timedelta(days=rng.randrange(25000)))


def records(rng: random.Random, n: int) -> dict[str, list[dict[str, str | None]]]:
    out: dict[str, list[dict[str, str | None]]] = {"account": [], "contact": [], "sale": [], "case": []}
    for i in range(n):
        code, spelling = rng.choice(COUNTRIES)
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{rng.choice(ASCII)}.{rng.choice(ASCII)}{rng.randrange(10**6)}@Example.com"
        out["account"].append({
            "Customer_ID": f"C{i:07d}", "First_Name": first, "Last_Name": last, "Contact_Email": email,
            "Phone": phone(rng, code), "Street_Address": rng.choice(STREETS), "City": "new york",
            "Postal_Code": POSTAL[code], "Country": spelling, "Region": "EU", "Birth_Date": day(rng),
            "Customer_Since": day(rng),
        })  # fmt: skip
        out["contact"].append({
            "Contact_ID": f"K{i:07d}", "Customer_ID": f"C{i:07d}", "First_Name": first, "Last_Name": last,
            "Contact_Email": email, "Phone": international(rng, code),
            "Job_Title": " Sales  Manager ",
        })  # fmt: skip
        out["sale"].append({
            "Sale_ID": f"S{i:07d}", "Customer_ID": f"C{i:07d}",
            "Sales_Amount": rng.choice(AMOUNTS)(rng.randrange(100, 10**7) / 100), "Sale_Date": day(rng),
            "Product": "Pro Plan AB-123",
        })  # fmt: skip
        out["case"].append({
            "Ticket_ID": f"T{i:07d}", "Customer_ID": f"C{i:07d}", "Support_Ticket_Date": day(rng),
            "Subject": "Cannot log in", "Status": "Open", "Priority": "High",
        })  # fmt: skip
    return out


FILES = {"account": "customers.csv", "contact": "contacts.csv", "sale": "sales.csv", "case": "tickets.csv"}


def demo_records(directory: Path, n: int = 20000) -> dict[str, list[dict[str, str | None]]]:
    out: dict[str, list[dict[str, str | None]]] = {}
    for entity, name in FILES.items():
        with (directory / name).open(encoding="utf-8", errors="replace", newline="") as f:
            rows = list(csv.DictReader(f))
        out[entity] = [dict(row) for row in rows[:n]]
    return out


def main() -> None:
    arg = sys.argv[1] if len(sys.argv) > 1 else "5000"
    data = demo_records(Path(arg)) if Path(arg).is_dir() else records(random.Random(1), int(arg))
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    mappers = build_mappers(load_config(CONFIG))
    meta: dict[str, Any] = {"run_id": "bench", "source": "bench", "source_position": "bench.csv:1",
                            "mapped_at": datetime.now(UTC)}  # fmt: skip
    best_total = 0.0
    for entity, rows in data.items():
        fn = mappers[entity]
        timings: list[float] = []
        rejected = 0
        for _ in range(passes):
            for cache in CACHES:
                cache.cache_clear()
            rejected = 0
            start = time.process_time()
            for raw in rows:
                try:
                    fn(raw, meta)
                except RecordRejected:
                    rejected += 1
            timings.append((time.process_time() - start) / max(len(rows), 1) * 1e6)
        timings.sort()
        best_total += timings[0]
        print(f"{entity:8s} best {timings[0]:5.1f} µs/record, median {timings[len(timings) // 2]:5.1f} "
              f"({len(rows)} records, {rejected} rejected, caches cleared per pass)")  # fmt: skip
    print(f"mean over the four entities (best): {best_total / len(data):.1f} µs/record")


if __name__ == "__main__":
    main()
