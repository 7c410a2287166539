"""Rich renderings of tuneproxy's records for the terminal: every table and line the CLI prints (the live
job display is :mod:`tuneproxy.display`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneproxy.contract import CostEstimate, Deployment, JobEvent, JobRecord
from tuneproxy.dataset.findings import CODES
from tuneproxy.dataset.validate import Report
from tuneproxy.ledger import CostRow


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


def providers_table(rows: list[dict[str, Any]]) -> Table:
    """The providers: key variable, formats, hyperparameters, options, sunset; unavailable ones say why."""
    table = Table(title="Providers")
    for col in ("name", "key variable", "formats", "hyperparameters", "options", "sunset"):
        table.add_column(col, overflow="fold")
    for row in rows:
        note = f"\n[red]{escape(row['reason'])}[/]" if row.get("reason") else ""
        if "display_name" not in row:
            table.add_row(row["name"], "", "", note.strip(), "", "")
            continue
        table.add_row(row["name"] + note, row["env_key"] or "-", ", ".join(row["formats"]),
                      ", ".join(row["hyperparameters"]), ", ".join(row["options"]), str(row["sunset"] or ""))
    return table


def estimate_line(estimate: CostEstimate) -> str:
    """One line: the figure (with its range), where it came from, and how it was reached."""
    if estimate.usd is None:
        usd = "unknown"
    elif estimate.usd_low is not None and estimate.usd_high is not None and estimate.usd_low != estimate.usd_high:
        usd = f"${estimate.usd:.4f} (${estimate.usd_low:.4f}–${estimate.usd_high:.4f})"
    else:
        usd = f"${estimate.usd:.4f}"
    tokens = f" for {estimate.billable_tokens:,} billable tokens" if estimate.billable_tokens is not None else ""
    origin = "from the service" if estimate.authoritative else "estimated locally"
    return f"[bold]{usd}[/]{tokens} on {estimate.provider} ({origin}): {escape(estimate.basis)}"


def job_table(records: list[JobRecord]) -> Table:
    """Jobs, one row each."""
    table = Table(title="Jobs")
    for col in ("job", "provider", "base model", "status", "tuned model", "service's bill", "created"):
        table.add_column(col, overflow="fold")
    for r in records:
        style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(r.status.value, "")
        table.add_row(r.job_id, r.provider, r.base_model,
                      f"[{style}]{r.status.value}[/]" if style else r.status.value, r.tuned_model or "",
                      "" if r.billed_usd is None else f"${r.billed_usd:.4f}",
                      r.created_at.isoformat(timespec="seconds") if r.created_at else "")
    return table


def cost_lines(costs: list[CostRow]) -> list[str]:
    """One line per cost row: kind, dollars (with a range), and how it was reached."""
    lines = []
    for c in costs:
        usd = "unknown" if c.usd is None else f"${c.usd:.4f}"
        if c.usd_low is not None and c.usd_high is not None and c.usd_low != c.usd_high:
            usd += f" (${c.usd_low:.4f}–${c.usd_high:.4f})"
        source = f" [dim]({escape(c.price_source)})[/]" if c.price_source else ""
        lines.append(f"{c.kind}: {usd} — {escape(c.basis)}{source}")
    return lines


def events_table(job_id: str, events: list[JobEvent]) -> Table:
    """A job's events with their metrics."""
    table = Table(title=f"Events of {job_id}")
    for col in ("time", "level", "step", "train loss", "valid loss", "message"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(e.time.isoformat(timespec="seconds"), e.level, "" if e.step is None else str(e.step),
                      "" if e.train_loss is None else f"{e.train_loss:.4f}",
                      "" if e.valid_loss is None else f"{e.valid_loss:.4f}", escape(e.message))
    return table


def deployment_table(deployments: list[Deployment]) -> Table:
    """Deployments, one row each, with what they cost by the hour."""
    table = Table(title="Deployments")
    for col in ("deployment", "provider", "model", "state", "hardware", "USD/hour", "created"):
        table.add_column(col, overflow="fold")
    for d in deployments:
        table.add_row(d.deployment_id, d.provider, d.model, d.state, d.hardware or "",
                      "" if d.usd_per_hour is None else f"{d.usd_per_hour:.2f}",
                      d.created_at.isoformat(timespec="seconds") if d.created_at else "")
    return table
