"""Builders of mapped records (as the processor emits them), a sink on a fresh target database, and a look into
the target database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from sinks.base import SinkRecord
from sinks.postgres import PostgresSink

MAPPED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _meta(position: str) -> dict[str, Any]:
    return {"run_id": "run-1", "source": "legacy", "source_position": position, "quality_flags": [],
            "mapped_at": MAPPED_AT, "golden_id": None}


class Records:
    """Mapped target entities with every required field; ``**over`` replaces fields."""

    @staticmethod
    def account(n: int, **over: Any) -> dict[str, Any]:
        return {"customer_id": f"C{n:07d}", "full_name": f"Ann Lee{n}", "first_name": "Ann", "last_name": f"Lee{n}",
                "email": f"ann{n}@example.com", "phone": "+14155550123", "street": "1 Main Street",
                "city": "Springfield", "postal_code": "12345", "country": "US", "region": "NA",
                "birth_date": date(1980, 1, 2), "customer_since": date(2010, 3, 4),
                **_meta(f"customers.csv:{n + 1}"), "quality_flags": ["phone_missing"] if n % 2 else [], **over}

    @staticmethod
    def contact(n: int, customer: int, **over: Any) -> dict[str, Any]:
        return {"contact_id": f"K{n:07d}", "customer_id": f"C{customer:07d}", "full_name": "Bo Park",
                "first_name": "Bo", "last_name": "Park", "email": f"bo{n}@example.com", "phone": None,
                "job_title": "Buyer", **_meta(f"contacts.csv:{n + 1}"), **over}

    @staticmethod
    def sale(n: int, customer: int, **over: Any) -> dict[str, Any]:
        return {"sale_id": f"S{n:07d}", "customer_id": f"C{customer:07d}", "total_sales": Decimal("1234.50"),
                "currency": "USD", "original_amount": Decimal("1143.06"), "original_currency": "EUR",
                "sale_date": date(2023, 7, 8), "product": "Widget", **_meta(f"sales.csv:{n + 1}"), **over}

    @staticmethod
    def case(n: int, customer: int, **over: Any) -> dict[str, Any]:
        return {"case_id": f"T{n:07d}", "customer_id": f"C{customer:07d}", "case_creation_date": date(2024, 1, 9),
                "subject": "Broken widget", "status": "Open", "priority": "High",
                **_meta(f"tickets.csv:{n + 1}"), **over}

    @staticmethod
    def sink_records(entity: str, values: list[dict[str, Any]], first_offset: int = 0) -> list[SinkRecord]:
        topic = f"test.mapped.{entity}"
        return [SinkRecord(entity, v, topic, 0, first_offset + i, None, b"avro-bytes") for i, v in enumerate(values)]


@pytest.fixture
def records() -> type[Records]:
    return Records


@pytest.fixture
def query() -> Callable[[str, str], list[tuple[Any, ...]]]:
    """``query(dsn, sql) -> rows``."""

    def run(dsn: str, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn) as conn:
            return conn.execute(sql.encode()).fetchall()

    return run


@pytest.fixture
def sink(pg_dsn_factory: Callable[[], str]) -> Iterator[PostgresSink]:
    """A PostgreSQL sink set up on a fresh target database, closed after the test."""
    s = PostgresSink(pg_dsn_factory())
    s.setup()
    yield s
    s.close()
