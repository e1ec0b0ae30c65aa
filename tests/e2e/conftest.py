"""End-to-end fixtures: generated legacy data with its ground truth, a config per test with its own topics
and target database, and the checks that compare the target CRM with the truth field by field."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from crmflow.demo_data.run import generate
from crmflow.settings import stack_settings

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "deploy" / "demo" / "crmflow.yaml"
HARD_CONFIG = REPO / "deploy" / "demo" / "crmflow-hard.yaml"
TABLES = {"account": ("accounts", "customer_id"), "contact": ("contacts", "contact_id"),
          "sale": ("sales", "sale_id"), "case": ("cases", "case_id")}


@dataclass(frozen=True)
class Dataset:
    dir: Path
    truth: list[dict[str, Any]]

    def ok(self, entity: str) -> list[dict[str, Any]]:
        return [t for t in self.truth if t["entity"] == entity and t["outcome"] == "ok"]

    def rejects(self) -> list[dict[str, Any]]:
        return [t for t in self.truth if t["outcome"] == "reject"]


def _dataset(root: Path, customers: int, seed: int, noise: str = "default") -> Dataset:
    generate(root, customers, seed, noise_profile="hard" if noise == "hard" else "default")
    with (root / "truth.jsonl").open() as fh:
        truth = [json.loads(line) for line in fh]
    return Dataset(root, truth)


def _shared_dataset(factory: pytest.TempPathFactory, customers: int, seed: int, noise: str = "default") -> Dataset:
    """The data set, generated once for all xdist workers of this run (in their common temporary directory,
    under a lock; read-only afterwards), or once per session without xdist."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _dataset(factory.mktemp(f"{noise}-{customers}"), customers, seed, noise)
    root = factory.getbasetemp().parent / f"{noise}-{customers}-{seed}"
    with (factory.getbasetemp().parent / f"{noise}-{customers}-{seed}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = root.with_name(f"{root.name}.complete")  # beside it: the data set's directory holds its files only
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a worker that died half-way
            root.mkdir()
            _dataset(root, customers, seed, noise)
            done.touch()
    with (root / "truth.jsonl").open() as fh:
        return Dataset(root, [json.loads(line) for line in fh])


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return _shared_dataset(tmp_path_factory, 3000, 11)


@pytest.fixture(scope="session")
def hard_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The hard noise profile (``crmflow demo-data --noise hard``): duplicate accounts and contacts that only
    names, addresses, dates and ids link, with a truth cluster for every contact."""
    return _shared_dataset(tmp_path_factory, 1500, 13, "hard")


@pytest.fixture(scope="session")
def medium_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return _shared_dataset(tmp_path_factory, 15000, 12)


@dataclass(frozen=True)
class Run:
    config: Path
    env: dict[str, str]
    target_dsn: str
    prefix: str
    name: str

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crmflow", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)


@pytest.fixture
def run_factory(tmp_path: Path, pg_dsn_factory: Callable[[], str]) -> Iterator[Callable[..., Run]]:
    """``run_factory(dataset, **overrides) -> Run``: the demo config with this test's own topic prefix, run
    name, target database and data dir; ``overrides`` patch the config (e.g. a mapping to break).
    Deduplication is off unless ``dedupe=True``: the other tests compare one account per source record."""
    yield _run_maker(tmp_path, pg_dsn_factory)


@dataclass(frozen=True)
class Migrated:
    """A finished ``crmflow migrate`` and its ``--json`` summary."""

    run: Run
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def small_migration(small_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory,
                    session_pg_dsn_factory: Callable[..., str]) -> Migrated:
    """One uninterrupted ``crmflow migrate`` of the small data set (deduplication off), shared by the tests
    that only read it (target, dead letters, run record and report, summary). A test that changes target
    rows works on a copy (``target_copy``); one that changes anything else makes its own run."""
    run = _run_maker(tmp_path_factory.mktemp("small-migration"), session_pg_dsn_factory)(small_dataset)
    done = run.cli("migrate", "-c", str(run.config), "--json", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    return Migrated(run, json.loads(done.stdout))


@pytest.fixture
def target_copy(tmp_path: Path, pg_dsn_factory: Callable[..., str]) -> Callable[[Run], Run]:
    """``target_copy(run) -> Run``: the same run (config file's topics, run name and latest run) writing to a
    copy of its target database, dropped after the test: for a test that changes target rows of a shared run."""

    def copy(run: Run) -> Run:
        dsn = pg_dsn_factory(template=conninfo_to_dict(run.target_dsn)["dbname"])
        raw = yaml.safe_load(run.config.read_text())
        env_name = f"E2E_TARGET_DSN_{uuid.uuid4().hex[:8].upper()}"
        raw["target"]["dsn_env"] = env_name
        cfg = tmp_path / f"{run.config.stem}-copy.yaml"
        cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        os.environ[env_name] = dsn
        return Run(cfg, {**run.env, env_name: dsn}, dsn, run.prefix, run.name)

    return copy


@pytest.fixture(scope="session")
def hard_dedupe_migration(hard_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory,
                          session_pg_dsn_factory: Callable[..., str]) -> Run:
    """One uninterrupted ``crmflow migrate --workers 2`` of the hard data set with the hard config (dedupe on,
    contacts too, one dedupe partition), shared by the tests that only read it."""
    run = _run_maker(tmp_path_factory.mktemp("hard-migration"), session_pg_dsn_factory)(
        hard_dataset, dedupe=True, base=HARD_CONFIG)
    done = run.cli("migrate", "-c", str(run.config), "--workers", "2", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def dedupe_migration(small_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory,
                     session_pg_dsn_factory: Callable[..., str]) -> Run:
    """One uninterrupted ``crmflow migrate --workers 2`` of the small data set with deduplication on, shared
    by the tests that only read it (its target, topics and summary): the reference clusters and golden ids
    the kill and arrival-order tests compare with, and the outputs the exactly-once audit counts. A test
    that changes anything of a run makes its own with ``run_factory``."""
    run = _run_maker(tmp_path_factory.mktemp("dedupe-migration"), session_pg_dsn_factory)(small_dataset, dedupe=True)
    done = run.cli("migrate", "-c", str(run.config), "--workers", "2", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def _run_maker(tmp_path: Path, pg_dsn_factory: Callable[[], str]) -> Callable[..., Run]:
    def make(dataset: Dataset, patch: Callable[[dict[str, Any]], None] | None = None, suffix: str = "",
             dedupe: bool = False, base: Path = DEMO_CONFIG) -> Run:
        raw = yaml.safe_load(base.read_text())
        raw["dedupe"]["enabled"] = dedupe
        tag = uuid.uuid4().hex[:8]
        prefix, name = f"e2e-{tag}", f"e2e{tag}"
        raw["kafka"]["topic_prefix"] = prefix
        raw["kafka"]["partitions"] = 3
        raw["run"]["name"] = name
        for src in raw["sources"].values():
            src["path"] = str(dataset.dir / Path(src["path"]).name)
        env_name = f"E2E_TARGET_DSN_{tag.upper()}"
        raw["target"]["dsn_env"] = env_name
        if patch:
            patch(raw)
        cfg = tmp_path / f"crmflow{suffix}.yaml"
        cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        dsn = pg_dsn_factory()
        if stack_settings().stack == "local-secure":
            dsn = _secure_run(prefix, dsn)
        env = {**os.environ, env_name: dsn, "PYTHONUNBUFFERED": "1"}
        os.environ[env_name] = dsn  # for in-process stages in the same test
        return Run(cfg, env, dsn, prefix, name)

    return make


def _secure_run(prefix: str, admin_dsn: str) -> str:
    """On the secure stack a run's topics need its stage ACLs, and its target database belongs to the sink
    role: grant both, and return the sink role's DSN of the database (what the run writes with)."""
    from crmflow.stack import get_stack
    from crmflow.stack.secure import SecureStack

    stack = get_stack()
    assert isinstance(stack, SecureStack)
    stack.grant(prefix)
    return stack.prepare_target(str(conninfo_to_dict(admin_dsn)["dbname"]))


def _plain(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, list):
        return sorted(value)
    return value


def target_rows(dsn: str, entity: str, fields: list[str]) -> dict[str, dict[str, Any]]:
    table, key = TABLES[entity]
    # The entity's own id is the table's external_id.
    cols = ", ".join('external_id' if f == key else f'"{f}"' for f in fields)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f'select external_id, {cols} from crm.{table}').fetchall()
    return {r[0]: {f: _plain(v) for f, v in zip(fields, r[1:], strict=True)} for r in rows}


def assert_target_matches_truth(dsn: str, dataset: Dataset, entities: Iterable[str] = tuple(TABLES)) -> dict[str, int]:
    """Every ok record is in the target exactly once with every field as the truth says; nothing else is.
    ``entities`` limits the check (with deduplication on, the accounts are golden records, not the truth's)."""
    counts = {}
    for entity in entities:
        expected = dataset.ok(entity)
        fields = sorted({f for t in expected for f in t["clean"]})
        rows = target_rows(dsn, entity, fields)
        assert set(rows) == {t["source_key"] for t in expected}, f"{entity}: wrong set of records in the target"
        mismatches = [
            (t["source_key"], f, t["clean"][f], rows[t["source_key"]][f])
            for t in expected for f in t["clean"]
            if _plain(t["clean"][f]) != rows[t["source_key"]][f]
        ]
        assert mismatches == [], f"{entity}: {len(mismatches)} field mismatches, first: {mismatches[:5]}"
        counts[entity] = len(rows)
    return counts
