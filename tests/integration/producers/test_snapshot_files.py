"""`run_snapshot` on CSV files against the real Kafka and registry: records, dead letters, limit, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from crmflow.demo_data import generate
from crmflow.dlq import DlqCipher, read_dead_letters
from crmflow.exceptions import TerminalError
from crmflow.stack import Endpoints
from crmflow.topics import dlq_topic, raw_topic
from producers.checkpoint import CheckpointStore
from producers.exceptions import SourceOpenError
from producers.readers import FileMark
from producers.snapshot import run_snapshot

pytestmark = pytest.mark.integration

Read = Callable[[str], list[Any]]
Oracle = Callable[[Path], tuple[dict[str, dict[str, str]], set[str]]]
WriteConfig = Callable[..., Any]


class StopAfterFirstBatch:
    """A progress sink that sets ``stop`` after the first batch: a deterministic mid-file interruption."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def start(self, source: str, *, total: int | None, completed: int, unit: str) -> None:
        return None

    def update(self, source: str, completed: int) -> None:
        self.stop.set()

    def finish(self, source: str) -> None:
        return None


def line_of(position: str) -> int:
    return int(position.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate(out, 1200, seed=11)
    return out


def test_snapshot_produces_every_good_line_and_dead_letters_the_rest(
    tmp_path: Path, demo: Path, topic_prefix: str, endpoints: Endpoints,
    registry_client: SchemaRegistryClient, read_topic: Read, write_config: WriteConfig, expected_csv: Oracle,
) -> None:  # fmt: skip
    cfg = write_config(tmp_path, topic_prefix, f"""\
  customers: {{kind: csv, path: {demo}/customers.csv, entity: account, key: Customer_ID}}
  sales: {{kind: csv, path: {demo}/sales.csv, entity: sale, key: Sale_ID}}""")  # fmt: skip
    stats = run_snapshot(
        cfg, kafka=endpoints.kafka, registry_client=registry_client,
        run_id="it-files-1", state_dir=tmp_path / "state",
    )  # fmt: skip

    all_bad: dict[str, str] = {}
    for source, key_column in (("customers", "Customer_ID"), ("sales", "Sale_ID")):
        good, bad = expected_csv(demo / f"{source}.csv")
        assert bad, "the demo data should contain malformed and mis-encoded lines"
        s = stats.sources[source]
        assert (s.read, s.produced, s.rejected, s.filtered, s.complete) == (
            len(good) + len(bad), len(good), len(bad), 0, True,
        )  # fmt: skip
        consumed = read_topic(raw_topic(topic_prefix, source))
        by_position = {c.value["position"]: c for c in consumed}
        assert len(consumed) == len(by_position) == len(good)
        assert set(by_position) == set(good)
        for position, row in good.items():
            c = by_position[position]
            assert c.key == row[key_column].encode()
            assert c.value["fields"] == row
            assert c.value["source_key"] == row[key_column]
            assert (c.value["source"], c.value["entity"], c.value["run_id"], c.value["op"]) == (
                source, source, "it-files-1", "SNAPSHOT",
            )  # fmt: skip
        assert len({c.partition for c in consumed}) == 3
        all_bad.update(dict.fromkeys(bad, source))

    truth = [json.loads(line) for line in (demo / "truth.jsonl").open()]
    expected_rules = {
        f"{t['source_file']}:{t['line']}": t["rule"]
        for t in truth
        if t["rule"] in ("csv_malformed", "encoding") and t["source_file"] in ("customers.csv", "sales.csv")
    }
    letters = list(read_dead_letters(endpoints.kafka, registry_client, dlq_topic(topic_prefix)))
    assert {ltr.record["source_position"]: ltr.record["rule"] for ltr in letters} == expected_rules
    assert set(expected_rules) == set(all_bad)
    cipher = DlqCipher.from_env()
    for ltr in letters:
        r = ltr.record
        assert (r["stage"], r["run_id"], r["source_topic"], r["source_offset"]) == ("snapshot", "it-files-1", "", -1)
        source_file, line = r["source_position"].rsplit(":", 1)
        raw = cipher.decrypt(r["payload"], r["key_id"])
        assert raw == (demo / source_file).read_bytes().splitlines(keepends=True)[int(line) - 1]


def test_limit_then_the_rest_of_the_same_run(
    tmp_path: Path, demo: Path, topic_prefix: str, endpoints: Endpoints,
    registry_client: SchemaRegistryClient, read_topic: Read, write_config: WriteConfig, expected_csv: Oracle,
) -> None:  # fmt: skip
    """`--limit 100` produces the first 100 records; the same run id without a limit does the rest."""
    source = f"  customers: {{kind: csv, path: {demo}/customers.csv, entity: account, key: Customer_ID}}"
    cfg = write_config(tmp_path, topic_prefix, source)
    common = {"kafka": endpoints.kafka, "registry_client": registry_client,
              "run_id": "it-limit", "state_dir": tmp_path / "state"}  # fmt: skip
    good, bad = expected_csv(demo / "customers.csv")
    first_100 = sorted(good, key=line_of)[:100]

    stats = run_snapshot(cfg, limit=100, **common)  # type: ignore[arg-type]
    s = stats.sources["customers"]
    assert (s.produced, s.complete) == (100, False)
    consumed = read_topic(raw_topic(topic_prefix, "customers"))
    assert sorted((c.value["position"] for c in consumed), key=line_of) == first_100
    assert s.rejected == len([p for p in bad if line_of(p) < line_of(first_100[-1])])

    stats = run_snapshot(cfg, **common)  # type: ignore[arg-type]
    rest = stats.sources["customers"]
    # Counts of the whole run: the first call's 100 (and the rejects before them), then the rest.
    assert rest.complete and rest.produced == len(good) and rest.read == len(good) + len(bad)
    assert rest.read_before == 100 + s.rejected
    assert rest.resumed_from is not None
    consumed = read_topic(raw_topic(topic_prefix, "customers"))
    assert sorted(c.value["position"] for c in consumed) == sorted(good)  # each exactly once

    again = run_snapshot(cfg, **common)  # type: ignore[arg-type]
    done = again.sources["customers"]
    assert done.skipped and done.read_now == 0
    assert (done.read, done.produced, done.rejected) == (len(good) + len(bad), len(good), len(bad))
    assert done.rejected_by_rule == rest.rejected_by_rule and sum(done.rejected_by_rule.values()) == len(bad)


def test_segment_filter_keeps_only_the_segment(
    tmp_path: Path, demo: Path, topic_prefix: str, endpoints: Endpoints,
    registry_client: SchemaRegistryClient, read_topic: Read, write_config: WriteConfig, expected_csv: Oracle,
) -> None:  # fmt: skip
    cfg = write_config(tmp_path, topic_prefix, f"""\
  customers: {{kind: csv, path: {demo}/customers.csv, entity: account, key: Customer_ID,
              segment: {{field: Region, in: [EU]}}}}""")  # fmt: skip
    stats = run_snapshot(cfg, kafka=endpoints.kafka, registry_client=registry_client,
                         state_dir=tmp_path / "state")  # fmt: skip
    good, bad = expected_csv(demo / "customers.csv")
    eu = {p for p, row in good.items() if row["Region"].strip() == "EU"}
    s = stats.sources["customers"]
    assert 0 < len(eu) < len(good)
    assert (s.produced, s.filtered, s.rejected) == (len(eu), len(good) - len(eu), len(bad))
    consumed = read_topic(raw_topic(topic_prefix, "customers"))
    assert {c.value["position"] for c in consumed} == eu
    assert stats.run_id.startswith("itest-")


def test_stopped_run_resumes_after_its_checkpoint(
    tmp_path: Path, demo: Path, topic_prefix: str, endpoints: Endpoints,
    registry_client: SchemaRegistryClient, read_topic: Read, write_config: WriteConfig, expected_csv: Oracle,
) -> None:  # fmt: skip
    cfg = write_config(tmp_path, topic_prefix,
                       f"  sales: {{kind: csv, path: {demo}/sales.csv, entity: sale, key: Sale_ID}}")  # fmt: skip
    state = tmp_path / "state"
    common = {"kafka": endpoints.kafka, "registry_client": registry_client,
              "run_id": "it-resume", "state_dir": state}  # fmt: skip
    good, bad = expected_csv(demo / "sales.csv")
    acked: list[int] = []
    stop = threading.Event()

    first = run_snapshot(cfg, stop_event=stop, progress=StopAfterFirstBatch(stop),
                         on_delivered=lambda _source, n: acked.append(n), **common)  # type: ignore[arg-type]  # fmt: skip
    s1 = first.sources["sales"]
    assert first.stopped and not s1.complete
    assert 0 < s1.produced < len(good) and acked[-1] == s1.produced
    checkpoint = CheckpointStore(state).load("it-resume", "sales")
    assert checkpoint is not None and isinstance(checkpoint.mark, FileMark)
    run1 = {c.value["position"] for c in read_topic(raw_topic(topic_prefix, "sales"))}
    assert len(run1) == s1.produced
    assert max(map(line_of, run1)) < checkpoint.mark.line

    second = run_snapshot(cfg, **common)  # type: ignore[arg-type]
    s2 = second.sources["sales"]
    assert s2.complete and not second.stopped
    assert s1.read + s2.read_now == len(good) + len(bad)  # nothing read twice
    assert s2.read_before == s1.read and s2.read == len(good) + len(bad)  # the whole run's counts
    consumed = read_topic(raw_topic(topic_prefix, "sales"))
    run2 = {c.value["position"] for c in consumed} - run1
    assert min(map(line_of, run2)) >= checkpoint.mark.line  # did not start from the beginning
    assert len(consumed) == len(good) and run1 | run2 == set(good)


def test_cli_runs_as_a_subprocess_and_prints_json(
    tmp_path: Path, demo: Path, topic_prefix: str, endpoints: Endpoints, write_config: WriteConfig,
) -> None:  # fmt: skip
    write_config(tmp_path, topic_prefix,
                 f"  tickets: {{kind: csv, path: {demo}/tickets.csv, entity: case, key: Ticket_ID}}")  # fmt: skip
    code = "import typer; from crmflow.cli.snapshot import snapshot; typer.run(snapshot)"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--config", str(tmp_path / "crmflow.yaml"), "--json", "--limit", "50",
         "--run-id", "it-cli", "--state-dir", str(tmp_path / "state"),
         "--bootstrap-servers", endpoints.bootstrap_servers, "--registry-url", endpoints.registry_url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["run_id"] == "it-cli"
    assert out["sources"]["tickets"]["produced"] == 50
    assert set(out["sources"]["tickets"]) == {"read", "produced", "rejected", "filtered"}
    assert out["records_per_second"] > 0


def test_missing_file_is_a_clear_terminal_error(
    tmp_path: Path, topic_prefix: str, endpoints: Endpoints, registry_client: SchemaRegistryClient,
    write_config: WriteConfig,
) -> None:  # fmt: skip
    source = f"  customers: {{kind: csv, path: {tmp_path}/nope.csv, entity: account, key: Customer_ID}}"
    cfg = write_config(tmp_path, topic_prefix, source)
    with pytest.raises(SourceOpenError, match=r"cannot open .*nope\.csv") as info:
        run_snapshot(cfg, kafka=endpoints.kafka, registry_client=registry_client,
                     state_dir=tmp_path / "state")  # fmt: skip
    assert isinstance(info.value, TerminalError)
