"""``crmflow cutover status``: GO or NO-GO, with every reason named.

Each check is a :class:`Check` (name, ok, detail). The command gathers what needs the running pipeline
(services up, consumer lag: :mod:`crmflow.pipeline`) and this module judges the rest from the target:
open dead letters against the config's ``validation.accepted_dlq_rules``, the last ``validate.json``, and a
fresh validation of a small random sample (drift). GO only when every check is ok.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from crmflow.connections import PostgresConnection
from crmflow.exceptions import ConfigError
from crmflow.quality.validate import Validator
from producers.cdc.stream import slot_state
from sinks.postgres.ledger import Ledger


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def services_check(problems: Mapping[str, str | None]) -> Check:
    """``problems``: part → why it does not answer (None: up)."""
    down = {part: why for part, why in problems.items() if why}
    if down:
        return Check("services", False, "; ".join(f"{part} is down ({why})" for part, why in down.items()))
    return Check("services", True, f"{', '.join(problems)} up")


def lag_check(lags: Mapping[str, int], max_lag: int) -> Check:
    """``lags``: consumer group (or CDC slot) → records behind."""
    high = {g: n for g, n in lags.items() if n > max_lag}
    if high:
        return Check("lag", False, "; ".join(f"{g} is {n} record(s) behind (max {max_lag})" for g, n in high.items()))
    return Check("lag", True, ", ".join(f"{g} {n}" for g, n in lags.items()) + f" (max {max_lag})")


def cdc_check(cfg: Any) -> Check | None:
    """The CDC producer's lag: WAL bytes between the legacy database's current position and what the slot has
    confirmed (everything Kafka acknowledged); None without a ``cdc`` section."""
    cdc = cfg.cdc
    if cdc is None:
        return None
    dsn = os.environ.get(cdc.dsn_env)
    if not dsn:
        return Check("cdc_lag", False, f"environment variable {cdc.dsn_env} (cdc.dsn_env) is not set")
    try:
        with PostgresConnection.from_env(cdc.dsn_env, dsn).connect(connect_timeout=5) as conn:
            state = slot_state(conn, cdc.slot)
    except ConfigError as exc:
        return Check("cdc_lag", False, str(exc))
    except psycopg.OperationalError as exc:
        return Check("cdc_lag", False, f"legacy database unreachable (SQLSTATE {exc.sqlstate or 'none'})")
    if state is None:
        return Check("cdc_lag", False, f"replication slot {cdc.slot} does not exist (`crmflow cdc --init`)")
    if state["confirmed_flush_lsn"] is None:
        return Check("cdc_lag", False, f"slot {cdc.slot} has confirmed nothing yet")
    lag = int(state["current_lsn"]) - int(state["confirmed_flush_lsn"])
    limit = cfg.validation.max_cdc_lag_bytes
    return Check("cdc_lag", lag <= limit, f"slot {cdc.slot} is {lag} WAL byte(s) behind (max {limit})")


def dlq_check(conn: psycopg.Connection[Any], schema: str, dlq_topic: str, accepted: Sequence[str]) -> Check:
    counts = Ledger(conn, schema).counts(dlq_topic, statuses=("open",))
    blocking: dict[str, int] = {}
    tolerated = 0
    for (_, _, rule), n in counts.items():
        if rule in accepted:
            tolerated += n
        else:
            blocking[rule] = blocking.get(rule, 0) + n
    if blocking:
        rules = ", ".join(f"{r} {n}" for r, n in sorted(blocking.items()))
        return Check("dead_letters", False, f"{sum(blocking.values())} open dead letter(s) of unaccepted rules: "
                                            f"{rules} (`crmflow dlq list`)")  # fmt: skip
    return Check("dead_letters", True, f"no unaccepted open letters ({tolerated} of accepted rules)")


def last_validation_check(path: Path | None) -> Check:
    if path is None or not path.exists():
        return Check("last_validation", False, "no validation of the latest run (run `crmflow validate`)")
    data = json.loads(path.read_text())
    if not data.get("ok"):
        return Check("last_validation", False, f"{path}: " + "; ".join(data.get("reasons") or ["failed"]))
    k = data.get("kpis", {})
    return Check("last_validation", True, f"{path}: accuracy {k.get('data_accuracy_rate')}, completeness "
                                          f"{k.get('data_completeness_rate')}")  # fmt: skip


def drift_check(cfg: Any, conn: psycopg.Connection[Any], schema: str, run_id: str | None, sample: int) -> Check:
    """A fresh validation of about ``sample`` random records (a new seed each time)."""
    seed = random.SystemRandom().randrange(1 << 31)
    report = Validator(cfg, conn, schema=schema, target="", run_id=run_id, sample=sample, seed=seed).run()
    if not report.ok:
        return Check("drift", False, f"fresh sample (seed {seed}): " + "; ".join(report.reasons()))
    return Check("drift", True, f"fresh sample of {report.compared} record(s) (seed {seed}) matches the sources")


def verdict(checks: Sequence[Check]) -> dict[str, Any]:
    go = all(c.ok for c in checks)
    return {"verdict": "GO" if go else "NO-GO", "go": go, "reasons": [f"{c.name}: {c.detail}" for c in checks
                                                                       if not c.ok],
            "checks": [c.to_json() for c in checks]}  # fmt: skip
