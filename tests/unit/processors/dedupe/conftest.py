"""Factories of clean account and contact dicts, as the Mapper produces them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

Factory = Callable[..., dict[str, Any]]

_ACCOUNT: dict[str, Any] = {
    "customer_id": "C0000001",
    "full_name": "John Doe",
    "first_name": "John",
    "last_name": "Doe",
    "email": "john.doe1@example.com",
    "phone": "+14146510904",
    "street": "4395 Cameron Avenue",
    "city": "New Lauriehaven",
    "postal_code": "01236",
    "country": "US",
    "region": "NA",
    "birth_date": date(1971, 4, 28),
    "customer_since": date(2020, 8, 11),
    "source": "customers.csv",
    "source_position": "customers.csv:2",
    "quality_flags": [],
}
_CONTACT: dict[str, Any] = {
    "contact_id": "K0000001",
    "customer_id": "C0000001",
    "full_name": "Judith Salazar",
    "first_name": "Judith",
    "last_name": "Salazar",
    "email": "salazar.judith.c1@us.example.net",
    "phone": "+19316295484",
    "job_title": "Contractor",
    "source": "contacts.csv",
}


def _full_name(record: dict[str, Any]) -> dict[str, Any]:
    parts = (record.get("first_name"), record.get("last_name"))
    record["full_name"] = " ".join(p for p in parts if p)
    return record


@pytest.fixture
def account() -> Factory:
    """``account(customer_id=..., **fields)``: John Doe with the given fields replaced (full_name follows)."""

    def make(**fields: Any) -> dict[str, Any]:
        return _full_name({**_ACCOUNT, **fields})

    return make


@pytest.fixture
def contact() -> Factory:
    def make(**fields: Any) -> dict[str, Any]:
        return _full_name({**_CONTACT, **fields})

    return make
