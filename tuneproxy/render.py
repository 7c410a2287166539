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
from tuneproxy.spend import SpendReport


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


def _usd(value: float) -> str:
    # cents once it is a dollar or more; a fraction of one (an evaluation's answers) keeps four places
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def spend_table(report: SpendReport) -> Table:
    """Dollars per group and kind of charge, with a total; 80 columns wide at most. A group with a deployment
    still billing is marked ``*``; ``unknown`` counts charges whose dollars are not in the sums."""
    heading = {"month": "month (UTC)"}.get(report.by, report.by)
    window = f"since {report.since.isoformat()}" if report.since else "all time"
    table = Table(title=f"Costs by {report.by}, {window}")
    table.add_column(heading, max_width=18, overflow="fold")
    for col in ("training", "serving", "eval", "total"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("unknown", justify="right")
    rows = [(escape(g.key) if g.key is not None else f"(no {report.by})", g) for g in report.groups]
    rows.append(("[bold]total[/]", report.total))
    for number, (name, sums) in enumerate(rows):
        if number == len(rows) - 1:
            table.add_section()
        table.add_row(name + (" *" if sums.running else ""),
                      *(_usd(v) if v else "-" for v in (sums.training_usd, sums.deployment_usd, sums.inference_usd)),
                      # nothing known, only unknown: not $0
                      "unknown" if sums.unknown and not sums.total_usd else _usd(sums.total_usd),
                      str(sums.unknown) if sums.unknown else "")
    return table


def estimate_vs_bill_table(report: SpendReport) -> Table:
    """Each billed job's last estimate (with its range) against its bill, and the error in percent."""
    table = Table(title="Estimate vs bill, per job")
    table.add_column("job", max_width=22, overflow="fold")
    for col in ("estimate", "range", "billed", "error"):
        table.add_column(col, justify="right", overflow="fold")
    for job in report.jobs:
        low, high = job.estimate_low_usd, job.estimate_high_usd
        table.add_row(escape(job.job_id), "-" if job.estimate_usd is None else _usd(job.estimate_usd),
                      f"{_usd(low)}–{_usd(high)}" if low is not None and high is not None and low != high else "",
                      "unknown" if job.billed_usd is None else _usd(job.billed_usd),
                      "" if job.error_pct is None else f"{job.error_pct:+.1f}%")
    return table


def spend_notes(report: SpendReport) -> list[str]:
    """What the tables leave to words: each deployment still billing, the charges of unknown amount, and how
    deployment hours are counted."""
    lines = []
    for d in report.deployments:
        if d.running:
            rate = "price unknown" if d.usd_per_hour is None else f"{_usd(d.usd_per_hour)}/hour"
            lines.append(f"* Deployment {escape(d.deployment_id)} on {d.provider} is still billing ({rate}): counted "
                         f"up to now, {d.hours:,.1f} hours. Stop it with `tuneproxy deployments delete "
                         f"{escape(d.deployment_id)}`.")
    if report.unknown:
        named = ", ".join(f"{u.kind} {escape(u.name)}" for u in report.unknown[:5])
        more = f" and {len(report.unknown) - 5} more" if len(report.unknown) > 5 else ""
        count = "1 charge is" if len(report.unknown) == 1 else f"{len(report.unknown)} charges are"
        lines.append(f"{count} of unknown amount, not counted in the sums: {named}{more} (--json says why).")
    if report.deployments:
        lines.append("Deployments are counted by the hour from creation until the ledger saw them stopped.")
    return lines


def desk_table(desk: Any) -> Table:
    """The cost desk: one row per backend, cheapest first; figures from each backend's estimate."""
    title = f"{desk.model or 'each backend’s default model'}: {desk.examples:,} examples, {desk.total_tokens:,} tokens"
    table = Table(title=title)
    for col in ("backend", "model", "training (USD)", "time", "serving", "notes"):
        table.add_column(col, overflow="fold")
    for row in desk.rows:
        estimate = row.estimate
        if estimate is None:
            table.add_row(row.provider, row.portable or row.model, "[red]unknown[/]", "", "", escape(row.error or ""))
            continue
        usd = "unknown" if estimate.usd is None else f"{estimate.usd:.2f}"
        if estimate.usd_low is not None and estimate.usd_high is not None and estimate.usd_low != estimate.usd_high:
            usd += f"\n({estimate.usd_low:.2f}–{estimate.usd_high:.2f})"
        if row.rate:
            usd += f"\n[dim]{escape(row.rate)}[/]"
        bound = "" if row.exact else f" ±{row.error_bound:.0%}"
        tokens = f"{row.billable_tokens:,} tokens{bound}" if row.billable_tokens is not None else ""
        notes = [*row.problems, *([tokens] if tokens else []),
                 *([estimate.requirements] if estimate.requirements else []),
                 *([estimate.assumed_band] if estimate.assumed_band else []), *([row.error] if row.error else [])]
        if estimate.stale:
            notes.append("[yellow]price over 90 days old[/]")
        table.add_row(row.provider, row.portable or row.model, usd, duration(estimate.wall_time_s),
                      escape(row.serving.describe()) if row.serving else "",
                      "; ".join(n if n.startswith("[yellow]") else escape(n) for n in notes))
    return table


def duration(seconds: float | None) -> str:
    """``42 min``, ``3.5 h``, ``2 d``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def models_table(rows: list[Any]) -> Table:
    """Portable model names × backends: the id, training and serving prices, training context."""
    table = Table(title="Models (portable name → each backend's id)")
    for col in ("name", "backend", "id", "training /1M", "serving", "context"):
        table.add_column(col, overflow="fold")
    for row in rows:
        name = row.name + ("" if row.verified else " [yellow](unverified id)[/]")
        table.add_row(name, row.provider + (" [dim](default)[/]" if row.default else ""), row.model_id,
                      row.training or "not per token", escape(row.serving), f"{row.context:,}" if row.context else "")
    return table
