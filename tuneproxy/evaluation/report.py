"""An :class:`EvalReport` made readable: the plain verdict lines a script prints, rich tables for a terminal,
the JSON of the documented schema, GitHub Markdown, and one self-contained HTML file whose charts are inline
SVG drawn here — no script, no font, no stylesheet or image from elsewhere, so it opens offline, anywhere.

Every text that reaches HTML or Markdown is escaped: answers are model output and may hold markup."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tuneproxy.evaluation.model import OVERALL, Comparison, EvalReport, Flip, LossPoint, SliceResult

VERDICT_STYLES = {"better": "green", "worse": "bold red", "no significant difference": "",
                  "too few examples": "yellow"}
COMPARISON_COLUMNS = ("vs", "difference [95%]", "p", "Holm p", "flips won / lost", "verdict")
PALETTE_SIZE = 6  # system colours cycle through the stylesheet's classes s0 … s5

# ---------------------------------------------------------------------------------------------------------
# Numbers as every rendering writes them


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _difference(comparison: Comparison) -> str:
    d = comparison.difference
    return "-" if d is None else f"{d.estimate:+.1f} [{d.low:+.1f}, {d.high:+.1f}]"


def _percent(value: float | None) -> str:
    """A figure in [0, 1] as a percentage."""
    return "-" if value is None else f"{value * 100:.1f}%"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _flips(comparison: Comparison) -> str:
    """Items won and lost; a graded scorer (no McNemar test) has no pass/fail to flip."""
    if comparison.mcnemar_p is None and not comparison.wins and not comparison.losses:
        return "-"
    return f"+{comparison.wins} / -{comparison.losses}"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if 0 < value < 0.01 else f"${value:,.2f}"


def _date(report: EvalReport) -> str:
    when = report.created_at
    zone = when.tzname()
    return when.strftime("%Y-%m-%d %H:%M") + (f" {zone}" if zone else "")


def _heading(report: EvalReport) -> list[str]:
    """The facts a report opens with, one short phrase each."""
    parts = [f"candidate {report.candidate}"]
    if report.job_id:
        parts.append(f"job {report.job_id}")
    parts.append(f"{report.items:,} items")
    if report.slice_by:
        parts.append(f"sliced by {report.slice_by}")
    parts.append(_date(report))
    return parts


# ---------------------------------------------------------------------------------------------------------
# The table every rendering shares: per scorer, one row per slice and comparison


def _system_names(report: EvalReport) -> list[str]:
    return [s.name for s in report.systems]


def _results(report: EvalReport, scorer: str) -> list[SliceResult]:
    return [r for r in report.results if r.scorer == scorer]


def _columns(report: EvalReport) -> list[str]:
    return ["slice", "n", *_system_names(report), *COMPARISON_COLUMNS]


def _rows(report: EvalReport, scorer: str) -> Iterator[tuple[list[str], Comparison | None]]:
    """The cells of each row and the comparison it shows; a slice's name and means head its first row only."""
    names = _system_names(report)
    for result in _results(report, scorer):
        head = [result.slice, f"{result.n:,}", *(_points(result.means.get(n)) for n in names)]
        if not result.comparisons:
            yield [*head, *(["-"] * len(COMPARISON_COLUMNS))], None
        for i, comparison in enumerate(result.comparisons):
            cells = [comparison.baseline, _difference(comparison), _p(comparison.mcnemar_p),
                     _p(comparison.holm_p), _flips(comparison), comparison.verdict]
            yield [*(head if i == 0 else [""] * len(head)), *cells], comparison


# ---------------------------------------------------------------------------------------------------------
# Dataset-level figures (macro-F1, per-field F1): per scorer, one row per figure, one column per system

HEADLINE_FIGURES = ("accuracy", "micro_f1", "macro_f1")
PER_FIELD_SCORER = "json_fields"  # its per-field F1 are headline figures; a label's P/R/F1 are detail
AGGREGATES_NOTE = ("Over every item, not per slice, in percent; a missing answer counts as wrong. Macro-F1 "
                   "weighs every label (or field) the same however rare it is, so a system that ignores a rare "
                   "label loses here what its accuracy hides.")


def _headline(scorer: str, figure: str) -> bool:
    return figure in HEADLINE_FIGURES or (scorer == PER_FIELD_SCORER and figure.startswith("f1["))


def _aggregate_table(report: EvalReport, scorer: str, headline_only: bool) -> tuple[list[str], list[list[str]]]:
    """The columns and rows of a scorer's figures: every figure any system has, in the scorer's order, or
    only the headline ones (all of them, for a scorer that has none of those)."""
    by_system = report.aggregates.get(scorer, {})
    figures = list(dict.fromkeys(name for found in by_system.values() for name in found))
    if headline_only:
        figures = [f for f in figures if _headline(scorer, f)] or figures
    rows = [[figure, *(_percent(found.get(figure)) for found in by_system.values())] for figure in figures]
    return ["figure", *by_system], rows


# ---------------------------------------------------------------------------------------------------------
# The pairwise judge: per baseline and slice, how often it preferred the candidate's answer


def _pairwise_columns(report: EvalReport) -> list[str]:
    return ["slice", "vs", "judged", f"{report.candidate} wins", "ties", "baseline wins", "win rate",
            "not judged"]


def _pairwise_rows(report: EvalReport) -> list[list[str]]:
    return [[r.slice, r.baseline, f"{r.n:,}", f"{r.wins:,}", f"{r.ties:,}", f"{r.losses:,}", _points(r.win_rate),
             f"{r.unjudged:,}"] for r in report.pairwise]


def _pairwise_note(report: EvalReport) -> str:
    criteria = "; ".join(dict.fromkeys(r.criteria for r in report.pairwise))
    return ("Each pair is judged twice, the answers swapped; a win needs both orders to agree, any disagreement "
            f"is a tie. Win rate = (wins + ties / 2) / judged, in points. The judge's criteria: {criteria}")


def _verdict_of_line(report: EvalReport) -> dict[str, str]:
    """Each verdict line's verdict, so a line can be styled by what it says without parsing it."""
    return {c.line: c.verdict for r in report.results for c in r.comparisons}


# ---------------------------------------------------------------------------------------------------------
# Plain text, terminal, JSON, Markdown


def summary(report: EvalReport) -> str:
    """The verdict lines, the pairwise judge's lines, then the warnings: what a script prints."""
    return "\n".join([*report.verdicts, *(r.line for r in report.pairwise),
                      *(f"warning: {w}" for w in report.warnings)])


TERMINAL_COMPARISON_COLUMNS = ("slice", "vs", "difference [95%]", "Holm p", "flips", "verdict")
SHORT_VERDICTS = {"no significant difference": "n.s.", "too few examples": "too few"}  # 80 columns


def terminal(report: EvalReport, console: Console) -> None:
    """Per scorer two narrow tables (they fit 80 columns): the means of slices × systems, then each
    comparison with a baseline; its headline dataset-level figures; then the verdicts, the pairwise judge's
    counts, the systems and the warnings."""
    console.print(Text("Evaluation: " + " · ".join(_heading(report)), style="bold"))
    names = _system_names(report)
    for scorer in report.scorers:
        means = Table(title=Text(f"{scorer}: mean points per system"))
        for column in ("slice", "n", *names):
            means.add_column(column, justify="left" if column == "slice" else "right")
        comparisons = Table(title=Text(f"{scorer}: {report.candidate} − baseline, in points"))
        for column in TERMINAL_COMPARISON_COLUMNS:
            comparisons.add_column(column, justify="left" if column in ("slice", "vs", "verdict") else "right",
                                   no_wrap=column in ("vs", "difference [95%]", "flips"))  # reads whole
        for result in _results(report, scorer):
            means.add_row(*(Text(c) for c in (result.slice, f"{result.n:,}",
                                               *(_points(result.means.get(n)) for n in names))))
            for i, c in enumerate(result.comparisons):
                comparisons.add_row(*(Text(cell) for cell in (result.slice if i == 0 else "", c.baseline,
                                                              _difference(c), _p(c.holm_p), _flips(c))),
                                    Text(SHORT_VERDICTS.get(c.verdict, c.verdict), style=VERDICT_STYLES[c.verdict]))
        console.print(means)
        if comparisons.row_count:
            console.print(comparisons)
            console.print(Text("n.s.: no significant difference; too few: under the slice size that can be "
                               "compared", style="dim"))
        if report.aggregates.get(scorer):
            console.print(_figures_table(report, scorer))
    verdict_of = _verdict_of_line(report)
    if report.verdicts:
        console.print(Text("Verdicts", style="bold"))
    for line in report.verdicts:
        console.print(Text(line, style=VERDICT_STYLES.get(verdict_of.get(line, ""), "")))
    if report.pairwise:
        console.print(_pairwise_table(report))
        console.print(Text(_pairwise_note(report), style="dim"))
    console.print(_systems_table(report))
    for warning in report.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))


def _figures_table(report: EvalReport, scorer: str) -> Table:
    columns, rows = _aggregate_table(report, scorer, headline_only=True)
    table = Table(title=Text(f"{scorer} (%, all items)"))
    for column in columns:
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    return table


def _pairwise_table(report: EvalReport) -> Table:
    """The pairwise rows without 'not judged' (the lines and warnings say it), so the table fits 80 columns."""
    table = Table(title=Text(f"Pairwise judge: {report.candidate} against each baseline"))
    for column in _pairwise_columns(report)[:-1]:
        table.add_column(column, justify="left" if column in ("slice", "vs") else "right", no_wrap=column == "vs")
    for row in _pairwise_rows(report):
        table.add_row(*(Text(c) for c in row[:-1]))
    return table


def _systems_table(report: EvalReport) -> Table:
    table = Table(title="Systems")
    for column in ("system", "model", "kind", "answered", "failed", "cost", "per 1,000 answers"):
        table.add_column(column, justify="right" if column in ("answered", "failed", "cost",
                                                               "per 1,000 answers") else "left",
                         overflow="fold")  # a long model name wraps rather than losing its end
    for s in report.systems:
        table.add_row(*(Text(c) for c in (s.name, s.model, s.kind, f"{s.answered:,}", f"{s.failed:,}",
                                          _usd(s.cost_usd), _usd(s.cost_per_1000))))
    return table


def to_json(report: EvalReport) -> str:
    """The report as JSON; its schema is :func:`schema_json` (documented in docs/eval-report.md)."""
    return report.model_dump_json(indent=2)


def schema_json() -> str:
    """The JSON schema of :func:`to_json`'s output, as docs/eval-report.md prints it."""
    return json.dumps(EvalReport.model_json_schema(), indent=2)


def _md(text: str) -> str:
    """A Markdown table cell: pipes and markup escaped, lines joined, so model output cannot break the table."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(c) for c in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def to_markdown(report: EvalReport) -> str:
    """The terminal's tables in GitHub Markdown (every dataset-level figure, not only the headline ones), plus
    the flips with both answers (truncated)."""
    out = [f"# Evaluation of {_md(report.candidate)}", "", _md(" · ".join(_heading(report))), ""]
    if report.verdicts:
        out += ["## Verdicts", "", *(f"- {_md(line)}" for line in report.verdicts), ""]
    if report.pairwise:
        out += ["## Pairwise judge", "", _md(_pairwise_note(report)), "",
                *_md_table(_pairwise_columns(report), _pairwise_rows(report)), ""]
    for scorer in report.scorers:
        out += [f"## {_md(scorer)}", "",
                f"Mean points per system; difference = {_md(report.candidate)} − baseline, with its 95% interval.",
                "", *_md_table(_columns(report), [cells for cells, _ in _rows(report, scorer)]), ""]
        if report.aggregates.get(scorer):
            out += [f"### {_md(scorer)}: dataset-level figures", "", AGGREGATES_NOTE, "",
                    *_md_table(*_aggregate_table(report, scorer, headline_only=False)), ""]
    out += ["## Systems", "", *_md_table(
        ("system", "model", "kind", "answered", "failed", "cost", "per 1,000 answers"),
        [(s.name, s.model, s.kind, f"{s.answered:,}", f"{s.failed:,}", _usd(s.cost_usd), _usd(s.cost_per_1000))
         for s in report.systems]), ""]
    if report.flips:
        out += ["## Flips", "", *_md_table(
            ("item", "slice", "scorer", "change", "baseline answer", "candidate answer"),
            [(f.item_id, f.slice or "", f.scorer, f"{f.direction} vs {f.baseline}",
              _clip(f.baseline_answer), _clip(f.candidate_answer)) for f in _ordered_flips(report)]), ""]
    if report.warnings:
        out += ["## Warnings", "", *(f"- {_md(w)}" for w in report.warnings), ""]
    return "\n".join(out)


def _clip(answer: str | None, limit: int = 200) -> str:
    if answer is None:
        return "(no answer)"
    return answer if len(answer) <= limit else answer[:limit - 1] + "…"


def _ordered_flips(report: EvalReport) -> list[Flip]:
    """Regressions first: they are what a reader has to look at."""
    return sorted(report.flips, key=lambda f: f.direction != "regressed")


# ---------------------------------------------------------------------------------------------------------
# HTML: one file, inline CSS, charts as inline SVG

CSS = """
:root { --ink: #1b1f24; --muted: #59636e; --rule: #d0d7de; --paper: #ffffff; --tint: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: var(--paper); margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 1px solid
var(--rule); padding-bottom: 4px; } h3 { font-size: 16px; margin: 20px 0 6px; }
.facts { color: var(--muted); margin: 0; } .facts dt { display: inline; font-weight: 600; }
.facts dd { display: inline; margin: 0 16px 0 4px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid var(--rule); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--tint); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdicts li { margin: 2px 0; } .verdict-worse { color: #b42318; font-weight: 600; }
.verdict-better { color: #1a7f37; } .verdict-too-few-examples { color: #9a6700; }
.verdict-worse::before { content: "▼ "; } .verdict-better::before { content: "▲ "; }
.warnings li { color: #9a6700; } .note { color: var(--muted); font-style: italic; }
figure { margin: 12px 0; } figcaption { color: var(--muted); font-size: 13px; }
svg { max-width: 100%; height: auto; font: 12px system-ui, sans-serif; }
svg text { fill: var(--ink); } svg .axis { stroke: #8c959f; stroke-width: 1; }
svg .grid { stroke: #eaeef2; stroke-width: 1; } svg .zero { stroke: var(--ink); stroke-width: 1.5; }
svg .whisker { stroke: var(--ink); stroke-width: 2; } svg .estimate { stroke: var(--paper); stroke-width: 1; }
svg .slice-label { font-weight: 600; } svg .muted { fill: var(--muted); }
.s0 { fill: #0969da; stroke: #0969da; } .s1 { fill: #8c959f; stroke: #8c959f; }
.s2 { fill: #bc4c00; stroke: #bc4c00; } .s3 { fill: #8250df; stroke: #8250df; }
.s4 { fill: #1a7f37; stroke: #1a7f37; } .s5 { fill: #bf3989; stroke: #bf3989; }
svg .worse { fill: #b42318; } svg .better { fill: #1a7f37; } svg .neutral { fill: #59636e; }
svg .train { fill: none; stroke: #0969da; stroke-width: 2; }
svg .valid { fill: none; stroke: #bc4c00; stroke-width: 2; stroke-dasharray: 6 4; }
svg .train-point { fill: #0969da; } svg .valid-point { fill: #bc4c00; }
.flips td { max-width: 320px; } .flips pre { white-space: pre-wrap; word-break: break-word; margin: 0;
font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.regressed { border-left: 4px solid #b42318; } .improved { border-left: 4px solid #1a7f37; }
"""

WIDTH = 760  # every chart's width in SVG units; it scales down with the page


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _n(value: float) -> str:
    """An SVG coordinate."""
    return f"{value:.1f}"


def _css_class(verdict: str) -> str:
    return "verdict-" + verdict.replace(" ", "-")


class _Svg:
    """One accessible chart: role="img", a <title> and a <desc> that says in words what the chart shows."""

    def __init__(self, chart: str, key: str, height: float, title: str, description: str) -> None:
        self.chart, self.key, self.height = chart, key, height
        self.title, self.description = title, description
        self.parts: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, content: str, anchor: str = "start", css: str = "") -> None:
        attributes = f' class="{css}"' if css else ""
        self.add(f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{attributes}>{_e(content)}</text>')

    def line(self, x1: float, y1: float, x2: float, y2: float, css: str) -> None:
        self.add(f'<line class="{css}" x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}"/>')

    def render(self) -> str:
        ident = f"chart-{self.chart}-{self.key}"
        return (f'<svg class="chart" data-chart="{_e(self.chart)}" role="img" '
                f'aria-labelledby="{_e(ident)}-title {_e(ident)}-desc" viewBox="0 0 {WIDTH} {_n(self.height)}" '
                f'width="{WIDTH}" height="{_n(self.height)}">'
                f'<title id="{_e(ident)}-title">{_e(self.title)}</title>'
                f'<desc id="{_e(ident)}-desc">{_e(self.description)}</desc>' + "".join(self.parts) + "</svg>")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()) or "x"


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k at or above value: an axis end easy to halve."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * power >= value * (1 - 1e-9))


def _means_chart(report: EvalReport, scorer: str) -> str:
    """Horizontal bars: for each slice, one bar per system, its mean labelled at the end."""
    names = _system_names(report)
    results = _results(report, scorer)
    left, bar_width, row, top = 150.0, 470.0, 18.0, 28.0
    height = top + sum(row * (1 + len(r.means)) + 10 for r in results) + 24
    svg = _Svg("means", _slug(scorer), height, f"{scorer}: mean score per slice and system",
               f"Bars of each system's mean {scorer} score (0 to 100 points) in each slice; " + "; ".join(
                   f"{r.slice}: " + ", ".join(f"{n} {r.means[n]:.1f}" for n in names if n in r.means)
                   for r in results) + ".")
    for tick in (0, 25, 50, 75, 100):
        x = left + bar_width * tick / 100
        svg.line(x, top - 6, x, height - 22, "grid")
        svg.text(x, height - 8, str(tick), "middle", "muted")
    y = top
    for result in results:
        svg.text(8, y + 13, f"{result.slice} (n={result.n:,})", css="slice-label")
        y += row
        for index, name in enumerate(names):
            if name not in result.means:
                continue
            mean = result.means[name]
            svg.text(left - 8, y + 13, name, "end")
            svg.add(f'<rect class="bar s{index % PALETTE_SIZE}" x="{_n(left)}" y="{_n(y + 3)}" '
                    f'width="{_n(bar_width * max(0.0, min(mean, 100.0)) / 100)}" height="{_n(row - 6)}">'
                    f"<title>{_e(f'{result.slice} · {name}: {mean:.1f}')}</title></rect>")
            svg.text(left + bar_width * max(0.0, min(mean, 100.0)) / 100 + 6, y + 13, f"{mean:.1f}")
            y += row
        y += 10
    svg.line(left, top - 6, left, height - 22, "axis")
    return svg.render()


def _difference_chart(report: EvalReport, scorer: str) -> str:
    """For each slice and baseline: the difference candidate − baseline, a whisker over its 95% interval, and
    the zero line — a whisker clear of zero is a difference the data can tell apart."""
    results = _results(report, scorer)
    intervals = [c.difference for r in results for c in r.comparisons if c.difference is not None]
    reach = _nice_ceiling(max([10.0, *(max(abs(d.low), abs(d.high)) for d in intervals)]))
    left, span, row, top = 150.0, 300.0, 20.0, 28.0
    height = top + sum(row * (1 + len(r.comparisons)) + 10 for r in results) + 24

    def x_of(points: float) -> float:
        return left + span * (points + reach) / (2 * reach)

    svg = _Svg("difference", _slug(scorer), height,
               f"{scorer}: difference {report.candidate} − baseline per slice, with 95% intervals",
               f"For each slice and baseline, {report.candidate}'s mean {scorer} minus the baseline's, in points, "
               "with its 95% interval; " + "; ".join(
                   f"{r.slice} vs {c.baseline}: " + (f"{_difference(c)}, {c.verdict}" if c.difference else
                                                     c.verdict) for r in results for c in r.comparisons) + ".")
    for tick in (-reach, -reach / 2, 0.0, reach / 2, reach):
        svg.line(x_of(tick), top - 6, x_of(tick), height - 22, "zero" if tick == 0 else "grid")
        svg.text(x_of(tick), height - 8, f"{tick:+g}" if tick else "0", "middle", "muted")
    y = top
    for result in results:
        svg.text(8, y + 14, f"{result.slice} (n={result.n:,})", css="slice-label")
        y += row
        for comparison in result.comparisons:
            svg.text(left - 8, y + 14, f"vs {comparison.baseline}", "end")
            d = comparison.difference
            if d is None:
                svg.text(x_of(0) + 8, y + 14, comparison.verdict, css="muted")
            else:
                mid = y + row / 2
                tone = {"better": "better", "worse": "worse"}.get(comparison.verdict, "neutral")
                label = f"{result.slice} vs {comparison.baseline}: {_difference(comparison)}, {comparison.verdict}"
                svg.add(f'<g class="comparison {_css_class(comparison.verdict)}"><title>{_e(label)}</title>')
                svg.line(x_of(d.low), mid, x_of(d.high), mid, "whisker")
                svg.line(x_of(d.low), mid - 5, x_of(d.low), mid + 5, "whisker")
                svg.line(x_of(d.high), mid - 5, x_of(d.high), mid + 5, "whisker")
                svg.add(f'<circle class="estimate {tone}" cx="{_n(x_of(d.estimate))}" cy="{_n(mid)}" r="5"/>'
                        "</g>")
                svg.text(left + span + 12, y + 14, f"{_difference(comparison)} {comparison.verdict}")
            y += row
        y += 10
    return svg.render()


def _loss_chart(curve: Sequence[LossPoint]) -> str:
    """Training loss (solid) and validation loss (dashed) over the steps, each point marked."""
    series: dict[str, list[tuple[int, float]]] = {
        "train": [(p.step, p.train_loss) for p in curve if p.train_loss is not None],
        "valid": [(p.step, p.valid_loss) for p in curve if p.valid_loss is not None]}
    points = [point for values in series.values() for point in values]
    first, last = min(step for step, _ in points), max(step for step, _ in points)
    if first == last:
        first, last = first - 1, last + 1
    ceiling = _nice_ceiling(max(loss for _, loss in points))
    left, right, top, bottom, height = 60.0, WIDTH - 20.0, 34.0, 260.0, 290.0

    def at(step: int, loss: float) -> tuple[float, float]:
        return (left + (right - left) * (step - first) / (last - first), bottom - (bottom - top) * loss / ceiling)

    names = {"train": "training loss", "valid": "validation loss"}
    svg = _Svg("loss", "curve", height, "Training and validation loss by step",
               "; ".join(f"{names[k]}: {len(v)} points, from {v[0][1]:.3f} at step {v[0][0]} to {v[-1][1]:.3f} at "
                         f"step {v[-1][0]}" for k, v in series.items() if v) + ".")
    for i in range(5):
        loss = ceiling * i / 4
        _, y = at(first, loss)
        svg.line(left, y, right, y, "grid")
        svg.text(left - 6, y + 4, f"{loss:.2f}", "end", "muted")
    for i in range(5):
        step = round(first + (last - first) * i / 4)
        x, _ = at(step, 0)
        svg.text(x, bottom + 16, str(step), "middle", "muted")
    svg.line(left, bottom, right, bottom, "axis")
    svg.line(left, top, left, bottom, "axis")
    svg.text((left + right) / 2, height - 2, "step", "middle", "muted")
    legend_x = left + 10
    for kind, values in series.items():
        if not values:
            continue
        coordinates = [at(step, loss) for step, loss in values]
        svg.add(f'<polyline class="{kind}" points="{" ".join(f"{_n(x)},{_n(y)}" for x, y in coordinates)}"/>')
        for (step, loss), (x, y) in zip(values, coordinates):
            svg.add(f'<circle class="{kind}-point" cx="{_n(x)}" cy="{_n(y)}" r="3">'
                    f"<title>{_e(f'step {step}: {names[kind]} {loss:.3f}')}</title></circle>")
        svg.line(legend_x, 14, legend_x + 28, 14, kind)
        svg.text(legend_x + 34, 18, names[kind] + (" (solid)" if kind == "train" else " (dashed)"))
        legend_x += 200
    return svg.render()


def _overall_mean(report: EvalReport, scorer: str, system: str) -> float | None:
    return next((r.means.get(system) for r in _results(report, scorer) if r.slice == OVERALL), None)


def _cost_quality_chart(report: EvalReport, plotted: Sequence[tuple[int, str, float, float]]) -> str:
    """One labelled point per system: cost per 1,000 answers across, the primary scorer's mean up."""
    scorer = report.scorers[0]
    left, right, top, bottom, height = 60.0, WIDTH - 160.0, 20.0, 270.0, 310.0
    ceiling = _nice_ceiling(max(cost for _, _, cost, _ in plotted))

    def at(cost: float, mean: float) -> tuple[float, float]:
        return left + (right - left) * cost / ceiling, bottom - (bottom - top) * mean / 100

    svg = _Svg("cost-quality", _slug(scorer), height, f"Cost per 1,000 answers against mean {scorer}",
               "; ".join(f"{name}: {_usd(cost)} per 1,000 answers, {mean:.1f} points"
                         for _, name, cost, mean in plotted) + ".")
    for i in range(5):
        _, y = at(0, 25 * i)
        svg.line(left, y, right, y, "grid")
        svg.text(left - 6, y + 4, str(25 * i), "end", "muted")
        x, _ = at(ceiling * i / 4, 0)
        svg.text(x, bottom + 16, _usd(ceiling * i / 4), "middle", "muted")
    svg.line(left, bottom, right, bottom, "axis")
    svg.line(left, top, left, bottom, "axis")
    svg.text((left + right) / 2, height - 2, "USD per 1,000 answers", "middle", "muted")
    svg.add(f'<text x="14" y="{_n((top + bottom) / 2)}" text-anchor="middle" class="muted" '
            f'transform="rotate(-90 14 {_n((top + bottom) / 2)})">{_e(scorer)} (points)</text>')
    for index, name, cost, mean in plotted:
        x, y = at(cost, mean)
        svg.add(f'<circle class="system-point s{index % PALETTE_SIZE}" cx="{_n(x)}" cy="{_n(y)}" r="6">'
                f"<title>{_e(f'{name}: {_usd(cost)} per 1,000 answers, {mean:.1f} points')}</title></circle>")
        svg.text(x + 10, y + 4, f"{name} ({_usd(cost)}, {mean:.1f})")
    return svg.render()


def _html_table(columns: Sequence[str], rows: Iterator[tuple[list[str], str]], numeric: set[int]) -> str:
    """A table whose numeric columns align right; each row's second value is a class for its last cell."""
    def cell(i: int, text: str, last_class: str) -> str:
        classes = " ".join(c for c in ("num" if i in numeric else "", last_class if i == len(columns) - 1 else "")
                           if c)
        return f'<td class="{classes}">{_e(text)}</td>' if classes else f"<td>{_e(text)}</td>"

    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(cell(i, text, css) for i, text in enumerate(cells)) + "</tr>"
                   for cells, css in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _scorer_section(report: EvalReport, scorer: str) -> str:
    columns = _columns(report)
    numeric = {i for i, c in enumerate(columns) if c not in ("slice", "vs", "verdict", "flips won / lost")}
    rows = ((cells, _css_class(c.verdict) if c else "") for cells, c in _rows(report, scorer))
    return (f'<section class="scorer" id="scorer-{_e(_slug(scorer))}"><h2>{_e(scorer)}</h2>'
            f"<p>Mean points per system; difference = {_e(report.candidate)} − baseline with its paired-bootstrap "
            "95% interval; p is the exact McNemar test (pass/fail scorers), Holm p the p-value verdicts use, "
            "corrected across slices.</p>" + _html_table(columns, rows, numeric) + _figures_html(report, scorer) +
            f"<figure>{_means_chart(report, scorer)}<figcaption>Mean {_e(scorer)} per slice and system."
            f"</figcaption></figure><figure>{_difference_chart(report, scorer)}<figcaption>Difference "
            f"{_e(report.candidate)} − baseline; the whisker is the 95% interval, the dark line is zero."
            "</figcaption></figure></section>")


def _figures_html(report: EvalReport, scorer: str) -> str:
    """Every dataset-level figure of the scorer, one row each, a column per system ('' when it has none)."""
    if not report.aggregates.get(scorer):
        return ""
    columns, rows = _aggregate_table(report, scorer, headline_only=False)
    return (f'<div class="figures"><h3>{_e(scorer)}: dataset-level figures</h3><p>{_e(AGGREGATES_NOTE)}</p>'
            + _html_table(columns, ((row, "") for row in rows), set(range(1, len(columns)))) + "</div>")


def _loss_section(report: EvalReport) -> str:
    has_points = any(p.train_loss is not None or p.valid_loss is not None for p in report.loss_curve)
    body = (f"<figure>{_loss_chart(report.loss_curve)}<figcaption>Loss reported by the training job."
            "</figcaption></figure>" if has_points else
            '<p class="note">No loss curve: the job reported no losses (a baseline-only evaluation, or a '
            "service that does not report them).</p>")
    return f'<section id="loss"><h2>Training and validation loss</h2>{body}</section>'


def _cost_section(report: EvalReport) -> str:
    scorer = report.scorers[0] if report.scorers else None
    plotted: list[tuple[int, str, float, float]] = []
    left_out: list[str] = []
    for index, system in enumerate(report.systems):
        mean = _overall_mean(report, scorer, system.name) if scorer else None
        if system.cost_per_1000 is None:
            left_out.append(f"{system.name} (no price for its answers)")
        elif mean is None:
            left_out.append(f"{system.name} (no overall {scorer} mean)")
        else:
            plotted.append((index, system.name, system.cost_per_1000, mean))
    chart = (f"<figure>{_cost_quality_chart(report, plotted)}<figcaption>Up and to the left is better: more "
             "quality for less money.</figcaption></figure>" if plotted else "")
    note = f'<p class="note">Not plotted: {_e(", ".join(left_out))}.</p>' if left_out else ""
    return f'<section id="cost-quality"><h2>Cost and quality</h2>{chart}{note}</section>'


def _answer(text: str | None) -> str:
    return '<span class="note">(no answer)</span>' if text is None else f"<pre>{_e(text)}</pre>"


def _flips_section(report: EvalReport) -> str:
    if not report.flips:
        return '<section id="flips"><h2>Flips</h2><p class="note">No item changed from pass to fail or back.</p>' \
               "</section>"
    regressed = sum(f.direction == "regressed" for f in report.flips)
    rows = "".join(
        f'<tr class="{f.direction}"><td><strong>{_e(f.direction)}</strong> vs {_e(f.baseline)}<br>'
        f"{_e(f.scorer)} · {_e(f.slice or '-')}<br><small>item {_e(f.item_id)}</small></td>"
        f"<td><pre>{_e(f.prompt)}</pre><hr><small>expected</small><pre>{_e(f.reference)}</pre></td>"
        f"<td>{_answer(f.baseline_answer)}</td><td>{_answer(f.candidate_answer)}</td></tr>"
        for f in _ordered_flips(report))
    return (f'<section id="flips"><h2>Flips: {regressed} regressed, {len(report.flips) - regressed} improved</h2>'
            '<table class="flips"><thead><tr><th scope="col">change</th><th scope="col">prompt and expected '
            'answer</th><th scope="col">baseline answer</th><th scope="col">candidate answer</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></section>")


def to_html(report: EvalReport) -> str:
    """One self-contained HTML page: facts, verdicts, warnings, systems, the pairwise judge's counts,
    per-scorer tables and charts, loss curve, cost against quality, flips with both answers side by side."""
    verdict_of = _verdict_of_line(report)
    facts = [("candidate", report.candidate), ("job", report.job_id or "-"), ("items", f"{report.items:,}"),
             ("sliced by", report.slice_by or "-"), ("scorers", ", ".join(report.scorers)),
             ("date", _date(report))]
    verdicts = "".join(f'<li class="{_css_class(verdict_of[line]) if line in verdict_of else ""}">{_e(line)}</li>'
                       for line in report.verdicts)
    systems = _html_table(
        ("system", "model", "kind", "answered", "failed", "cost", "per 1,000 answers"),
        (([s.name, s.model, s.kind, f"{s.answered:,}", f"{s.failed:,}", _usd(s.cost_usd), _usd(s.cost_per_1000)],
          "") for s in report.systems), {3, 4, 5, 6})
    warnings = "".join(f"<li>{_e(w)}</li>" for w in report.warnings)
    pairwise = (f'<section id="pairwise"><h2>Pairwise judge</h2><p>{_e(_pairwise_note(report))}</p>'
                + _html_table(_pairwise_columns(report), ((row, "") for row in _pairwise_rows(report)),
                              set(range(2, 8))) + "</section>") if report.pairwise else ""
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Evaluation of {_e(report.candidate)}{' · ' + _e(report.job_id) if report.job_id else ''}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>Evaluation of {_e(report.candidate)}</h1><dl class=\"facts\">",
        "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts), "</dl></header><main>",
        f'<section id="verdicts"><h2>Verdicts</h2><ul class="verdicts">{verdicts}</ul></section>'
        if report.verdicts else "",
        f'<section id="warnings"><h2>Warnings</h2><ul class="warnings">{warnings}</ul></section>'
        if report.warnings else "",
        f'<section id="systems"><h2>Systems</h2>{systems}</section>', pairwise,
        *(_scorer_section(report, scorer) for scorer in report.scorers),
        _loss_section(report), _cost_section(report), _flips_section(report),
        "</main><footer><p class=\"note\">Written by tuneproxy. This file is self-contained: it loads nothing.</p>"
        "</footer></body></html>\n",
    ])
