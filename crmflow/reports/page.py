"""One HTML report page: sections in order (verdict, KPIs, charts, tables, text), rendered from a Jinja template.

The page is self-contained: the CSS and plotly.js are inlined (plotly.js once, however many charts), so it
opens from a file, offline, and prints. Every section carries ``id`` and ``data-section`` (a slug of its
title, unique in the page) and the verdict ``data-verdict="pass|fail"``, which is what browser tests assert on.
::

    report = Report("Migration run 20260101-120000", "demo config")
    report.add_verdict(True, "Reconciled", ["read = written + rejected + filtered for every entity"])
    report.add_kpis({"records read": 10_000, "throughput (rec/s)": 2_345.6})
    report.add_chart("Rejects by rule", plotly.graph_objects.Figure(...))
    report.add_table("Reconciliation", ["entity", "read", "written"], rows, limit=500)
    report.write(run_dir / "report.html")
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Final

import plotly.graph_objects as go
import plotly.io as pio
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from crmflow import __version__
from crmflow.reports.exceptions import DuplicateVerdictError

__all__ = ["Report", "format_cell", "slugify"]

_TEMPLATE: Final = "report.html.j2"
_CSS: Final = "report.css"
#: plotly's options for every chart: no logo link (it would need the network).
_PLOTLY_CONFIG: Final[dict[str, Any]] = {"displaylogo": False, "displayModeBar": False, "responsive": True}
_MARGIN: Final = {"t": 30, "l": 60, "r": 20, "b": 60}


@cache
def _env() -> Environment:
    return Environment(
        loader=PackageLoader("crmflow.reports", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@cache
def _white_template() -> dict[str, Any]:
    """plotly's white template as plain dicts, built (and validated) once per process."""
    return pio.templates["plotly_white"].to_plotly_json()  # type: ignore[no-any-return]


@cache
def _css() -> str:
    loader = _env().loader
    assert loader is not None
    source, _, _ = loader.get_source(_env(), _CSS)
    return source


def slugify(title: str) -> str:
    """``"Rejects by rule"`` -> ``"rejects-by-rule"``: the section's id (ASCII letters, digits, dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug or "section"


def format_cell(value: object) -> str:
    """How a table cell or a KPI shows a value: thousands separators, floats to 2 decimals, None blank."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:,.2f}"
    if isinstance(value, Decimal):
        return f"{value:,}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Cell:
    text: str
    num: bool


@dataclass
class _Section:
    kind: str
    id: str
    title: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # the template reads s.rows, s.ok... from data
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None


class Report:
    """An HTML report built section by section, in the order the ``add_*`` calls are made.

    Rendering is pure: ``render()`` can be called more than once, and sections added afterwards appear
    in the next render.
    """

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._sections: list[_Section] = []
        self._ids: set[str] = set()
        self._charts = 0

    def _id(self, title: str) -> str:
        base = slugify(title)
        sid, n = base, 2
        while sid in self._ids:
            sid, n = f"{base}-{n}", n + 1
        self._ids.add(sid)
        return sid

    @property
    def section_ids(self) -> list[str]:
        """The sections' ids in page order (the ``id``/``data-section`` attributes)."""
        return [s.id for s in self._sections]

    def add_verdict(self, ok: bool, headline: str, reasons: Sequence[str] = (), *, label: str | None = None) -> None:
        """The page's PASS/FAIL (or ``label``, e.g. GO/NO-GO), with the reasons named; section id ``verdict``,
        ``data-verdict="pass|fail"``; one per page."""
        if "verdict" in self._ids:
            raise DuplicateVerdictError(f"report {self.title!r} already has a verdict")
        label = label or ("PASS" if ok else "FAIL")
        self._sections.append(
            _Section("verdict", self._id("verdict"), headline,
                     {"ok": ok, "label": label, "headline": headline, "reasons": list(reasons)})
        )  # fmt: skip

    def add_kpis(self, kpis: Mapping[str, str | int | float]) -> None:
        """A row of big figures (name -> value); section id ``kpis`` (``kpis-2``... for further rows)."""
        items = [{"name": name, "value": format_cell(value)} for name, value in kpis.items()]
        self._sections.append(_Section("kpis", self._id("kpis"), "", {"items": items}))

    def add_chart(self, title: str, figure: go.Figure) -> None:
        """A plotly figure under a heading, drawn by the page's one inlined plotly.js (white theme, compact
        margins unless the figure sets its own)."""
        sid = self._id(title)
        self._charts += 1
        # Plain dicts (a copy: the caller's figure keeps its layout), not a new go.Figure: plotly validates a
        # figure's every property again, its template's too, which cost a second per page.
        spec = figure.to_plotly_json()
        layout = dict(spec.get("layout") or {})
        layout["template"] = _white_template()  # one look on every page; white prints well
        if (layout.get("margin") or {}).get("t") is None:
            layout["margin"] = {**(layout.get("margin") or {}), **_MARGIN}
        html = pio.to_html(
            {"data": spec.get("data") or [], "layout": layout}, validate=False, full_html=False,
            include_plotlyjs=False, div_id=f"chart-{sid}", config=_PLOTLY_CONFIG, default_height="420px",
            default_width="100%",
        )  # fmt: skip
        self._sections.append(_Section("chart", sid, title, {"html": Markup(html)}))  # noqa: S704 - plotly's own output

    def add_table(
        self,
        title: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[object]],
        *,
        limit: int | None = None,
    ) -> None:
        """A table; with ``limit``, only the first ``limit`` rows are shown and the page says how many there
        were (the section's ``data-rows`` is the full count)."""
        shown: list[list[_Cell]] = []
        total = 0
        for row in rows:
            total += 1
            if limit is None or len(shown) < limit:
                shown.append([_Cell(format_cell(v), _is_number(v)) for v in row])
        self._sections.append(
            _Section("table", self._id(title), title, {"columns": list(columns), "rows": shown, "total": total})
        )

    def add_text(self, title: str, text: str) -> None:
        """A heading and plain text; blank lines separate paragraphs."""
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        self._sections.append(_Section("text", self._id(title), title, {"paragraphs": paragraphs}))

    def render(self) -> str:
        """The whole page as one HTML string."""
        has_charts = any(s.kind == "chart" for s in self._sections)
        return (
            _env()
            .get_template(_TEMPLATE)
            .render(
                title=self.title,
                subtitle=self.subtitle,
                version=__version__,
                generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                css=Markup(_css()),  # noqa: S704 - our own stylesheet
                has_charts=has_charts,
                plotly_js=Markup(get_plotlyjs()) if has_charts else "",  # noqa: S704 - plotly's bundled library
                sections=self._sections,
            )
        )

    def write(self, path: Path) -> Path:
        """Render into ``path`` (parents created), atomically; returns the path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        tmp.replace(path)
        return path
