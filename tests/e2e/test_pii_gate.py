"""The PII gate: one staging migration of the demo data, then a search of everything it left behind for the
input's personal data.

``crmflow --verbose migrate`` runs the demo config in the staging profile, deduplication on, every service at
DEBUG. Then every e-mail, phone (as written, E.164, digits only), full name and street of the generated
source files is searched for, as bytes, in:

- every topic of the run: keys, values and headers of every message, aborted transactions included
  (``read_uncommitted``): the mapped topics, the DLQ, the internal dedupe topic and its state changelog;
- every table of the target database (crmflow's bookkeeping in it too: runs, row versions, deletions,
  cross-references, merge log, dead-letter ledger);
- every file of the run's directory (the services' DEBUG logs, the run record, ``report.html``), the
  snapshot's checkpoints of the run, the migrate's own stdout and stderr;
- the metrics page of every process of the run (``CRMFLOW_METRICS_DIR``: each writes it when it exits);
- ``validate.html``/``validate.json`` and ``assess.html``/``assess.json``.

What the staging profile allows: the raw topics are the sources' copy, read before the masking stage, and
hold the input as it was read (README, "Personal data"); the test checks that they do (the control: the
search finds what is there), and nothing else may.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from psycopg import sql
from pydantic import SecretStr

from crmflow.config import load_config
from crmflow.pii import SealedDataError, StateCipher
from crmflow.runtime.changelog import read_partitions
from crmflow.settings import stack_settings
from crmflow.stack import Endpoints
from tests.e2e.conftest import Dataset, Run

pytestmark = pytest.mark.e2e

KEY = "gate-test-pii-key-0123456789abcdef"
MIN_LEN = 8  # shorter values (a 7-letter name) would also match unrelated text


def _input_values(dataset: Dataset) -> set[bytes]:
    """Every e-mail, phone, full name and street of the source files, in the renderings a leak could take."""
    values: set[str] = set()
    for name in ("customers.csv", "contacts.csv"):
        with (dataset.dir / name).open(encoding="utf-8", errors="replace", newline="") as fh:
            for row in csv.DictReader(fh):
                for column in ("Contact_Email", "Phone", "Street_Address"):
                    if value := (row.get(column) or "").strip():
                        values.add(value)
                        values.add(value.lower())
                first, last = (row.get("First_Name") or "").strip(), (row.get("Last_Name") or "").strip()
                if first and last:
                    values.add(f"{first} {last}")
                if digits := re.sub(r"\D", "", row.get("Phone") or ""):
                    values.add(digits)
    for t in dataset.truth:  # the clean renderings: E.164 phones, name-cased names, expanded streets
        if t["entity"] in ("account", "contact"):
            clean = t.get("clean") or {}
            values.update(str(clean[f]) for f in ("email", "phone", "full_name", "street") if clean.get(f))
            if phone := clean.get("phone"):
                values.add(str(phone).lstrip("+"))
    # A placeholder (``000-000-0000``) identifies no one, and its digits are in every metrics bucket.
    return {v.encode() for v in values if len(v) >= MIN_LEN and len(set(re.sub(r"\W", "", v))) > 2}


def _trie_regex(words: Iterable[bytes]) -> bytes:
    """A regular expression matching any of ``words`` whose alternatives share their prefixes (a trie): the
    engine then tries a couple of bytes per position, not every word."""
    trie: dict[int, Any] = {}
    for word in words:
        node = trie
        for byte in word:
            node = node.setdefault(byte, {})

    def build(node: dict[int, Any]) -> bytes:
        leaves = [re.escape(bytes([b])) for b, child in sorted(node.items()) if not child]
        alts = [re.escape(bytes([b])) + build(child) for b, child in sorted(node.items()) if child]
        if leaves:
            alts.append(leaves[0] if len(leaves) == 1 else b"[" + b"".join(leaves) + b"]")
        return alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"

    return build(trie)


class _Finder:
    """Finds any of many values in a blob: one regular expression (a trie of the values' first ``MIN_LEN``
    bytes, all the same length) finds where a value may start, the whole value is then checked there."""

    def __init__(self, values: Iterable[bytes]) -> None:
        self.heads: dict[bytes, list[bytes]] = defaultdict(list)
        for v in values:
            self.heads[v[:MIN_LEN]].append(v)
        self._starts = re.compile(b"(?=(" + _trie_regex(self.heads) + b"))")

    def hits(self, blob: bytes) -> list[bytes]:
        return sorted({v for m in self._starts.finditer(blob) for v in self.heads[m[1]]
                       if blob.startswith(v, m.start())})


def _consumer(ep: Endpoints, group: str) -> Consumer:
    """A reader of everything (the connection model's TLS/SASL settings on a secured stack)."""
    return Consumer({**ep.kafka.client_config(), "group.id": group, "enable.auto.commit": False,
                     "isolation.level": "read_uncommitted", "enable.partition.eof": True})


def _messages(ep: Endpoints, topic: str) -> Iterator[bytes]:
    """Key, value and headers of every message of ``topic``, aborted transactions included."""
    c = _consumer(ep, f"pii-gate-{topic}")
    try:
        md = c.list_topics(topic, timeout=10)
        pending = set()
        for p in md.topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                pending.add(p)
        c.assign([TopicPartition(topic, p, -2) for p in pending])
        deadline = time.monotonic() + 30
        while pending:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for m in c.consume(2000, timeout=0.1):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition() or 0)
                    continue
                headers = b"".join(str(h[0]).encode() + _cell(h[1] or b"") for h in m.headers() or [])
                yield (m.key() or b"") + b"\0" + (m.value() or b"") + b"\0" + headers
    finally:
        c.close()


def _cell(value: Any) -> bytes:
    # bytea as its bytes: its hex text would be a long run of digits, where short phone numbers turn up by chance.
    return bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()


def _tables(dsn: str) -> dict[str, list[bytes]]:
    """Every row of every user table of the database, its cells joined, by ``schema.table``."""
    out: dict[str, list[bytes]] = {}
    with psycopg.connect(dsn) as conn:
        tables = conn.execute("select table_schema, table_name from information_schema.tables where table_type = "
                              "'BASE TABLE' and table_schema not in ('pg_catalog', 'information_schema')").fetchall()
        for schema, table in tables:
            query = sql.SQL("select * from {}").format(sql.Identifier(schema, table))
            out[f"{schema}.{table}"] = [b"\0".join(map(_cell, row)) for row in conn.execute(query)]
    return out


def _staging(raw: dict[str, Any]) -> None:
    raw["pii"]["profile"] = "staging"


@pytest.mark.also_secure  # the gate: over the secure stack too
def test_a_staging_migration_leaves_no_input_pii_anywhere_but_the_raw_topics(
    small_dataset: Dataset, run_factory: Callable[..., Run], endpoints: Endpoints, tmp_path: Path,
) -> None:
    run = run_factory(small_dataset, _staging, dedupe=True)
    metrics_dir = tmp_path / "metrics"
    env = {**run.env, "CRMFLOW_PII_KEY": KEY, "CRMFLOW_METRICS_DIR": str(metrics_dir)}
    env.pop("CRMFLOW_PII_PROFILE", None)
    run_id = f"{run.name}-gate"

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "crmflow", "--verbose", *args], env=env, capture_output=True,
                              timeout=300, check=False)

    migrate = cli("migrate", "-c", str(run.config), "--run-id", run_id, "--json")
    assert migrate.returncode == 0, migrate.stderr[-3000:].decode(errors="replace")
    validate = cli("validate", "-c", str(run.config), "--run-id", run_id, "--out", str(tmp_path / "validate"))
    assess = cli("assess", "-c", str(run.config), "--out", str(tmp_path / "assess"), "--no-progress")
    assert assess.returncode == 0, assess.stderr[-3000:].decode(errors="replace")

    finder = _Finder(_input_values(small_dataset))
    assert len(finder.heads) > 5000
    leaks: dict[str, list[bytes]] = {}

    def scan(where: str, blobs: Iterable[bytes]) -> int:
        n = 0
        for blob in blobs:
            n += 1
            if found := finder.hits(blob):
                leaks.setdefault(where, []).extend(found)
        return n

    # Topics: every topic of the run's prefix, the changelog of the dedupe state included.
    cfg = load_config(run.config)
    probe = _consumer(endpoints, "pii-gate")
    topics = sorted(t for t in probe.list_topics(timeout=10).topics if t.startswith(f"{run.prefix}."))
    probe.close()
    dedupe = cfg.kafka.dedupe_topic("account")
    expected = {cfg.kafka.dlq_topic, dedupe, f"{dedupe}.state", *(cfg.kafka.mapped_topic(e) for e in cfg.entities)}
    assert expected <= set(topics), f"missing topics: {expected - set(topics)}"
    raw = {cfg.kafka.raw_topic(s) for s in cfg.sources}
    counts = {topic: scan(f"topic {topic}", _messages(endpoints, topic)) for topic in topics if topic not in raw}
    control = sum(1 for m in _messages(endpoints, cfg.kafka.raw_topic("customers")) if finder.hits(m))
    assert control > 2000, "the control: the search finds the input where it is in clear (the raw topics)"
    assert counts[dedupe] > 2000 and counts[f"{dedupe}.state"] > 2000, counts
    assert counts[cfg.kafka.dlq_topic] > 10, counts

    # What the search cannot read is sealed, and opens with the run's key only: the state holds every account.
    state = read_partitions(endpoints.bootstrap_servers, f"{dedupe}.state", range(cfg.kafka.partitions),
                            extra=endpoints.kafka.client_config())
    entries = [(k, v) for part in state.values() for k, v in part.items()]
    cipher = StateCipher(SecretStr(KEY))
    assert all(v.startswith(StateCipher.MAGIC) for _, v in entries)
    opened = {k: orjson.loads(cipher.open(v, k)) for k, v in entries}
    accounts = sum(1 for k in opened if k.startswith(b"r:"))
    with pytest.raises(SealedDataError):
        StateCipher(SecretStr("another-key-0123456789abcdef")).open(entries[0][1], entries[0][0])

    # The target database: every table, crmflow's own included.
    tables = _tables(run.target_dsn)
    assert {"crm.accounts", "crm.contacts", "crm.xref", "crm.golden_merges"} <= set(tables), sorted(tables)
    assert len(tables["crm.accounts"]) > 2000
    with psycopg.connect(run.target_dsn) as conn:
        row = conn.execute("select count(*) from crm.xref where entity = 'account'").fetchone()
    assert row is not None and accounts == row[0], "one state entry per source account"
    for name, rows in tables.items():
        scan(f"table {name}", rows)

    # Logs, the run record and its report; the migrate's own output.
    run_dir = stack_settings().home / "runs" / run_id
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    assert {"process-0.log", "sink.log", "report.html"} <= {p.name for p in files}, [p.name for p in files]
    debug = (run_dir / "process-0.log").read_bytes()
    assert b"DEBUG" in debug, "the services logged at DEBUG"
    for p in files:
        scan(f"run file {p.name}", [p.read_bytes()])
    checkpoints = sorted(p for p in (stack_settings().home / "state" / "snapshot" / run_id).glob("*") if p.is_file())
    assert checkpoints, "the snapshot's checkpoints of the run"
    for p in checkpoints:
        scan(f"snapshot checkpoint {p.name}", [p.read_bytes()])
    scan("migrate stdout/stderr", [migrate.stdout, migrate.stderr])

    # Metrics pages of every process of the run; the reports.
    pages = {p.name: p.read_bytes() for p in metrics_dir.glob("*.prom")}
    assert {n.split("-")[0] for n in pages} >= {"migrate", "process", "sink", "validate", "assess"}, sorted(pages)
    assert any(b"crmflow_records_total" in page for page in pages.values())
    for name, page in pages.items():
        scan(f"metrics {name}", [page])
    reports = sorted(p for d in ("validate", "assess") for p in (tmp_path / d).glob("*") if p.is_file())
    assert {p.name for p in reports} >= {"validate.html", "validate.json", "assess.html", "assess.json"}
    for p in reports:
        scan(f"report {p.name}", [p.read_bytes()])
    scan("validate/assess output", [validate.stdout, validate.stderr, assess.stdout, assess.stderr])

    assert leaks == {}, {where: sorted({v.decode(errors="replace") for v in found})[:5]
                         for where, found in leaks.items()}
