"""HTML reports people read: offline pages with charts (plotly, inlined) from Jinja templates.

:class:`Report` builds a page section by section; :mod:`crmflow.reports.browser` renders one in headless
Chromium (for the tests and the docs' screenshots).
"""

from crmflow.reports.page import Report, format_cell, slugify

__all__ = ["Report", "format_cell", "slugify"]
