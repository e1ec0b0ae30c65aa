"""Errors of the HTML reports and of the headless browser that checks them."""

from __future__ import annotations

from crmflow.exceptions import CrmflowError, MissingToolError, TerminalError, TransientError


class ReportError(CrmflowError):
    """Root of the errors raised by :mod:`crmflow.reports`."""


class BrowserMissingError(ReportError, MissingToolError):
    """No headless Chromium on PATH; the message names the Debian package to install."""

    def __init__(self) -> None:
        super().__init__(
            "chromium",
            "install Debian's package: apt-get install -y --no-install-recommends chromium "
            "(or set CRMFLOW_CHROMIUM to the browser's path)",
        )


class BrowserRenderError(ReportError, TransientError):
    """Chromium ran but did not render the page (crashed, timed out or wrote nothing)."""

    def __init__(self, page: str, detail: str) -> None:
        super().__init__(f"chromium could not render {page}: {detail}")
        self.page = page
        self.detail = detail


class DuplicateVerdictError(ReportError, TerminalError):
    """A report was given a second verdict; a page has one GO/NO-GO at most."""
