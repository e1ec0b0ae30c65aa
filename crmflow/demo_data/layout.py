"""Names shared by the generator, the ground truth and the legacy-database loader.

The legacy file layout and the target entities are those of ``docs/data-contract.md``; the loader and
later the table extraction read the column lists from here, so there is one place to change them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Entity = Literal["account", "contact", "sale", "case"]
Rule = Literal["csv_malformed", "encoding", "date_format", "currency_format", "required", "orphan"]

CSV_MALFORMED: Final = "csv_malformed"
ENCODING: Final = "encoding"
DATE_FORMAT: Final = "date_format"
CURRENCY_FORMAT: Final = "currency_format"
REQUIRED: Final = "required"
ORPHAN: Final = "orphan"

#: Rules of lines that never become a record (not loaded into the legacy database either).
SNAPSHOT_RULES: Final = frozenset({CSV_MALFORMED, ENCODING})


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One legacy CSV file: its name, the entity it becomes, its columns (first is the id)."""

    name: str
    table: str
    entity: Entity
    columns: tuple[str, ...]

    @property
    def id_column(self) -> str:
        return self.columns[0]


CUSTOMERS: Final = SourceFile(
    "customers.csv",
    "customers",
    "account",
    (
        "Customer_ID",
        "First_Name",
        "Last_Name",
        "Contact_Email",
        "Phone",
        "Street_Address",
        "City",
        "Postal_Code",
        "Country",
        "Region",
        "Birth_Date",
        "Customer_Since",
    ),
)
CONTACTS: Final = SourceFile(
    "contacts.csv",
    "contacts",
    "contact",
    ("Contact_ID", "Customer_ID", "First_Name", "Last_Name", "Contact_Email", "Phone", "Job_Title"),
)
SALES: Final = SourceFile(
    "sales.csv", "sales", "sale", ("Sale_ID", "Customer_ID", "Sales_Amount", "Sale_Date", "Product")
)
TICKETS: Final = SourceFile(
    "tickets.csv",
    "tickets",
    "case",
    ("Ticket_ID", "Customer_ID", "Support_Ticket_Date", "Subject", "Status", "Priority"),
)

SOURCE_FILES: Final = (CUSTOMERS, CONTACTS, SALES, TICKETS)
TRUTH_FILE: Final = "truth.jsonl"

#: Target fields of each entity, in the order ``truth.jsonl`` writes them under ``clean``
#: (``quality_flags`` follows last).
TARGET_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "account": (
        "customer_id",
        "full_name",
        "first_name",
        "last_name",
        "email",
        "phone",
        "street",
        "city",
        "postal_code",
        "country",
        "region",
        "birth_date",
        "customer_since",
    ),
    "contact": ("contact_id", "customer_id", "full_name", "first_name", "last_name", "email", "phone", "job_title"),
    "sale": (
        "sale_id",
        "customer_id",
        "total_sales",
        "currency",
        "original_amount",
        "original_currency",
        "sale_date",
        "product",
    ),
    "case": ("case_id", "customer_id", "case_creation_date", "subject", "status", "priority"),
}
