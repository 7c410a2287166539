"""The report's renderings: the plain lines, the terminal and Markdown tables, the JSON and its documented
schema, and the self-contained HTML page — checked as parsed elements, and in a real browser (chromium)."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import ROOT
from tests.evaluation.sample_report import HOSTILE_ANSWER, PAIRWISE_CRITERIA, sample_report
from tuneproxy.evaluation.model import Comparison, EvalReport
from tuneproxy.evaluation.report import schema_json, summary, terminal, to_html, to_json, to_markdown

VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
REGRESSION_LINE = "security: tuned worse than few-shot:8, -18 points [-31, -4], 10 flips"
PAIRWISE_LINE = "overall: the judge prefers tuned to few-shot:8 in 61 of 178, few-shot:8 in 57, ties 60 (2 not judged)"


@pytest.fixture
def report() -> EvalReport:
    return sample_report()


class Page(HTMLParser):
    """Every element of a page with its attributes and the chart (svg data-chart) it sits in; the text outside
    tags; and whether each element that was opened was closed in order."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self.text: list[str] = []
        self.open: list[str] = []
        self.misnested: list[str] = []
        self.chart: str | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "svg":
            self.chart = attributes.get("data-chart")
        self.elements.append((tag, attributes, self.chart))
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}, self.chart))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.misnested.append(tag)
            return
        self.open.pop()
        if tag == "svg":
            self.chart = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, css: str | None = None, chart: str | None = None) -> list[dict[str, str]]:
        return [a for t, a, c in self.elements if t == tag and (css is None or css in a.get("class", "").split())
                and (chart is None or c == chart)]


@pytest.fixture
def page(report: EvalReport) -> Page:
    return Page(to_html(report))


# --- plain lines, terminal, Markdown, JSON ----------------------------------------------------------------------

def test_summary_is_the_verdict_lines_then_the_pairwise_lines_then_the_warnings(report):
    lines = summary(report).splitlines()
    verdicts, pairwise = len(report.verdicts), len(report.pairwise)
    assert lines[:verdicts] == report.verdicts
    assert REGRESSION_LINE in lines
    assert lines[verdicts:verdicts + pairwise] == [r.line for r in report.pairwise]
    assert PAIRWISE_LINE in lines
    assert lines[verdicts + pairwise:] == [f"warning: {w}" for w in report.warnings]


def test_terminal_shows_means_comparisons_verdicts_costs_and_warnings(report):
    console = Console(file=io.StringIO(), width=220, record=True)
    terminal(report, console)
    text = console.export_text()
    for line in report.verdicts:
        assert line in text
    for cell in ("71.7", "43.9", "67.8", "-17.8 [-31.1, -4.4]", "0.042", "+1 / -9", "$2.95", "$0.38"):
        assert cell in text
    assert "worse" in text and "few-shot:8: 2 items failed" in text


def test_terminal_colours_a_regression_red(report):
    console = Console(file=io.StringIO(), width=220, force_terminal=True, color_system="standard")
    terminal(report, console)
    assert "\x1b[1;31mworse" in console.file.getvalue()


def test_markdown_has_a_table_per_scorer_with_the_numbers(report):
    markdown = to_markdown(report)
    assert "## label:category" in markdown and "## json_fields" in markdown
    assert "| slice | n | tuned | base | few-shot:8 | vs | difference [95%] | p | Holm p |" in markdown
    assert "|  |  |  |  |  | few-shot:8 | -17.8 [-31.1, -4.4] | 0.021 | 0.042 | +1 / -9 | worse |" in markdown
    assert f"- {REGRESSION_LINE}" in markdown
    assert "| few-shot:8 | llama-3.1-8b-instruct | few-shot | 178 | 2 | $0.53 | $2.95 |" in markdown


def terminal_figures(report: EvalReport) -> dict[str, dict[str, list[str]]]:
    """The terminal's dataset-figure tables: scorer → figure → one cell per system."""
    console = Console(file=io.StringIO(), width=220, record=True)
    terminal(report, console)
    tables: dict[str, dict[str, list[str]]] = {}
    for line in console.export_text().splitlines():
        if line.strip().endswith("(%, all items)"):
            rows = tables.setdefault(line.strip().removesuffix(" (%, all items)"), {})
        elif line.count("│") == 5 and "figure" not in line:
            cells = [cell.strip() for cell in line.split("│")[1:-1]]
            rows[cells[0]] = cells[1:]
    return tables


def test_terminal_shows_each_scorers_headline_dataset_figures_per_system(report):
    tables = terminal_figures(report)
    assert tables["label:category"] == {"accuracy": ["71.7%", "43.9%", "67.8%"],
                                        "macro_f1": ["71.3%", "44.4%", "68.9%"]}  # per-label P/R/F1: detail
    assert tables["json_fields"] == {"micro_f1": ["83.9%", "63.6%", "81.4%"], "macro_f1": ["83.9%", "63.6%", "81.4%"],
                                     "f1[category]": ["73.1%", "45.3%", "68.7%"],
                                     "f1[action]": ["94.6%", "81.9%", "94.1%"]}


def test_terminal_shows_the_pairwise_judges_counts_per_slice_and_baseline(report):
    console = Console(file=io.StringIO(), width=220, record=True)
    terminal(report, console)
    text = console.export_text()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.count("│") == 8]
    assert ["(all)", "few-shot:8", "178", "61", "60", "57", "51.1"] in rows  # (61 + 60 / 2) / 178
    assert ["security", "base", "45", "20", "12", "13", "57.8"] in rows
    assert PAIRWISE_CRITERIA in " ".join(text.split())


def test_a_report_without_a_pairwise_judge_shows_no_pairwise_table(report):
    bare = report.model_copy(update={"pairwise": []})
    console = Console(file=io.StringIO(), width=220, record=True)
    terminal(bare, console)
    for text in (console.export_text(), to_markdown(bare), to_html(bare)):
        assert "Pairwise judge" not in text


def test_markdown_has_the_pairwise_table_with_its_criteria_escaped(report):
    markdown = to_markdown(report)
    assert "## Pairwise judge" in markdown
    assert ("| slice | vs | judged | tuned wins | ties | baseline wins | win rate | not judged |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
            "| (all) | base | 180 | 98 | 44 | 38 | 66.7 | 0 |") in markdown
    assert "| (all) | few-shot:8 | 178 | 61 | 60 | 57 | 51.1 | 2 |" in markdown
    assert "<b>" not in markdown and "&lt;b&gt;resolves&lt;/b&gt; the ticket &amp; names" in markdown


def test_markdown_has_a_table_of_every_dataset_figure_per_scorer(report):
    markdown = to_markdown(report)
    assert "### label:category: dataset-level figures" in markdown
    assert "| figure | tuned | base | few-shot:8 |" in markdown
    assert "| macro_f1 | 71.3% | 44.4% | 68.9% |" in markdown
    assert "| recall[security] | 48.9% | 35.6% | 66.7% |" in markdown  # the security slice's means
    assert "| micro_recall | 82.2% | 61.7% | 80.3% |" in markdown  # json_fields' overall means
    assert "| f1[action] | 94.6% | 81.9% | 94.1% |" in markdown


def test_a_report_without_dataset_figures_shows_no_figures_table(report):
    bare = report.model_copy(update={"aggregates": {}})
    assert "dataset-level figures" not in to_markdown(bare) and "dataset-level figures" not in to_html(bare)


def test_markdown_escapes_answers_so_they_cannot_inject_markup_or_break_a_table(report):
    report.flips[0].candidate_answer = "a | b\n<b>bold</b>"
    markdown = to_markdown(report)
    assert "<script>" not in markdown and "&lt;script&gt;alert" in markdown
    assert "a \\| b<br>&lt;b&gt;bold&lt;/b&gt;" in markdown


def test_json_reads_back_as_the_same_report(report):
    assert EvalReport.model_validate_json(to_json(report)) == report


def test_the_documented_schema_is_the_models_schema():
    doc = (ROOT / "docs" / "eval-report.md").read_text(encoding="utf-8")
    block = re.search(r"## JSON schema\n.*?```json\n(.*?)\n```", doc, re.S)
    assert block, "docs/eval-report.md has no ```json block under '## JSON schema'"
    assert json.loads(block.group(1)) == EvalReport.model_json_schema(), (
        "docs/eval-report.md is stale: replace its schema with the output of "
        "python -c 'from tuneproxy.evaluation.report import schema_json; print(schema_json())'")
    assert block.group(1) == schema_json()


# --- HTML, as parsed elements ----------------------------------------------------------------------------------

def test_html_parses_with_every_element_closed_in_order(page):
    assert page.elements[0][0] == "html"
    assert page.misnested == [] and page.open == []


def test_html_loads_nothing_from_anywhere(report, page):
    for _, attributes, _ in page.elements:
        for name in ("src", "href", "xlink:href", "srcset", "action", "poster", "data"):
            assert name not in attributes, f"an element refers to {attributes[name]!r}"
    assert page.all("script") == [] and page.all("link") == [] and page.all("iframe") == []
    markup = to_html(report)
    assert "http://" not in markup and "https://" not in markup
    assert "url(" not in markup and "@import" not in markup


def test_html_escapes_hostile_answers(report, page):
    markup = to_html(report)
    assert "<script>alert" not in markup and "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in markup
    assert page.all("img") == []
    assert HOSTILE_ANSWER in "".join(page.text)  # the reader sees the answer as text, exactly


def html_figures(markup: str) -> dict[str, dict[str, list[str]]]:
    """The HTML page's dataset-figure tables: scorer (its section's id) → figure → one cell per system."""
    tables = {}
    for section in re.findall(r'<section class="scorer" id="scorer-([^"]+)">(.*?)</section>', markup, re.S):
        figures = re.search(r'<div class="figures">.*?<tbody>(.*?)</tbody>', section[1], re.S)
        if figures:
            rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in figures.group(1).split("</tr>") if row]
            tables[section[0]] = {html.unescape(row[0]): row[1:] for row in rows}
    return tables


def test_html_has_a_table_of_every_dataset_figure_in_each_scorers_section(report):
    tables = html_figures(to_html(report))
    assert set(tables) == {"label-category", "json-fields"}
    labels, fields = tables["label-category"], tables["json-fields"]
    assert labels["accuracy"] == ["71.7%", "43.9%", "67.8%"] and labels["macro_f1"] == ["71.3%", "44.4%", "68.9%"]
    assert labels["recall[security]"] == ["48.9%", "35.6%", "66.7%"]  # the security slice's means
    assert fields["micro_recall"] == ["82.2%", "61.7%", "80.3%"]  # json_fields' overall means
    assert fields["f1[category]"] == ["73.1%", "45.3%", "68.7%"] and len(fields) == 4 + 3 * 2


def test_html_escapes_figure_names_that_come_from_answers(report):
    report.aggregates["json_fields"]["tuned"]["f1[<img src=x onerror=alert(1)>]"] = 0.0
    page = Page(to_html(report))
    assert page.all("img") == []
    assert "f1[<img src=x onerror=alert(1)>]" in page.text


def test_html_opens_with_the_job_candidate_items_date_and_the_verdicts(report, page):
    text = " ".join(page.text)
    for fact in ("ft-local-7c1e", "tuned", "180", "category", "2026-11-20 14:03 UTC"):
        assert fact in text
    lines = [t for t in page.text if t in report.verdicts]
    assert lines == report.verdicts
    assert len(page.all("li", css="verdict-worse")) == 1


def test_html_has_a_pairwise_judge_section_with_a_row_per_slice_and_baseline(report, page):
    markup = to_html(report)
    section = re.search(r'<section id="pairwise"><h2>Pairwise judge</h2>(.*?)</section>', markup, re.S)
    assert section
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in section.group(1).split("</tr>")]
    assert ["billing", "few-shot:8", "69", "30", "22", "17", "59.4", "1"] in rows
    assert len([row for row in rows if row]) == len(report.pairwise)
    assert page.all("b") == [] and PAIRWISE_CRITERIA in " ".join(page.text)


def test_html_has_one_chart_per_scorer_and_kind_plus_loss_and_cost(page):
    charts = Counter(a["data-chart"] for a in page.all("svg"))
    assert charts == {"means": 2, "difference": 2, "loss": 1, "cost-quality": 1}


def test_html_means_chart_has_a_bar_per_slice_and_system(page):
    assert len(page.all("rect", css="bar", chart="means")) == 2 * 4 * 3


def test_html_difference_chart_has_a_whisker_per_comparison_and_a_zero_line(page):
    comparisons = page.all("g", css="comparison", chart="difference")
    assert len(comparisons) == 2 * 4 * 2
    assert len(page.all("line", css="whisker", chart="difference")) == 3 * len(comparisons)  # span and two caps
    assert len(page.all("line", css="zero", chart="difference")) == 2
    assert len(page.all("g", css="verdict-worse", chart="difference")) == 2


def test_html_loss_curve_draws_each_reported_loss(report, page):
    train, valid = page.all("polyline", css="train", chart="loss"), page.all("polyline", css="valid", chart="loss")
    assert len(train[0]["points"].split()) == 10 and len(valid[0]["points"].split()) == 5
    assert len(page.all("circle", css="train-point")) == 10 and len(page.all("circle", css="valid-point")) == 5


def test_html_without_a_loss_curve_says_so_instead_of_drawing(report):
    page = Page(to_html(report.model_copy(update={"loss_curve": []})))
    assert [a for a in page.all("svg") if a["data-chart"] == "loss"] == []
    assert "No loss curve" in "".join(page.text)


def test_html_cost_chart_has_a_labelled_point_per_priced_system(page):
    assert len(page.all("circle", css="system-point", chart="cost-quality")) == 3
    text = "".join(page.text)
    assert "few-shot:8 ($2.95, 67.8)" in text and "tuned ($0.38, 71.7)" in text


def test_html_cost_chart_names_a_system_it_cannot_place(report):
    report.systems[2].cost_per_1000 = None
    page = Page(to_html(report))
    assert len(page.all("circle", css="system-point")) == 2
    assert "Not plotted: few-shot:8 (no price for its answers)." in "".join(page.text)


def test_html_flips_show_both_answers_side_by_side_regressions_first(report, page):
    rows = page.all("tr", css="regressed") + page.all("tr", css="improved")
    assert len(rows) == 3
    assert [a["class"] for a in page.all("tr") if a.get("class") in ("regressed", "improved")] == [
        "regressed", "regressed", "improved"]
    text = "".join(page.text)
    assert "I'm sorry to hear that! Could you tell me more about the charges?" in text
    assert "Flips: 2 regressed, 1 improved" in text


def test_html_charts_are_labelled_for_screen_readers(page):
    ids = {a["id"] for _, a, _ in page.elements if "id" in a}
    for svg in page.all("svg"):
        assert svg["role"] == "img"
        assert all(ident in ids for ident in svg["aria-labelledby"].split())
    assert len(page.all("title")) > len(page.all("svg"))


def test_html_says_when_a_slice_is_too_small_to_compare(report):
    small = Comparison(candidate="tuned", baseline="base", verdict="too few examples",
                       line="tiny: too few examples to compare tuned with base (4; at least 10 needed)")
    report.results.append(report.results[0].model_copy(update={"slice": "tiny", "n": 4, "comparisons": [small]}))
    page = Page(to_html(report))
    assert len(page.all("g", css="comparison", chart="difference")) == 2 * 4 * 2  # none drawn for it
    assert "too few examples" in page.text
    assert page.misnested == []


# --- HTML, in a real browser -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("TUNEPROXY_NO_BROWSER"):  # .ci/run tried to install it and could not: said why
            pytest.skip(f"chromium could not be installed: {os.environ['TUNEPROXY_NO_BROWSER']}")
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and in CI the browser check must run: .ci/run installs "
                        "Debian's chromium package before the tests")
        pytest.skip("chromium is not installed: the HTML report's browser check runs in CI (.ci/run installs "
                    "it); `apt-get install chromium` runs it here")
    return path


def _chromium(path: str, tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [path, "--headless=new", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def _console_errors(stderr: str) -> list[str]:
    """What the page said on the browser's console (chromium logs it as CONSOLE lines), or threw uncaught."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _screenshot(path: str, tmp_path: Path, page: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    png = tmp_path / "out.png"
    done = _chromium(path, tmp_path, page, f"--screenshot={png}", "--window-size=1200,2000")
    assert done.returncode == 0, done.stderr[-2000:]
    return png, done


def _png_rows(png: bytes) -> tuple[int, list[bytes]]:
    """An 8-bit, non-interlaced RGB or RGBA PNG's pixel rows (and bytes per pixel), unfiltered."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, compressed, header = 8, b"", b""
    while position < len(png):
        length, kind = struct.unpack(">I4s", png[position:position + 8])
        body = png[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG: depth {depth}, colour {colour}"
    bpp = 3 if colour == 2 else 4
    data, stride = zlib.decompress(compressed), width * bpp
    rows, previous = [], bytes(stride)
    for y in range(height):
        kind, line = data[y * (stride + 1)], data[y * (stride + 1) + 1:(y + 1) * (stride + 1)]
        previous = _unfilter(kind, line, previous, bpp)
        rows.append(previous)
    return bpp, rows


def _unfilter(kind: int, line: bytes, previous: bytes, bpp: int) -> bytes:
    if kind == 0:
        return line
    if kind == 2:  # Up: bytewise (line + previous) mod 256, all bytes at once on one big integer
        n, low, high = len(line), int.from_bytes(b"\x7f" * len(line), "big"), int.from_bytes(b"\x80" * len(line), "big")
        x, y = int.from_bytes(line, "big"), int.from_bytes(previous, "big")
        return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(n, "big")
    out = bytearray(line)
    for i in range(len(out)):
        a = out[i - bpp] if i >= bpp else 0
        b, c = previous[i], previous[i - bpp] if i >= bpp else 0
        if kind == 1:
            predictor = a
        elif kind == 3:
            predictor = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
        out[i] = (out[i] + predictor) & 0xFF
    return bytes(out)


def _ink(png: Path) -> tuple[float, int]:
    """The share of pixels that are not white, and how many colours there are (every fourth row sampled)."""
    bpp, rows = _png_rows(png.read_bytes())
    inked, colours, total = 0, set(), 0
    for row in rows[::4]:
        for i in range(0, len(row), bpp):
            pixel = row[i:i + 3]
            colours.add(pixel)
            inked += pixel != b"\xff\xff\xff"
            total += 1
    return inked / total, len(colours)


def test_report_renders_in_chromium_without_console_errors_and_is_not_blank(chromium, report, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(to_html(report), encoding="utf-8")
    png, done = _screenshot(chromium, tmp_path, page)
    assert _console_errors(done.stderr) == []
    share, colours = _ink(png)
    assert share > 0.04, f"only {share:.1%} of the screenshot is not white"
    assert colours > 100, f"only {colours} colours in the screenshot"


def test_report_charts_are_in_the_dom_chromium_renders(chromium, report, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(to_html(report), encoding="utf-8")
    done = _chromium(chromium, tmp_path, page, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    rendered = Page(done.stdout)
    assert Counter(a["data-chart"] for a in rendered.all("svg")) == {"means": 2, "difference": 2, "loss": 1,
                                                                    "cost-quality": 1}
    assert len(rendered.all("rect", css="bar")) == 24 and len(rendered.all("circle", css="system-point")) == 3
    assert rendered.all("script") == []


def test_browser_checks_catch_a_page_that_throws_and_draws_nothing(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>throw new Error('broken report')</script></body></html>")
    png, done = _screenshot(chromium, tmp_path, page)
    assert any("broken report" in line for line in _console_errors(done.stderr))
    assert _ink(png) == (0.0, 1)


def test_terminal_tables_fit_eighty_columns_without_cutting_a_cell(report):
    console = Console(file=io.StringIO(), width=80, record=True)
    terminal(report, console)
    text = console.export_text()
    table_lines = [line for line in text.splitlines() if line.startswith(("│", "┃"))]
    assert table_lines and not [line for line in table_lines if "…" in line]
    assert "-17.8 [-31.1, -4.4]" in text and "+1 / -9" in text
    assert "Pairwise judge" in text and "│ (all)    │ few-shot:8 │    178 │" in text
