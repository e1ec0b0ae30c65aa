"""The Mapper end to end: demo config on sample raw records of each entity, policies, rejects."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crmflow.config import MigrationConfig, load_config
from processors.exceptions import MappingError, RecordRejected
from processors.mapping import Mapper, build_mappers

pytestmark = pytest.mark.unit

DEMO = Path(__file__).resolve().parents[3] / "deploy" / "demo" / "crmflow.yaml"
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
META: dict[str, Any] = {"run_id": "run-1", "source": "customers", "source_position": "customers.csv:2",
                        "mapped_at": NOW}  # fmt: skip

CUSTOMER: dict[str, str | None] = {
    "Customer_ID": " C0000001 ", "First_Name": "anne-marie", "Last_Name": "O'BRIEN",
    "Contact_Email": " Anne.OBrien@Example.COM ", "Phone": "(212) 555-0134", "Street_Address": "123 Main St.",
    "City": "new  york", "Postal_Code": "10001", "Country": "usa", "Region": "NA",
    "Birth_Date": "03/04/1980", "Customer_Since": "31.12.2019",
}  # fmt: skip


@pytest.fixture(scope="module")
def demo() -> MigrationConfig:
    return load_config(DEMO)


@pytest.fixture(scope="module")
def mappers(demo: MigrationConfig) -> dict[str, Any]:
    return build_mappers(demo)


def test_account(mappers: dict[str, Any]) -> None:
    assert mappers["account"](CUSTOMER, META) == {
        "customer_id": "C0000001", "full_name": "Anne-Marie O'Brien", "first_name": "Anne-Marie",
        "last_name": "O'Brien", "email": "anne.obrien@example.com", "phone": "+12125550134",
        "street": "123 Main Street", "city": "New York", "postal_code": "10001", "country": "US",
        "region": "NA", "birth_date": date(1980, 3, 4), "customer_since": date(2019, 12, 31),
        # the optional identifiers (migration 0006): the demo's customers have none
        "national_id": None, "tax_id": None, "legacy_account_number": None, "company_registration_number": None,
        "run_id": "run-1", "source": "customers", "source_position": "customers.csv:2", "quality_flags": [],
        "mapped_at": NOW, "golden_id": None,
    }  # fmt: skip


def test_account_german_record(mappers: dict[str, Any]) -> None:
    raw = {**CUSTOMER, "Country": "Deutschland", "Phone": "030 1234567", "Street_Address": "Berliner Str. 12",
           "Postal_Code": "10115", "City": "BERLIN", "Region": "EU"}  # fmt: skip
    out = mappers["account"](raw, META)
    assert (out["country"], out["phone"], out["street"], out["city"]) == (
        "DE", "+49301234567", "Berliner Straße 12", "Berlin"
    )  # fmt: skip


def test_account_quality_flags(mappers: dict[str, Any]) -> None:
    raw = {**CUSTOMER, "Contact_Email": "anne@@example.com", "Phone": "", "Postal_Code": "1234",
           "Birth_Date": "30.02.1980", "Customer_Since": None}  # fmt: skip
    out = mappers["account"](raw, META)
    assert out["quality_flags"] == ["birth_date_invalid", "email_invalid", "phone_missing", "postal_code_invalid"]
    assert out["email"] is out["phone"] is out["postal_code"] is out["birth_date"] is out["customer_since"] is None


def test_account_unknown_country(mappers: dict[str, Any]) -> None:
    raw = {**CUSTOMER, "Country": "Untied States", "Contact_Email": None}
    out = mappers["account"](raw, META)
    # No country: a national phone number cannot be read, the postal code cannot be checked.
    assert out["quality_flags"] == ["country_unknown", "email_missing", "phone_invalid"]
    assert out["country"] is None and out["postal_code"] == "10001"


def test_full_name_skips_a_missing_part(mappers: dict[str, Any]) -> None:
    out = mappers["account"]({**CUSTOMER, "First_Name": "  "}, META)
    assert out["full_name"] == "O'Brien" and out["first_name"] is None


@pytest.mark.parametrize("blank", ["Customer_ID", "Names"])
def test_required_missing_is_rejected(mappers: dict[str, Any], blank: str) -> None:
    raw = dict(CUSTOMER)
    if blank == "Names":
        raw["First_Name"] = raw["Last_Name"] = " "
    else:
        raw[blank] = None
    with pytest.raises(RecordRejected) as err:
        mappers["account"](raw, META)
    rej = err.value
    assert (rej.stage, rej.rule, rej.entity, rej.source_position) == ("process", "required", "account",
                                                                      "customers.csv:2")  # fmt: skip
    assert rej.field == ("customer_id" if blank == "Customer_ID" else "full_name")


def test_contact(mappers: dict[str, Any]) -> None:
    raw = {"Contact_ID": "K0000001", "Customer_ID": "C0000001", "First_Name": "j.", "Last_Name": "smith",
           "Contact_Email": "", "Phone": "+44 20 7946 0958", "Job_Title": "  Sales   Manager "}  # fmt: skip
    out = mappers["contact"](raw, {**META, "source": "contacts"})
    assert {k: out[k] for k in ("contact_id", "customer_id", "full_name", "email", "phone", "job_title")} == {
        "contact_id": "K0000001", "customer_id": "C0000001", "full_name": "J. Smith", "email": None,
        "phone": "+442079460958", "job_title": "Sales Manager",
    }  # fmt: skip
    assert out["quality_flags"] == ["email_missing"]


def test_sale(mappers: dict[str, Any]) -> None:
    raw = {"Sale_ID": "S0000001", "Customer_ID": "C0000001", "Sales_Amount": "1.234,50 EUR",
           "Sale_Date": "2024-02-29", "Product": "Pro Plan AB-123"}  # fmt: skip
    out = mappers["sale"](raw, META)
    assert (out["total_sales"], out["currency"], out["original_amount"], out["original_currency"]) == (
        Decimal("1333.26"), "USD", Decimal("1234.50"), "EUR"
    )  # fmt: skip
    assert out["sale_date"] == date(2024, 2, 29) and out["quality_flags"] == []


def test_sale_bad_amount_is_currency_format(mappers: dict[str, Any]) -> None:
    raw = {"Sale_ID": "S1", "Customer_ID": "C1", "Sales_Amount": "$12.3.4", "Sale_Date": "", "Product": ""}
    with pytest.raises(RecordRejected) as err:
        mappers["sale"](raw, META)
    assert (err.value.rule, err.value.field) == ("currency_format", "total_sales")
    assert "12.3.4" not in str(err.value)


def test_case(mappers: dict[str, Any]) -> None:
    raw = {"Ticket_ID": "T0000001", "Customer_ID": "C0000001", "Support_Ticket_Date": "05/06/2023",
           "Subject": " Cannot  log in", "Status": "Open", "Priority": None}  # fmt: skip
    out = mappers["case"](raw, META)
    assert (out["case_id"], out["case_creation_date"], out["subject"], out["priority"]) == (
        "T0000001", date(2023, 5, 6), "Cannot log in", None
    )  # fmt: skip


def test_case_bad_required_date_is_date_format(mappers: dict[str, Any]) -> None:
    raw = {"Ticket_ID": "T1", "Customer_ID": "C1", "Support_Ticket_Date": "13/45/2023"}
    with pytest.raises(RecordRejected) as err:
        mappers["case"](raw, META)
    assert (err.value.rule, err.value.field) == ("date_format", "case_creation_date")


def test_database_columns_in_lower_case(mappers: dict[str, Any]) -> None:
    raw = {"ticket_id": "T1", "customer_id": "C1", "support_ticket_date": "2023-01-02", "subject": "x"}
    assert mappers["case"](raw, META)["case_id"] == "T1"


def test_meta_defaults_and_earlier_flags(mappers: dict[str, Any]) -> None:
    raw = {"Ticket_ID": "T1", "Customer_ID": "C1", "Support_Ticket_Date": "2023-01-02"}
    out = mappers["case"](raw, {"run_id": "r", "source": "s", "source_position": "p", "quality_flags": ["z", "a"]})
    assert out["quality_flags"] == ["a", "z"]
    assert out["mapped_at"].tzinfo is not None


def test_schema_violation_is_rejected_without_the_value(mappers: dict[str, Any]) -> None:
    raw = {"Ticket_ID": "T1", "Customer_ID": "C1", "Support_Ticket_Date": "2023-01-02", "Status": "x" * 80}
    with pytest.raises(RecordRejected) as err:
        mappers["case"](raw, META)
    assert (err.value.rule, err.value.field) == ("schema", "status")
    assert "xxxx" not in str(err.value)


# --- the seeds' mapping table, written as it is --------------------------------------------------------

SEED_CONFIG = """
run: {name: seed-example}
sources:
  legacy_accounts: {kind: csv, path: legacy_crm_data.csv, entity: account, key: Customer_ID}
  legacy_sales: {kind: csv, path: legacy_crm_data.csv, entity: sale, key: Customer_ID}
  legacy_cases: {kind: csv, path: legacy_crm_data.csv, entity: case, key: Customer_ID}
reference:
  currency_rates: {EUR: 1.08, GBP: 1.27}
entities:
  account:
    fields:
      - {source: Customer_ID, target: Customer_ID, transform: none}
      - {source: [First_Name, Last_Name], target: Full_Name, transform: merge}
      - {source: Contact_Email, target: Email, transform: email}
  sale:
    fields:
      - {source: Customer_ID, target: Sale_ID, transform: none}
      - {source: Customer_ID, target: Customer_ID, transform: none}
      - {source: Sales_Amount, target: Total_Sales, transform: convert_currency}
  case:
    fields:
      - {source: Customer_ID, target: Case_ID, transform: none}
      - {source: Customer_ID, target: Customer_ID, transform: none}
      - {source: Support_Ticket_Date, target: Case_Creation_Date, transform: {parse_date: {formats: ["%m/%d/%Y"]}}}
"""


def test_seed_mapping_table(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_CONFIG, encoding="utf-8")
    config = load_config(path)
    raw = {"Customer_ID": "C0000042", "First_Name": "Jane", "Last_Name": "Doe", "Contact_Email": "Jane@Doe.ORG",
           "Sales_Amount": "€1.000,00", "Support_Ticket_Date": "07/04/2024"}  # fmt: skip
    mappers = build_mappers(config)
    account, sale, case = (mappers[e](raw, META) for e in ("account", "sale", "case"))
    assert (account["customer_id"], account["full_name"], account["email"]) == ("C0000042", "Jane Doe", "jane@doe.org")
    assert sale["total_sales"] == Decimal("1080.00")
    assert case["case_creation_date"] == date(2024, 7, 4)
    with pytest.raises(RecordRejected):  # MM/DD/YYYY only, as the seed's pd.to_datetime(format=...)
        mappers["case"]({**raw, "Support_Ticket_Date": "2024-07-04"}, META)


# --- policies and compilation ----------------------------------------------------------------------------


def _config(tmp_path: Path, fields: str, entity: str = "account") -> MigrationConfig:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"run: {{name: t}}\nsources: {{s: {{kind: csv, path: x.csv, entity: {entity}, key: id}}}}\n"
        f"reference: {{lookups: {{status: {{A: Active, I: Inactive}}}}}}\n"
        f"entities:\n  {entity}:\n    fields:\n{fields}",
        encoding="utf-8",
    )
    return load_config(path)


BASE = """      - {source: id, target: customer_id}
      - {source: name, target: full_name}
"""


def test_missing_default_and_constant(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        BASE
        + """      - {source: region, target: region, missing: {default: Not Available}}
      - {target: city, transform: {constant: Springfield}}
      - {source: st, target: street, transform: [{lookup: status}, {default: n/a}]}
""",
    )
    out = Mapper.from_config(config, "account").map({"id": "1", "name": "x", "st": "a"}, META)
    assert (out["region"], out["city"], out["street"], out["quality_flags"]) == (
        "Not Available", "Springfield", "Active", []
    )  # fmt: skip
    out = Mapper.from_config(config, "account").map({"id": "1", "name": "x", "st": "zz"}, META)
    assert out["street"] is None and out["quality_flags"] == ["street_unknown"]


def test_invalid_reject_and_missing_reject_on_optional_fields(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        BASE
        + """      - {source: mail, target: email, transform: email, invalid: reject}
      - {source: city, target: city, missing: reject}
""",
    )
    mapper = Mapper.from_config(config, "account")
    with pytest.raises(RecordRejected) as err:
        mapper.map({"id": "1", "name": "x", "mail": "bad", "city": "c"}, META)
    assert (err.value.rule, err.value.field) == ("email_format", "email")
    with pytest.raises(RecordRejected) as err:
        mapper.map({"id": "1", "name": "x", "mail": "a@b.co"}, META)
    assert (err.value.rule, err.value.field) == ("required", "city")


def test_fields_run_after_the_fields_they_read(tmp_path: Path) -> None:
    phone = "      - {source: ph, target: phone, transform: {phone_e164: {region_from: country}}}\n"
    country = "      - {source: co, target: country, transform: country_iso2}\n"
    config = _config(tmp_path, BASE + phone + country)
    mapper = Mapper.from_config(config, "account")
    assert mapper.targets.index("country") < mapper.targets.index("phone")
    assert mapper.map({"id": "1", "name": "x", "ph": "020 7946 0958", "co": "UK"}, META)["phone"] == "+442079460958"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("      - {source: id, target: customer_id}\n", "required fields not mapped: full_name"),
        (BASE + "      - {source: a, target: nickname}\n", "has no field 'nickname'"),
        (BASE + "      - {source: [a, b], target: city}\n", "several sources"),
        (BASE + "      - {target: city, transform: trim}\n", "no source"),
        (BASE + "      - {source: p, target: phone, transform: {phone_e164: {region_from: country}}}\n", "not mapped"),
        ("      - {source: id, target: customer_id}\n      - {source: n, target: full_name, missing: flag}\n",
         "required"),
        (BASE.replace("target: customer_id", "target: full_name"), "mapped twice"),
    ],
)  # fmt: skip
def test_mapping_errors(tmp_path: Path, fields: str, message: str) -> None:
    config = _config(tmp_path, fields)
    with pytest.raises(MappingError) as err:
        Mapper.from_config(config, "account")
    assert message in str(err.value)
