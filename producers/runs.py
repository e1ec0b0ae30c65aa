"""Run ids and where a run keeps its checkpoints."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crmflow.exceptions import ConfigError
from crmflow.settings import stack_settings

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def cfg_get(obj: Any, *path: str) -> Any:
    for name in path:
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def new_run_id(name: str = "snapshot") -> str:
    """``<name>-20250101T120000Z-1a2b3c``: names the config's run, sorts by start time, unique."""
    return f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id):
        raise ConfigError(f"run id {run_id!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return run_id


def resolve_run_id(cfg: Any, run_id: str | None) -> str:
    """The run id to use: the one given, else a new one named after the config's ``run.name``."""
    return check_run_id(run_id or new_run_id(str(cfg_get(cfg, "run", "name") or "snapshot")))


def default_state_dir() -> Path:
    return stack_settings().home / "state" / "snapshot"
