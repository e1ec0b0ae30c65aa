"""Render a report in headless Chromium: the DOM after its scripts ran, or a PNG screenshot.

Tests use it to check what a person sees (plotly's SVG drawn offline, the tables, the verdict); the docs'
screenshots come from it. The binary is ``$CRMFLOW_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on
PATH (Debian's package ``chromium``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from crmflow.reports.exceptions import BrowserMissingError, BrowserRenderError

__all__ = ["CHROMIUM_ENV", "dump_dom", "find_chromium", "screenshot"]

log = logging.getLogger(__name__)

CHROMIUM_ENV: Final = "CRMFLOW_CHROMIUM"
_NAMES: Final = ("chromium", "chromium-browser")
#: Virtual time the page gets to run its scripts (plotly draws in well under a second of it).
DEFAULT_BUDGET_MS: Final = 10_000
_TIMEOUT_S: Final = 120.0


def find_chromium() -> str:
    """The Chromium binary to run; raises :class:`BrowserMissingError` (naming the package) when none."""
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        found = shutil.which(override)
        if found is None:
            raise BrowserMissingError()
        return found
    for name in _NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise BrowserMissingError()


def _run(page: Path, extra: list[str], budget_ms: int, profile: Path) -> subprocess.CompletedProcess[str]:
    if not page.is_file():
        raise BrowserRenderError(str(page), "no such file")
    cmd = [
        find_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, page.resolve().as_uri(),
    ]  # fmt: skip
    log.debug("rendering %s in chromium", page)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise BrowserRenderError(str(page), f"no result after {_TIMEOUT_S:.0f}s") from err


def _tail(stderr: str) -> str:
    return " | ".join(stderr.strip().splitlines()[-3:]) or "no output"


def dump_dom(page: Path, *, budget_ms: int = DEFAULT_BUDGET_MS) -> str:
    """The page's DOM (serialised HTML) once its scripts ran for ``budget_ms`` of virtual time."""
    with tempfile.TemporaryDirectory(prefix="crmflow-chromium-") as profile:
        done = _run(page, ["--dump-dom"], budget_ms, Path(profile))
    if done.returncode != 0 or not done.stdout.strip():
        raise BrowserRenderError(str(page), f"exit code {done.returncode}: {_tail(done.stderr)}")
    return done.stdout


def screenshot(
    page: Path, out: Path, *, width: int = 1200, height: int = 1800, budget_ms: int = DEFAULT_BUDGET_MS
) -> Path:
    """Write a PNG of the page's first ``width`` x ``height`` pixels to ``out``; returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="crmflow-chromium-") as profile:
        done = _run(page, [f"--screenshot={out.resolve()}", f"--window-size={width},{height}"], budget_ms,
                    Path(profile))  # fmt: skip
    if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        raise BrowserRenderError(str(page), f"no screenshot (exit code {done.returncode}): {_tail(done.stderr)}")
    return out
