"""How a migration summary reads: a table that fits 80 columns, and the lines under it."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table


def summary_table(summary: dict[str, Any]) -> Table:
    """The per-entity reconciliation of a summary's JSON (``MigrationSummary.to_json``)."""
    table = Table("entity", "read", "new", "updated", "same", "rejected", "filtered", "merged", "ok",
                  title=f"run {summary['run_id']}", min_width=40)
    for entity, c in summary["entities"].items():
        table.add_row(entity, f"{c['read']:,}", f"{c['inserted']:,}", f"{c['updated']:,}", f"{c['unchanged']:,}",
                      f"{c['rejected']:,}", f"{c['filtered']:,}", f"{c['merged']:,}",
                      "[green]yes[/green]" if c["reconciled"] else "[red]NO[/red]")
    return table


def summary_lines(summary: dict[str, Any], config: str) -> list[str]:
    """What the table does not show: golden accounts, flags, rejects by rule, speed, where to look next."""
    lines = [f"target: {summary.get('target', '?')}"]
    account = summary["entities"].get("account")
    if account is not None and account.get("golden") is not None:
        landed = account["inserted"] + account["updated"] + account["unchanged"]
        lines.append(f"deduplication: {landed:,} source accounts became {account['golden']:,} golden accounts "
                     f"({account['merged']:,} merged; evidence in xref, golden_merges)")
    contact = summary["entities"].get("contact")
    if contact is not None and contact.get("golden") is not None:
        landed = contact["inserted"] + contact["updated"] + contact["unchanged"]
        lines.append(f"deduplication: {landed:,} source contacts became {contact['golden']:,} golden contacts "
                     f"({contact['merged']:,} merged)")
    flagged = {e: c for e, c in summary["entities"].items() if c.get("flagged")}
    for entity, c in flagged.items():
        flags = ", ".join(f"{f} {n:,}" for f, n in c["flagged"].items())
        lines.append(f"flagged {entity}: {c['flagged_records']:,} records kept with quality flags ({flags})")
    if summary.get("rejected_by_rule"):
        lines.append("rejected by rule: " + ", ".join(f"{r} {n:,}" for r, n in summary["rejected_by_rule"].items()))
    lines.append(f"{summary['records']:,} records in {summary['elapsed_s']:.1f}s "
                 f"({summary['records_per_second']:,.0f} records/s)"
                 + ("; resumed run" if summary.get("resumed") else ""))
    if summary.get("rejected_by_rule"):
        lines.append(f"dead letters: crmflow dlq list -c {config}")
    if not summary["reconciled"]:
        lines.append("NOT reconciled: read differs from new + updated + same + rejected + filtered; "
                     f"see crmflow runs show {summary['run_id']}")
    return lines


def render_summary(summary: dict[str, Any], config: str, console: Console) -> None:
    console.print(summary_table(summary))
    for line in summary_lines(summary, config):
        console.print(line, highlight=False, soft_wrap=True)


def summary_text(summary: dict[str, Any], config: str) -> str:
    """The same as plain text (the run directory's ``summary.txt``)."""
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    render_summary(summary, config, console)
    return console.export_text()
