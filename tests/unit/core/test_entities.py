"""Target entity models: fields of the contract, constraints, validation to a plain dict."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from crmflow.entities import (
    CHANGE_FIELDS,
    DEDUPE_FIELDS,
    ENTITIES,
    ENTITY_NAMES,
    METADATA_FIELDS,
    business_fields,
    entity_model,
    required_fields,
    validate_entity,
)
from processors.mapping import avro_field_names

pytestmark = pytest.mark.unit

META: dict[str, Any] = {
    "run_id": "r1", "source": "customers", "source_position": "customers.csv:2", "quality_flags": [],
    "mapped_at": datetime(2024, 1, 1, tzinfo=UTC),
}  # fmt: skip

CONTRACT = {
    "account": ["customer_id", "full_name", "first_name", "last_name", "email", "phone", "street", "city",
                "postal_code", "country", "region", "birth_date", "customer_since", "national_id", "tax_id",
                "legacy_account_number", "company_registration_number"],
    "contact": ["contact_id", "customer_id", "full_name", "first_name", "last_name", "email", "phone",
                "job_title", "national_id", "tax_id"],
    "sale": ["sale_id", "customer_id", "total_sales", "currency", "original_amount", "original_currency",
             "sale_date", "product"],
    "case": ["case_id", "customer_id", "case_creation_date", "subject", "status", "priority"],
}  # fmt: skip
REQUIRED = {
    "account": {"customer_id", "full_name"},
    "contact": {"contact_id", "customer_id", "full_name"},
    "sale": {"sale_id", "customer_id", "total_sales"},
    "case": {"case_id", "customer_id", "case_creation_date"},
}


def test_entities_are_the_contracts() -> None:
    assert set(ENTITY_NAMES) == set(ENTITIES) == set(CONTRACT)
    for name, fields in CONTRACT.items():
        assert list(business_fields(name)) == fields
        assert required_fields(name) == REQUIRED[name]
    assert {"run_id", "source", "source_position", "quality_flags", "golden_id", "mapped_at"} == METADATA_FIELDS


@pytest.mark.parametrize("name", ENTITY_NAMES)
def test_models_match_the_avro_schemas(name: str) -> None:
    avro = avro_field_names(name)
    if avro is None:
        pytest.skip("schemas/target not written yet")
    # The deduplication stage's own fields are not the mapping's business: it never sets them.
    # Nor the change fields (CHANGE_FIELDS), which the processor sets after mapping.
    assert set(entity_model(name).model_fields) == set(avro) - {*DEDUPE_FIELDS.get(name, ()), *CHANGE_FIELDS}


def test_validate_returns_a_plain_dict_with_typed_values() -> None:
    record = validate_entity("sale", {**META, "sale_id": "S1", "customer_id": "C1",
                                      "total_sales": Decimal("1333.26"), "sale_date": date(2024, 1, 2)})  # fmt: skip
    assert type(record) is dict
    assert record["total_sales"] == Decimal("1333.26")
    assert record["sale_date"] == date(2024, 1, 2)
    assert record["golden_id"] is None and record["original_amount"] is None


@pytest.mark.parametrize(
    ("entity", "values", "field"),
    [
        ("account", {"customer_id": "C1", "full_name": "A B", "phone": "2125550134"}, "phone"),
        ("account", {"customer_id": "C1", "full_name": "A B", "country": "USA"}, "country"),
        ("account", {"customer_id": "C1", "full_name": "x" * 300}, "full_name"),
        ("account", {"customer_id": "C1"}, "full_name"),
        ("sale", {"sale_id": "S1", "customer_id": "C1", "total_sales": Decimal("1.234")}, "total_sales"),
        ("sale", {"sale_id": "S1", "customer_id": "C1", "total_sales": Decimal("1e17")}, "total_sales"),
        ("sale", {"sale_id": "S1", "customer_id": "C1", "total_sales": Decimal(1), "currency": "usd"}, "currency"),
        ("case", {"case_id": "T1", "customer_id": "C1", "case_creation_date": None}, "case_creation_date"),
        ("case", {"case_id": "T1", "customer_id": "C1", "case_creation_date": date.today(), "x": 1}, "x"),
    ],
)
def test_constraints(entity: str, values: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_entity(entity, {**META, **values})
    assert err.value.errors()[0]["loc"][0] == field


def test_models_are_frozen() -> None:
    case: Any = entity_model("case").model_validate(
        {**META, "case_id": "T1", "customer_id": "C1", "case_creation_date": date(2024, 1, 1)}
    )
    with pytest.raises(ValidationError):
        case.case_id = "T2"


def test_identifier_fields_are_optional_and_national_and_tax_ids_are_masked_by_default() -> None:
    from pydantic import SecretStr

    from crmflow.pii import PiiConfig
    from processors.masking.masker import Masker

    assert not {"national_id", "tax_id", "legacy_account_number", "company_registration_number"} & required_fields(
        "account"
    )
    masker = Masker(PiiConfig(), profile="staging", key=SecretStr("k" * 32))
    for entity in ("account", "contact"):
        policies = masker.policies(entity)
        assert policies["national_id"] == policies["tax_id"] == "pseudonym", entity


def test_the_pii_defaults_derive_from_the_contract() -> None:
    from crmflow.entities import pii_defaults
    from crmflow.pii import DEFAULT_POLICIES

    assert DEFAULT_POLICIES == pii_defaults() == {
        "first_name": "pseudonym", "last_name": "pseudonym", "email": "format_preserving",
        "phone": "format_preserving", "street": "pseudonym", "postal_code": "format_preserving",
        "birth_date": "format_preserving", "national_id": "pseudonym", "tax_id": "pseudonym",
    }  # fmt: skip
