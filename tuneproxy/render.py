"""Rich renderings of tuneproxy's records for the terminal (the CLI's tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tuneproxy.dataset.findings import CODES
from tuneproxy.dataset.validate import Report


def show_report(console: Console, report: Report, epochs: int) -> None:
    """Findings grouped by code (with first line numbers), the statistics, then the verdict."""
    if report.counts:
        table = Table(title=f"Findings in {report.source}", show_lines=False)
        for col in ("code", "name", "severity", "count", "first lines", "what to do (first)"):
            table.add_column(col, overflow="fold")
        for code, count in report.counts.items():
            kept = report.of(code)
            severity = kept[0]["severity"] if kept else CODES[code].severity
            style = "red" if severity == "error" else "yellow"
            lines = ", ".join(str(f["line"]) for f in kept[:5] if f["line"]) or "file"
            table.add_row(code, CODES[code].name, f"[{style}]{severity}[/]", f"{count:,}", lines,
                          kept[0]["message"] if kept else CODES[code].summary)
        console.print(table)
    if report.stats and report.stats.examples:
        s = report.stats
        bound = "" if s.exact else f" (estimate, ±{s.error_bound:.0%})"
        stats = Table(title="Statistics", show_header=False)
        stats.add_column("what")
        stats.add_column("value", justify="right")
        stats.add_row("examples", f"{s.examples:,}")
        stats.add_row("format", report.format or "-")
        stats.add_row("tokenizer", s.tokenizer)
        stats.add_row(f"tokens per example p5 / p50 / p95 / max{bound}",
                      f"{s.tokens_p5:,} / {s.tokens_p50:,} / {s.tokens_p95:,} / {s.tokens_max:,}")
        stats.add_row(f"training tokens (one epoch){bound}", f"{s.total_tokens:,}")
        stats.add_row(f"billable tokens for {epochs} epochs{bound}", f"{s.billable_tokens(epochs):,}")
        console.print(stats)
    style = "green" if report.ok else "red"
    console.print(f"[bold {style}]{report.verdict()}[/]", highlight=False)
