"""Every service logs through the CLI's handlers for its whole run, and its logs hold no personal data
(issue 9, item 5).

Each service runs as an operator runs it, ``crmflow --verbose --log-json <command>``, on the demo data in
the ``staging`` PII profile: the snapshot, the processor and the sink one by one, then ``migrate``, which
starts the processor and the sink itself. Everything each one writes is collected: stdout, stderr and the
run directory's per-stage log files. The checks:

- its log lines are JSON from the first to the last: the line that starts its work and the line that ends
  it (the runtime's ``stopped after N batches``) are JSON, DEBUG lines are there (``--verbose`` held), and
  no line has the plain log format (a handler that took logging over, as faust's worker did);
- none of it contains an input email, phone number, full name or street (the values of the generated
  dataset's source files and ground truth, at least 8 characters long so that no ordinary word matches).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from cryptography.fernet import Fernet

from crmflow.config import load_config
from crmflow.pipeline.migrate import prepare, processor_topics
from crmflow.pipeline.runs import RunStore
from crmflow.pipeline.services import Service, wait_drained
from crmflow.stack import Endpoints
from tests.e2e.conftest import Dataset, Run
from tests.e2e.test_pii import _hits, _pii
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

GLOBAL = ("--verbose", "--log-json")
# A log line in the CLI's plain format, or any other "<date> <time> ... LEVEL" line: not what --log-json asked.
PLAIN_LOG = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def _staging(raw: dict[str, Any]) -> None:
    raw["pii"]["profile"] = "staging"


def input_pii(dataset: Dataset) -> set[bytes]:
    """test_pii's values (clean emails, phones, names, streets; raw emails and streets of the customers), and
    the raw emails, phones and streets of every source file as the legacy CRM wrote them."""
    values = _pii(dataset)
    for name, columns in (("customers.csv", ("Contact_Email", "Phone", "Street_Address")),
                          ("contacts.csv", ("Contact_Email", "Phone"))):
        with (dataset.dir / name).open(encoding="utf-8", errors="replace", newline="") as fh:
            for row in csv.DictReader(fh):
                values.update(v.strip().encode() for v in (row.get(c) for c in columns) if v and len(v.strip()) >= 10)
    return values


def log_records(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON log records of ``text``, and its lines that look like log lines in another format."""
    records, plain = [], []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
                continue
            except json.JSONDecodeError:
                pass
        if PLAIN_LOG.match(line):
            plain.append(line)
    return records, plain


def assert_json_logs(service: str, text: str, first: str, last: str) -> list[dict[str, Any]]:
    """``text`` logged JSON for the whole run: a record matching ``first`` and, later, one matching ``last``
    (regexes on the message), DEBUG records, and no log line in another format."""
    records, plain = log_records(text)
    assert not plain, f"{service}: {len(plain)} log lines not in JSON, first: {plain[:3]}"
    messages = [r["msg"] for r in records]
    starts = [i for i, m in enumerate(messages) if re.search(first, m)]
    ends = [i for i, m in enumerate(messages) if re.search(last, m)]
    assert starts, f"{service}: no JSON record of its start ({first!r}) among {len(records)}"
    assert ends and ends[-1] > starts[0], f"{service}: no JSON record of its end ({last!r}) after its start"
    assert any(r["level"] == "DEBUG" for r in records), f"{service}: --verbose gave no DEBUG record"
    return records


def assert_no_pii(service: str, blobs: dict[str, bytes], pii: set[bytes]) -> None:
    found = {name: hits for name, blob in blobs.items() if (hits := _hits([blob], pii))}
    assert not found, f"{service}: personal data of the input in its output: {found}"


def test_snapshot_process_and_sink_log_json_for_their_whole_run_without_pii(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints,
    registry_client: SchemaRegistryClient, tmp_path: Path,
) -> None:
    run = run_factory(small_dataset, _staging, dedupe=True)
    run.env["CRMFLOW_PII_KEY"] = Fernet.generate_key().decode()
    cfg = load_config(run.config)
    pii = input_pii(small_dataset)
    assert len(pii) > 10_000
    assert len(_hits([(small_dataset.dir / "customers.csv").read_bytes()], pii)) == 10, "the search finds PII"
    prepare(cfg, endpoints, registry_client, run.target_dsn)

    snapshot = run.cli(*GLOBAL, "snapshot", "-c", str(run.config), "--state-dir", str(tmp_path / "state"), timeout=120)
    assert snapshot.returncode == 0, snapshot.stderr[-3000:]
    processor = Service("process", [*GLOBAL, "process", "-c", str(run.config), "--metrics-port", "0",
                                    "--instance", "logs"], tmp_path / "process.log", dict(run.env))
    sink = Service("sink", [*GLOBAL, "sink", "-c", str(run.config)], tmp_path / "sink.log", dict(run.env))
    try:
        wait_drained(endpoints.kafka, f"crmflow-process-{cfg.kafka.topic_prefix}",
                     processor_topics(cfg), [processor, sink], 180)
    finally:
        codes = {"process": processor.stop(20), "sink": sink.stop(20)}
    assert codes == {"process": 0, "sink": 0}, codes

    outputs = {
        "snapshot": {"stdout": snapshot.stdout.encode(), "stderr": snapshot.stderr.encode()},
        "process": {"stdout+stderr": processor.log_file.read_bytes()},
        "sink": {"stdout+stderr": sink.log_file.read_bytes()},
    }
    last_source = list(cfg.sources)[-1]
    records = {
        "snapshot": assert_json_logs("snapshot", snapshot.stderr, r"^source \w+: ",
                                     rf"^source {last_source}: read \d+, produced \d+"),
        "process": assert_json_logs("process", outputs["process"]["stdout+stderr"].decode(errors="replace"),
                                    r"^process reading ", r"^process stopped after [1-9]\d* batches"),
        "sink": assert_json_logs("sink", outputs["sink"]["stdout+stderr"].decode(errors="replace"),
                                 r"^sink reading ", r"^(wrote \d+ parked records|merged \d+ golden records)"),
    }
    for service, blobs in outputs.items():
        assert_no_pii(service, blobs, pii)
    print("\n" + ", ".join(f"{s}: {len(r)} JSON records ({sum(x['level'] == 'DEBUG' for x in r)} DEBUG), "
                           f"{sum(map(len, outputs[s].values()))} bytes" for s, r in records.items()))


def _migrate(run: Run, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, bytes]]:
    """``crmflow --verbose --log-json migrate``: its output, and the files of its run directory."""
    run.env["CRMFLOW_PII_KEY"] = Fernet.generate_key().decode()
    done = run.cli(*GLOBAL, "migrate", "-c", str(run.config), "--json", *args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = RunStore().dir(json.loads(done.stdout)["run_id"])
    files = {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}
    assert {"process-0.log", "sink.log", "sink-drain.log"} <= set(files), sorted(files)
    return done, files


STAGE_MARKS = {"process-0.log": (r"process reading ", r"process stopped after [1-9]\d* batches"),
               "sink.log": (r"sink reading ", r"(wrote \d+ parked records|merged \d+ golden records)"),
               "sink-drain.log": (r"sink reading ", r"final drain pass")}


def test_migrate_logs_json_for_its_whole_run_and_no_pii_anywhere(
    small_dataset: Dataset, run_factory: Callable[..., Run],
) -> None:
    """``migrate`` itself logs JSON from its first line to its dead-letter ledger's update; neither it nor the
    stages it starts (their logs in the run directory, from their start to their stop, the final drain pass's
    included) write any input PII."""
    run = run_factory(small_dataset, _staging, dedupe=True)
    done, files = _migrate(run)
    records = assert_json_logs("migrate", done.stderr, r"^run \S+: writing to ", r"^dead-letter ledger ")
    assert_no_pii("migrate", {"stdout": done.stdout.encode(), "stderr": done.stderr.encode(), **files},
                  input_pii(small_dataset))
    for name, (first, last) in STAGE_MARKS.items():
        text = files[name].decode(errors="replace")
        assert re.search(first, text) and re.search(last, text), f"{name}: the stage logged its start and its end"
    print(f"\nmigrate: {len(records)} JSON records; run directory: {sorted(files)}")


def test_the_stages_migrate_starts_log_with_its_global_options(
    small_dataset: Dataset, run_factory: Callable[..., Run],
) -> None:
    run = run_factory(small_dataset, _staging, dedupe=True)
    _, files = _migrate(run, "--limit", "100")
    for name, (first, last) in STAGE_MARKS.items():
        assert_json_logs(f"migrate's {name}", files[name].decode(errors="replace"), f"^{first}", f"^{last}")


def test_the_processor_started_right_after_the_snapshot_runs_and_stops_cleanly(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints, tmp_path: Path,
) -> None:
    """The stages as deploy/compose starts them: `schemas register`, the snapshot, then the processor; nothing
    else creates topics."""
    run = run_factory(small_dataset, _staging, dedupe=True)
    run.env["CRMFLOW_PII_KEY"] = Fernet.generate_key().decode()
    cfg = load_config(run.config)
    assert run.cli("schemas", "register", timeout=120).returncode == 0
    # A part of the data is enough to start on and drain: the first 500 records of each source.
    snapshot = run.cli(*GLOBAL, "snapshot", "-c", str(run.config), "--state-dir", str(tmp_path / "state"),
                       "--limit", "500", timeout=120)
    assert snapshot.returncode == 0, snapshot.stderr[-3000:]
    processor = Service("process", [*GLOBAL, "process", "-c", str(run.config), "--metrics-port", "0",
                                    "--instance", "alone"], tmp_path / "process.log", dict(run.env))
    try:
        def started() -> str | None:
            processor.sample()
            found = re.search(r"assigned \d+ partitions|cannot size changelog", processor.log_file.read_text())
            return found.group(0) if found else None

        first = str(wait_until(started, timeout_s=60, interval_s=0.2, what="the processor to subscribe or fail to"))
        assert first.startswith("assigned"), f"the processor does not start: {first}"
        wait_drained(endpoints.kafka, f"crmflow-process-{cfg.kafka.topic_prefix}",
                     processor_topics(cfg), [processor], 120)
    finally:
        code = processor.stop(20)
    assert code == 0, f"SIGTERM: exit code {code}"
    assert_json_logs("process", processor.log_file.read_text(), r"^process reading ",
                     r"^process stopped after [1-9]\d* batches")
