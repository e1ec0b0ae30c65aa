"""Headers against the mapping: which columns the config reads, and the error naming file, column, line."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmflow.config import load_config
from crmflow.exceptions import ConfigError
from producers.exceptions import HeaderMismatchError
from producers.headers import check_headers, columns_read, has_column
from producers.sources import source_specs

pytestmark = pytest.mark.unit

CONFIG = """\
run: {name: t}
sources:
  customers: {kind: csv, path: customers.csv, entity: account, key: Customer_ID, segment: {field: Region, in: [EU]}}
  events: {kind: jsonl, path: events.jsonl, entity: account, key: id}
entities:
  account:
    fields:
      - {source: Customer_ID, target: customer_id}
      - {source: [First_Name, Last_Name], target: full_name, transform: merge}
      - {source: Phone, target: phone}
"""


def test_column_matching_follows_the_mapping() -> None:
    assert has_column(["customer_id"], "Customer_ID")  # the lower-case spelling, like a database column
    assert not has_column(["CUSTOMER_ID"], "Customer_ID")  # the mapping would not find it either
    assert has_column(["REGION"], "Region", casefold=True)  # the segment filter matches any case


def test_missing_columns_name_file_column_and_mapping_line(tmp_path: Path) -> None:
    (tmp_path / "crmflow.yaml").write_text(CONFIG)
    (tmp_path / "customers.csv").write_text("Customer_ID;First_Name;Last_Name\nC1;A;B\n")
    (tmp_path / "events.jsonl").write_text('{"id": 1}\n')
    cfg = load_config(tmp_path / "crmflow.yaml")
    specs = source_specs(cfg)
    assert [u.column for u in columns_read(cfg, specs[0])] == ["Customer_ID", "First_Name", "Last_Name", "Phone",
                                                               "Region"]  # fmt: skip
    with pytest.raises(HeaderMismatchError) as err:
        check_headers(cfg, specs)  # the JSONL source has no header: not checked
    assert isinstance(err.value, ConfigError)
    phone, region = err.value.problems
    assert phone == (f"{tmp_path / 'customers.csv'}: column 'Phone' is not in the header of source customers "
                     f"(read by {tmp_path / 'crmflow.yaml'}:10 (entities.account.fields[2].source)); the header has: "
                     "Customer_ID, First_Name, Last_Name")  # fmt: skip
    assert "'Region'" in region and f"{tmp_path / 'crmflow.yaml'}:3 (sources.customers.segment.field)" in region

    (tmp_path / "customers.csv").write_text("customer_id,first_name,last_name,phone,region\n")
    check_headers(cfg, specs)
