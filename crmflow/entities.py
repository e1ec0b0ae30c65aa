"""The target entities of the new CRM (docs/data-contract.md), as pydantic models: the entity contract.

Each field is declared once, here: its name, type, whether it is required, and (``json_schema_extra``
``pii``) the policy that masks it by default. The rest derives from it: the PII defaults
(:func:`pii_defaults`, :data:`crmflow.pii.DEFAULT_POLICIES`), the sink's table columns
(:func:`column_type`, :mod:`sinks.postgres.tables`); tests hold the Avro schemas and the SQL migrations to it.

Field names are snake_case and match ``schemas/target/<entity>.avsc``. Each entity carries the record
metadata (run_id, source, source_position, quality_flags, mapped_at, golden_id). Validation is the last
step of mapping; :func:`validate_entity` returns a plain dict ready for Avro (dates as ``datetime.date``,
money as ``Decimal``) without building a model dump.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import SchemaValidator

EntityName = Literal["account", "contact", "sale", "case"]
ENTITY_NAMES: tuple[str, ...] = get_args(EntityName)


Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]
FullName = Annotated[str, StringConstraints(min_length=1, max_length=201)]
Email = Annotated[str, StringConstraints(min_length=3, max_length=254)]
Street = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=50)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=500)]
MetaText = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Phone = Annotated[str, StringConstraints(pattern=r"^\+[1-9]\d{1,14}$")]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
PostalCode = Annotated[str, StringConstraints(min_length=1, max_length=16)]
Money = Annotated[Decimal, Field(max_digits=18, decimal_places=2)]


class TargetEntity(BaseModel):
    """Metadata every target entity carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: MetaText
    source: MetaText
    source_position: MetaText
    quality_flags: list[str] = Field(default_factory=list, description="sorted data-quality findings")
    mapped_at: AwareDatetime
    golden_id: Id | None = None


class Account(TargetEntity):
    """A customer account, from legacy customers."""

    customer_id: Id
    full_name: FullName
    first_name: Name | None = Field(default=None, json_schema_extra={"pii": "pseudonym"})
    last_name: Name | None = Field(default=None, json_schema_extra={"pii": "pseudonym"})
    email: Email | None = Field(default=None, json_schema_extra={"pii": "format_preserving"})
    phone: Phone | None = Field(default=None, json_schema_extra={"pii": "format_preserving"})
    street: Street | None = Field(default=None, json_schema_extra={"pii": "pseudonym"})
    city: Name | None = None
    postal_code: PostalCode | None = Field(default=None, json_schema_extra={"pii": "format_preserving"})
    country: CountryCode | None = None
    region: ShortText | None = None
    birth_date: date | None = Field(default=None, json_schema_extra={"pii": "format_preserving"})
    customer_since: date | None = None
    national_id: Id | None = Field(
        default=None, json_schema_extra={"pii": "pseudonym"},
        description="national or social security id (PII: masked by default)",
    )
    tax_id: Id | None = Field(
        default=None, json_schema_extra={"pii": "pseudonym"}, description="tax or VAT id (masked by default)"
    )
    legacy_account_number: Id | None = Field(default=None, description="account number in the legacy system")
    company_registration_number: Id | None = Field(default=None, description="commercial register number")


class Contact(TargetEntity):
    """A person at a customer, from legacy contacts; child of an account."""

    contact_id: Id
    customer_id: Id
    full_name: FullName
    first_name: Name | None = Field(default=None, json_schema_extra={"pii": "pseudonym"})
    last_name: Name | None = Field(default=None, json_schema_extra={"pii": "pseudonym"})
    email: Email | None = Field(default=None, json_schema_extra={"pii": "format_preserving"})
    phone: Phone | None = Field(default=None, json_schema_extra={"pii": "format_preserving"})
    job_title: Text | None = None
    national_id: Id | None = Field(
        default=None, json_schema_extra={"pii": "pseudonym"},
        description="national or social security id (PII: masked by default)",
    )
    tax_id: Id | None = Field(
        default=None, json_schema_extra={"pii": "pseudonym"}, description="tax id (masked by default)"
    )


class Sale(TargetEntity):
    """A sale booked to an account, from legacy sales; total_sales is in the base currency."""

    sale_id: Id
    customer_id: Id
    total_sales: Money
    currency: CurrencyCode | None = None
    original_amount: Money | None = None
    original_currency: CurrencyCode | None = None
    sale_date: date | None = None
    product: Text | None = None


class Case(TargetEntity):
    """A support case, from legacy tickets (case_id is the Ticket_ID)."""

    case_id: Id
    customer_id: Id
    case_creation_date: date
    subject: Subject | None = None
    status: ShortText | None = None
    priority: ShortText | None = None


ENTITIES: Mapping[str, type[TargetEntity]] = MappingProxyType(
    {"account": Account, "contact": Contact, "sale": Sale, "case": Case}
)
METADATA_FIELDS: frozenset[str] = frozenset(TargetEntity.model_fields)
#: Fields of a change (change data capture) in every target Avro schema, set by the processor after mapping,
#: not by the mapping: the source LSN, whether it is a delete, the fields a change left unchanged. Of these
#: the target stores ``source_lsn`` only (its tables' ``source_lsn`` column, migration 0008).
CHANGE_FIELDS: tuple[str, ...] = ("source_lsn", "deleted", "unchanged_fields")
#: Fields the deduplication stage sets on its golden-record updates, per entity (never the mapping): in the
#: Avro schemas, not in the models. A contact's ``golden_id`` is its parent account's golden id; its own
#: cluster's is ``contact_golden_id`` (``dedupe.contacts``).
DEDUPE_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "account": ("merged_golden_ids", "match_evidence"),
    "contact": ("contact_golden_id", "merged_contact_golden_ids", "match_evidence"),
})
#: Of :data:`DEDUPE_FIELDS`, those the target stores as a (text) column of the entity's table (migration 0009):
#: the golden contact id. The others go to ``crm.xref`` (evidence) and ``crm.golden_merges`` (merges).
STORED_DEDUPE_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType({"contact": ("contact_golden_id",)})
#: The golden-id fields of each deduplicated entity: (own golden id, golden ids absorbed, the record's own id).
GOLDEN_ID_FIELDS: Mapping[str, tuple[str, str, str]] = MappingProxyType({
    "account": ("golden_id", "merged_golden_ids", "customer_id"),
    "contact": ("contact_golden_id", "merged_contact_golden_ids", "contact_id"),
})


def entity_model(name: str) -> type[TargetEntity]:
    """The model of entity ``name``; KeyError names the valid entities."""
    try:
        return ENTITIES[name]
    except KeyError:
        raise KeyError(f"unknown entity {name!r}; expected one of: {', '.join(ENTITY_NAMES)}") from None


def business_fields(name: str) -> tuple[str, ...]:
    """The entity's own fields (not the metadata), in contract order."""
    return tuple(f for f in entity_model(name).model_fields if f not in METADATA_FIELDS)


def required_fields(name: str) -> frozenset[str]:
    """The entity's required business fields (a mapping must fill them or reject the record)."""
    model = entity_model(name)
    return frozenset(f for f in business_fields(name) if model.model_fields[f].is_required())


def pii_defaults() -> dict[str, str]:
    """Field name → the masking policy the contract declares for it (``json_schema_extra={"pii": ...}``), in
    any entity that has the field: :data:`crmflow.pii.DEFAULT_POLICIES`. A name is personal data, or not,
    wherever it appears, so two entities declaring different policies for one name is an error."""
    out: dict[str, str] = {}
    for name in ENTITY_NAMES:
        for field, info in entity_model(name).model_fields.items():
            extra = info.json_schema_extra
            policy = extra.get("pii") if isinstance(extra, dict) else None
            if policy is None:
                continue
            if out.setdefault(field, str(policy)) != policy:
                raise ValueError(f"{name}.{field}: pii {policy!r}, but another entity declares {out[field]!r}")
    return out


#: How a contract field is stored: the target tables' column types (:mod:`sinks.postgres.tables`).
ColumnType = Literal["text", "date", "numeric", "timestamptz", "text[]"]


def _annotation_types(annotation: Any) -> set[Any]:
    found = {annotation}
    for arg in get_args(annotation):
        found |= _annotation_types(arg)
    return found


def column_type(name: str, field: str) -> ColumnType:
    """The column type of ``name.field``, from the model's annotation: dates, money, lists, times, text."""
    types = _annotation_types(entity_model(name).model_fields[field].annotation)
    if date in types:
        return "date"
    if Decimal in types:
        return "numeric"
    if list in types or any(getattr(t, "__origin__", None) is list for t in types):
        return "text[]"
    if AwareDatetime in types or any(isinstance(t, type) and issubclass(t, datetime) for t in types):
        return "timestamptz"
    return "text"


def id_field(name: str) -> str:
    """The entity's own id field: its first business field (customer_id, contact_id, sale_id, case_id)."""
    return business_fields(name)[0]


def validator(name: str) -> SchemaValidator:
    """The compiled validator of entity ``name`` (build once, call per record)."""
    return entity_model(name).__pydantic_validator__  # type: ignore[return-value]


def validate_entity(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one target record; returns its fields as a plain dict. Raises pydantic's ValidationError.

    The model instance's ``__dict__`` is the validated field dict, so no model dump is needed.
    """
    return dict(vars(validator(name).validate_python(data)))
