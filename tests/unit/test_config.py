"""Loading and checking migration configs: error messages name file, key path and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from crmflow.cli.config_cmd import app
from crmflow.config import ConfigLoadError, MigrationConfig, Problem, check_config, expand_env, load_config
from crmflow.exceptions import ConfigError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "deploy" / "demo" / "crmflow.yaml"

VALID = """\
run:
  name: t
sources:
  customers:
    kind: csv
    path: data/customers.csv
    entity: account
    key: Customer_ID
entities:
  account:
    fields:
      - {source: Customer_ID, target: Customer_ID}
      - {source: [First_Name, Last_Name], target: Full_Name, transform: merge}
      - {source: Contact_Email, target: email, transform: email, missing: flag}
"""


def write(tmp_path: Path, text: str, name: str = "crmflow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_errors(tmp_path: Path, text: str) -> list[Problem]:
    with pytest.raises(ConfigLoadError) as err:
        load_config(write(tmp_path, text))
    assert isinstance(err.value, ConfigError)
    return err.value.problems


def test_valid_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert isinstance(config, MigrationConfig)
    assert config.file == tmp_path / "crmflow.yaml"
    fields = config.entities["account"].fields
    assert [f.target for f in fields] == ["customer_id", "full_name", "email"]  # case-insensitive targets
    assert fields[1].sources == ("First_Name", "Last_Name")
    assert [s.name for s in fields[2].transform] == ["email"]
    assert config.sources["customers"].path == tmp_path / "data" / "customers.csv"  # relative to the file
    assert config.kafka.raw_topic("customers") == "crmflow.raw.customers"
    assert config.kafka.mapped_topic("account") == "crmflow.mapped.account"
    assert config.kafka.dlq_topic == "crmflow.dlq"
    assert config.run.base_currency == "USD"


def test_unknown_key(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, VALID.replace("    key: Customer_ID", "    key: Customer_ID\n    kye: x"))
    assert problem.file == tmp_path / "crmflow.yaml"
    assert problem.path == "sources.customers.kye"
    assert problem.line == 9
    assert "unknown key" in problem.message
    assert str(problem).startswith(f"{tmp_path / 'crmflow.yaml'}:9: error: sources.customers.kye: ")


def test_unknown_transform(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, VALID.replace("transform: merge", "transform: mege"))
    assert problem.path == "entities.account.fields[1].transform"
    assert problem.line == 13
    assert problem.message.startswith("unknown transform 'mege'; expected one of: none, copy, trim")
    assert "merge" in problem.message


def test_unknown_transform_in_a_chain(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, VALID.replace("transform: merge", "transform: [merge, nam_case]"))
    assert problem.path == "entities.account.fields[1].transform[1]"
    assert problem.line == 13


def test_bad_transform_parameter(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, VALID.replace("transform: merge", "transform: {merge: {sepp: '-'}}"))
    assert problem.path == "entities.account.fields[1].transform"
    assert "unknown parameter 'sepp'" in problem.message and "sep" in problem.message


def test_wrong_type(tmp_path: Path) -> None:
    problems = load_errors(tmp_path, VALID.replace("    kind: csv", "    kind: excel").replace("name: t", "name: [t]"))
    by_path = {p.path: p for p in problems}
    assert by_path["run.name"].line == 2
    assert by_path["sources.customers.kind"].line == 5
    assert "expected 'csv', 'jsonl' or 'table'" in by_path["sources.customers.kind"].message


def test_missing_required_key(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, VALID.replace("    key: Customer_ID\n", ""))
    assert problem.path == "sources.customers.key"
    assert problem.message == "required key is missing"
    assert problem.line == 4  # the section it belongs in


def test_bad_missing_policy_and_source(tmp_path: Path) -> None:
    text = VALID.replace("missing: flag", "missing: maybe").replace("source: Customer_ID,", "source: 5,")
    by_path = {p.path: p.message for p in load_errors(tmp_path, text)}
    assert by_path["entities.account.fields[2].missing"] == "expected flag, reject, allow or {default: <value>}"
    assert by_path["entities.account.fields[0].source"] == "expected a source field name or a list of field names"


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, VALID.replace("      - {source: Customer_ID", "      - {source: [Customer_ID"))
    assert problem.line is not None and "not valid YAML" in problem.message


def test_duplicate_key(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, VALID.replace("  name: t\n", "  name: t\n  name: u\n"))
    assert problem.line == 3 and "duplicate key 'name'" in problem.message


def test_not_a_mapping_and_unreadable(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, "- a\n- b\n")
    assert "mapping of sections" in problem.message
    with pytest.raises(ConfigLoadError) as err:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in str(err.value)


def test_a_dsn_in_dsn_env_is_refused_and_never_echoed(tmp_path: Path) -> None:
    secret = "postgresql://crm:s3cr3t@db:5432/legacy"
    text = VALID + f"target: {{kind: postgres, dsn_env: '{secret}'}}\n"
    (problem,) = load_errors(tmp_path, text)
    assert problem.path == "target.dsn_env"
    assert "s3cr3t" not in str(problem) and secret not in str(problem)


def test_dsn_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, VALID + "target: {dsn_env: MY_TARGET_DSN}\n"))
    assert config.target is not None
    monkeypatch.delenv("MY_TARGET_DSN", raising=False)
    with pytest.raises(ConfigError, match="MY_TARGET_DSN"):
        config.target.dsn()
    monkeypatch.setenv("MY_TARGET_DSN", "postgresql://u:pw@h/db")
    dsn = config.target.dsn()
    assert isinstance(dsn, SecretStr) and "pw" not in str(dsn) and dsn.get_secret_value().endswith("/db")


def test_table_source_needs_dsn_env_and_table(tmp_path: Path) -> None:
    text = VALID.replace("    kind: csv\n    path: data/customers.csv\n", "    kind: table\n")
    (problem,) = load_errors(tmp_path, text)
    assert problem.path == "sources.customers" and "dsn_env and table" in problem.message


def test_env_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_TEST_DATA", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("CRMFLOW_TEST_UNSET", raising=False)
    assert expand_env("${CRMFLOW_TEST_DATA}/a.csv") == f"{tmp_path}/elsewhere/a.csv"
    assert expand_env("${CRMFLOW_TEST_UNSET:-data}/a.csv") == "data/a.csv"
    assert expand_env("$HOME/a.csv") == "$HOME/a.csv"  # only ${...} is expanded
    with pytest.raises(ValueError, match="CRMFLOW_TEST_UNSET"):
        expand_env("${CRMFLOW_TEST_UNSET}/a.csv")
    text = VALID.replace("path: data/customers.csv", "path: ${CRMFLOW_TEST_DATA:-data}/customers.csv")
    assert load_config(write(tmp_path, text)).sources["customers"].path == tmp_path / "elsewhere" / "customers.csv"
    monkeypatch.delenv("CRMFLOW_TEST_DATA")
    assert load_config(write(tmp_path, text)).sources["customers"].path == tmp_path / "data" / "customers.csv"
    (problem,) = load_errors(tmp_path, VALID.replace("path: data/", "path: ${CRMFLOW_TEST_UNSET}/"))
    assert problem.path == "sources.customers.path" and "CRMFLOW_TEST_UNSET is not set" in problem.message


def test_segment_filter(tmp_path: Path) -> None:
    text = VALID.replace("    key: Customer_ID\n", "    key: Customer_ID\n    segment: {field: Region, in: [EU, UK]}\n")
    segment = load_config(write(tmp_path, text)).sources["customers"].segment
    assert segment is not None
    assert segment.matches({"Region": " EU "}) and not segment.matches({"Region": "NA"})
    assert not segment.matches({})


# --- check_config ---------------------------------------------------------------------------------------


def test_demo_config_checks_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRMFLOW_SCHEMAS_DIR", raising=False)
    config = load_config(DEMO)
    problems = check_config(config)
    assert [p for p in problems if p.severity == "error"] == []
    assert set(config.entities) == {"account", "contact", "sale", "case"}
    mapped = {name: {f.target for f in m.fields} for name, m in config.entities.items()}
    assert mapped["account"] >= {"customer_id", "full_name", "email", "phone", "postal_code", "birth_date"}
    assert mapped["sale"] >= {"total_sales", "currency", "original_amount", "original_currency"}
    for warning in problems:  # only files not generated yet or unset DSNs
        assert "does not exist" in warning.message or "is not set" in warning.message
        assert warning.line is not None and warning.file == DEMO


def test_demo_config_maps_every_contract_column() -> None:
    columns = {
        "customers": "Customer_ID First_Name Last_Name Contact_Email Phone Street_Address City Postal_Code "
                     "Country Region Birth_Date Customer_Since",
        "contacts": "Contact_ID Customer_ID First_Name Last_Name Contact_Email Phone Job_Title",
        "sales": "Sale_ID Customer_ID Sales_Amount Sale_Date Product",
        "tickets": "Ticket_ID Customer_ID Support_Ticket_Date Subject Status Priority",
    }  # fmt: skip
    config = load_config(DEMO)
    for source, names in columns.items():
        mapping = config.entities[config.sources[source].entity]
        used = {s for f in mapping.fields for s in f.sources}
        assert used == set(names.split()), source


def test_check_reports_targets_missing_from_the_avro_schema(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(REPO / "schemas", schemas)
    account = json.loads((schemas / "target" / "account.avsc").read_text())
    account["fields"] = [f for f in account["fields"] if f["name"] != "region"]
    (schemas / "target" / "account.avsc").write_text(json.dumps(account))
    (schemas / "target" / "case.avsc").unlink()
    problems = check_config(load_config(DEMO), schemas_dir=schemas)
    errors = {(p.path, p.message) for p in problems if p.severity == "error"}
    assert ("entities.account.fields[10].target", "'region' is not a field of target/account.avsc") in errors
    assert any(path == "entities.case" and "case.avsc not found" in msg for path, msg in errors)


def test_check_reports_mapping_errors_with_lines(tmp_path: Path) -> None:
    extra = (
        "      - {source: X, target: city, transform: {lookup: nope}}\n"
        "      - {source: B, target: birth_date, transform: parse_date, missing: {default: Not Available}}\n"
        "  sale:\n    fields:\n      - {source: S, target: sale_id}\n"
    )
    text = VALID.replace("target: Full_Name", "target: full_nam") + extra
    problems = check_config(load_config(write(tmp_path, text)))
    errors = {p.path: p for p in problems if p.severity == "error"}
    assert "has no field 'full_nam'" in errors["entities.account.fields[1].target"].message
    assert errors["entities.account.fields[1].target"].line == 13
    assert "no table 'nope'" in errors["entities.account.fields[3].transform"].message
    assert "the default does not fit birth_date" in errors["entities.account.fields[4].missing"].message
    assert "required fields of account not mapped: full_name" in errors["entities.account.fields"].message
    assert "customer_id, total_sales" in errors["entities.sale.fields"].message
    warnings = {p.path for p in problems if p.severity == "warning"}
    assert "entities.sale" in warnings  # no source feeds it
    assert "sources.customers.path" in warnings


# --- crmflow config check --------------------------------------------------------------------------------


def test_cli_check_demo() -> None:
    result = CliRunner().invoke(app, ["check", "-c", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and "entities: 4" in result.stdout and "fields mapped: 35" in result.stdout


def test_cli_check_fails_on_errors(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("transform: merge", "transform: mege"))
    result = CliRunner().invoke(app, ["check", "-c", str(path)])
    assert result.exit_code == 1
    assert f"{path}:13: error: entities.account.fields[1].transform: unknown transform 'mege'" in result.output


def test_segment_filter_matches_database_columns(tmp_path: Path) -> None:
    text = VALID.replace("    key: Customer_ID\n", "    key: Customer_ID\n    segment: {field: Region, in: [EU]}\n")
    segment = load_config(write(tmp_path, text)).sources["customers"].segment
    assert segment is not None and segment.matches({"region": "EU"})


# --- dedupe -------------------------------------------------------------------------------------------


def test_dedupe_section_configures_the_matcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = VALID + "dedupe:\n  match_threshold: 7.5\n  weights: {birth_date: 5}\n  block_key_env: T_BLOCK_KEY\n"
    config = load_config(write(tmp_path, text))
    assert config.dedupe_enabled and config.kafka.dedupe_topic("account") == "crmflow.dedupe.account"
    with pytest.raises(ConfigError, match="T_BLOCK_KEY"):
        config.dedupe.matcher()  # type: ignore[union-attr]
    monkeypatch.setenv("T_BLOCK_KEY", "pepper-of-the-test")
    matcher = config.dedupe.matcher()  # type: ignore[union-attr]
    assert matcher.match_threshold == 7.5 and matcher.weights.birth_date == 5
    assert matcher.block_key_secret is not None and matcher.block_key_secret.get_secret_value() == "pepper-of-the-test"
    assert not load_config(write(tmp_path, VALID + "dedupe: {enabled: false}\n")).dedupe_enabled
    assert not load_config(write(tmp_path, VALID)).dedupe_enabled


def test_dedupe_refuses_a_secret_in_the_file_and_unknown_keys_with_their_line(tmp_path: Path) -> None:
    (problem,) = load_errors(tmp_path, VALID + "dedupe:\n  block_key_secret: hunter22\n")
    assert problem.path.startswith("dedupe") and "block_key_env" in problem.message
    assert "hunter22" not in str(problem)
    (problem,) = load_errors(tmp_path, VALID + "dedupe:\n  enabled: true\n  match_treshold: 7\n")
    assert problem.path == "dedupe.match_treshold" and problem.line == VALID.count("\n") + 3


def test_unknown_key_lists_the_section_s_keys_and_suggests_the_closest(tmp_path: Path) -> None:
    typo = VALID.replace("    key: Customer_ID", "    key: Customer_ID\n    delimeter: ';'")
    (problem,) = load_errors(tmp_path, typo)
    assert problem.path == "sources.customers.delimeter" and problem.line == 9
    assert problem.message.startswith("unknown key 'delimeter': did you mean 'delimiter'? this section has: kind, ")
    assert "quotechar, encoding, dialect" in problem.message
    (problem,) = load_errors(tmp_path, VALID.replace("    key: Customer_ID", "    key: Customer_ID\n    zzz: 1"))
    assert problem.message.startswith("unknown key 'zzz' (a typo?); this section has: kind, entity, key")
    (problem,) = load_errors(tmp_path, VALID.replace("target: Full_Name,", "target: Full_Name, transfrom: merge,"))
    assert "did you mean 'transform'? this section has: source, target, transform, missing, invalid" in problem.message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("    delimiter: ';;'", "expected one ASCII punctuation or TAB character"),
        ("    encoding: utf-16", "not ASCII-compatible"),
        ("    encoding: klingon", "unknown encoding"),
        ("    dialect: excel-semicolon", "expected 'auto', 'excel' or 'excel-tab'"),
    ],
)
def test_bad_csv_dialects_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    (problem,) = load_errors(tmp_path, VALID.replace("    key: Customer_ID", f"    key: Customer_ID\n{line}"))
    assert problem.path.startswith("sources.customers.") and message in problem.message


def test_csv_dialect_keys_load(tmp_path: Path) -> None:
    text = VALID.replace("    key: Customer_ID", "    key: Customer_ID\n    delimiter: ';'\n    encoding: Windows-1252")
    src = load_config(write(tmp_path, text)).sources["customers"]
    assert (src.delimiter, src.quotechar, src.encoding, src.dialect) == (";", None, "cp1252", "auto")
    (problem,) = load_errors(tmp_path, VALID.replace("    kind: csv", "    kind: jsonl").replace(
        "    key: Customer_ID", "    key: Customer_ID\n    delimiter: ';'"))  # fmt: skip
    assert "only csv sources have a dialect" in problem.message


def test_check_reads_headers_and_warns_about_shared_entities(tmp_path: Path) -> None:
    text = VALID + "      - {source: Phone, target: phone}\n"
    text = text.replace("entities:\n", "  crm_b: {kind: csv, path: data/b.csv, entity: account, key: Customer_ID}\n"
                                      "entities:\n", 1)  # fmt: skip
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "customers.csv").write_text("Customer_ID;First_Name;Last_Name;Contact_Email\r\nC1;A;B;\r\n")
    (tmp_path / "data" / "b.csv").write_text("Customer_ID,First_Name,Last_Name,Contact_Email,Phone\n")
    problems = check_config(load_config(write(tmp_path, text)))
    errors = [p for p in problems if p.severity == "error"]
    assert [(p.path, p.line) for p in errors] == [("entities.account.fields[3].source", 16)]
    assert errors[0].message == (f"column 'Phone' is not in the header of {tmp_path / 'data' / 'customers.csv'} "
                                 "(source customers); the header has: Customer_ID, First_Name, Last_Name, "
                                 "Contact_Email")  # fmt: skip
    shared = [p for p in problems if "all feed entity account" in p.message]
    assert len(shared) == 1 and shared[0].severity == "warning" and "duplicate_key" in shared[0].message
