"""The demo config (``deploy/demo/crmflow.yaml``) rewritten for one test: its sources pointed at a data directory,
and some of its sections updated."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "crmflow.yaml"


def demo_config(path: Path, data: Path | None = None, **sections: Mapping[str, object]) -> Path:
    """Write the demo config to ``path`` (a file, or a directory to write ``crmflow.yaml`` into): the sources'
    files taken from ``data`` (default: the demo's directory), each of ``sections`` updated with its values."""
    raw = yaml.safe_load(DEMO.read_text())
    for src in raw["sources"].values():
        src["path"] = str((data or DEMO.parent) / Path(src["path"]).name)
    for name, values in sections.items():
        raw[name].update(values)
    out = path / "crmflow.yaml" if path.is_dir() else path
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out
