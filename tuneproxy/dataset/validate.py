"""Validation of a whole dataset: stream it once, check every example, count tokens, report.

One pass, constant memory: examples are checked in chunks, token counts go into a histogram (exact
percentiles without keeping a list), and duplicate detection keeps its 8-byte fingerprints in a
temporary SQLite file rather than in RAM. A large file is cut at line boundaries into one span per core,
checked in parallel processes, and the parts merged (findings, histograms, fingerprints across spans).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field

from tuneproxy.contract import DatasetRules, Stats
from tuneproxy.dataset.examples import Example, detect_format
from tuneproxy.dataset.findings import BY_NAME, Finding, Findings, finding
from tuneproxy.dataset.reader import (
    Span,
    check_path,
    crlf_finding,
    crlf_lines,
    iter_objects,
    read_jsonl,
    split_spans,
)
from tuneproxy.dataset.rules import ExampleChecker, scan_text
from tuneproxy.errors import DatasetError
from tuneproxy.tokens import TokenCounter, counter_for

CHUNK = 1024
FEW_EXAMPLES = 200
ALL_FORMATS = frozenset({"chat", "completion", "preference", "text"})
GENERIC_RULES = DatasetRules(formats=ALL_FORMATS, weight_roles=frozenset({"assistant"}))


class Report(BaseModel):
    """What validation found: the verdict, findings (first few per code, all counted) and statistics."""

    source: str
    service: str | None = None
    model: str | None = None
    format: str | None = None
    ok: bool
    errors: int
    warnings: int
    counts: dict[str, int] = Field(description="How many findings per code.")
    findings: list[dict[str, Any]]
    stats: Stats | None = None
    file_bytes: int | None = None

    def verdict(self) -> str:
        """One line a person reads first."""
        n = self.stats.examples if self.stats else 0
        if self.ok:
            tail = f" with {self.warnings} warning(s)" if self.warnings else ""
            return f"OK: {n:,} examples are ready to train{tail}."
        return f"FAILED: {self.errors} error(s) and {self.warnings} warning(s); fix the errors and run again."

    def of(self, code: str) -> list[dict[str, Any]]:
        """The kept findings with ``code``."""
        return [f for f in self.findings if f["code"] == code]


class _Fingerprints:
    """Example fingerprints in a temporary SQLite file: exact duplicate detection in flat memory."""

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="tuneproxy-dups-", suffix=".db")
        os.close(handle)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE fp (h INTEGER, line INTEGER)")

    def add(self, rows: list[tuple[int, int]]) -> None:
        self.db.executemany("INSERT INTO fp VALUES (?, ?)", rows)

    def close(self) -> None:
        self.db.commit()
        self.db.close()


def _duplicates(paths: list[str], limit: int) -> list[tuple[int, list[int]]]:
    """Groups of equal fingerprints across the parts' files: (copies, sorted line numbers)."""
    db = sqlite3.connect(paths[0])
    try:
        for i, extra in enumerate(paths[1:]):
            db.execute(f"ATTACH DATABASE ? AS part{i}", (extra,))
            db.execute(f"INSERT INTO fp SELECT h, line FROM part{i}.fp")
        rows = db.execute(
            "SELECT count(*), group_concat(line) FROM (SELECT h, line FROM fp ORDER BY line) "
            "GROUP BY h HAVING count(*) > 1 ORDER BY min(line) LIMIT ?", (limit,)
        ).fetchall()
    finally:
        db.close()
    return [(n, sorted(int(x) for x in lines.split(","))) for n, lines in rows]


def fingerprint_hash(example: Example, fold: bool = False) -> int:
    """A 64-bit key equal for equal conversations; ``fold`` also ignores whitespace and case."""
    data = example.folded().encode() if fold else orjson.dumps(example.messages())
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def _percentile(hist: Counter, total: int, q: float) -> int:
    if not total:
        return 0
    rank = max(1, round(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)


PARALLEL_MIN_BYTES = 8_000_000
_STOPS_READING = frozenset({BY_NAME["binary-file"].code, BY_NAME["json-array-file"].code})
_CRLF = BY_NAME["crlf-line-endings"].code


@dataclass
class _Part:
    """What one pass over a span (or over records) found, before merging."""

    findings: Findings
    hist: Counter
    examples: int
    total_tokens: int
    format: str | None
    fingerprints: str


@dataclass(frozen=True)
class _Job:
    rules: DatasetRules
    service: str
    model: str | None
    counter: TokenCounter
    leak: dict[int, int]
    keep: int
    expected_format: tuple[str, int] | None = None


def validate(
    source: str | Path | Iterable[dict[str, Any]],
    *,
    rules: DatasetRules | None = None,
    service: str | None = None,
    model: str | None = None,
    holdout: str | Path | Iterable[dict[str, Any]] | None = None,
    counter: TokenCounter | None = None,
    tokenizer: str | None = None,
    keep: int = 50,
    workers: int | None = None,
    check_size: bool = True,
) -> Report:
    """Check a dataset against the common rules and, when given, a service's ``rules``.

    ``source`` is a JSONL path or an iterable of example dicts. ``model`` and ``tokenizer`` (the
    provider's tokenizer family, ``Capabilities.tokenizer``) pick the token counter — exact for tiktoken
    models and for a model whose tokenizer is on disk — and ``model`` the context limit. ``holdout`` is
    checked for leakage into training.
    A large file is checked in ``workers`` processes at once (default: one per core, at most four).
    ``check_size=False`` skips the example-count rules (for a holdout, which is small by design).
    """
    rules = rules or GENERIC_RULES
    job = _Job(rules, service or "the target service", model, counter or counter_for(model, tokenizer),
               _holdout_fingerprints(holdout) if holdout is not None else {}, keep)
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is not None:
        check_path(path)
    parts = _run(job, source, path, workers)
    try:
        findings, examples = _merge(parts, keep)
        for n, lines in _duplicates([p.fingerprints for p in parts], keep):
            findings.add(finding("duplicate-example", lines[1], "", f"Same example on lines "
                                 f"{', '.join(map(str, lines[:5]))}{' …' if n > 5 else ''} ({n} copies); keep one."))
    finally:
        for part in parts:
            Path(part.fingerprints).unlink(missing_ok=True)
    size = path.stat().st_size if path is not None else None
    findings.extend(size_findings(examples if check_size else None, size, rules, service))
    hist = sum((p.hist for p in parts), Counter())
    stats = Stats(
        examples=examples, total_tokens=sum(p.total_tokens for p in parts),
        tokens_p5=_percentile(hist, examples, 0.05), tokens_p50=_percentile(hist, examples, 0.5),
        tokens_p95=_percentile(hist, examples, 0.95), tokens_max=max(hist) if hist else 0,
        exact=job.counter.exact, error_bound=job.counter.error_bound, tokenizer=job.counter.name,
    )
    return Report(
        source=str(source) if path is not None else "<records>",
        service=service, model=model, format=next((p.format for p in parts if p.format), None),
        ok=findings.errors == 0,
        errors=findings.errors, warnings=findings.warnings, counts=dict(sorted(findings.counts.items())),
        findings=[f.to_dict() for f in findings], stats=stats, file_bytes=size,
    )


def _run(job: _Job, source: Any, path: Path | None, workers: int | None) -> list[_Part]:
    """One pass over records or a small file; a large file cut into spans checked in parallel."""
    workers = workers or min(4, os.cpu_count() or 1)
    if path is None or workers < 2 or path.stat().st_size < PARALLEL_MIN_BYTES or not _can_fork():
        return [_check_span(job, path or source, Span())]
    spans = split_spans(path, workers)
    first = _first_format(path)
    # a span after the file's first example is told its format; the span holding it finds it itself
    jobs = [replace(job, expected_format=first) if first and span.first_line > first[1] else job
            for span in spans]
    with get_context("fork").Pool(len(spans)) as pool:
        return _until_stopped(pool.starmap(_check_span, [(j, path, span) for j, span in zip(jobs, spans)]))


def _until_stopped(parts: list[_Part]) -> list[_Part]:
    """The parts up to the one where reading stopped (binary data or a JSON array): one process reads no
    further, so what later spans found is dropped."""
    for i, part in enumerate(parts):
        if part.findings.codes() & _STOPS_READING:
            for dropped in parts[i + 1:]:
                Path(dropped.fingerprints).unlink(missing_ok=True)
            return parts[:i + 1]
    return parts


def _can_fork() -> bool:
    return "fork" in get_all_start_methods()


def _first_format(path: Path) -> tuple[str, int] | None:
    """The format of the file's first object that has one, and its line, so later spans can spot a mix."""
    for line, obj in read_jsonl(path, Findings(keep=0)):
        fmt = detect_format(obj)
        if fmt:
            return fmt, line
    return None


def _check_span(job: _Job, source: Path | Iterable[Any], span: Span) -> _Part:
    """Check every example of one span of a file (or of records): the single pass that does the work."""
    findings = Findings(keep=job.keep)
    checker = ExampleChecker(job.rules, job.service, job.expected_format)
    objects = read_jsonl(source, findings, span) if isinstance(source, Path) else iter_objects(source, findings)
    context = job.rules.context_for(job.model)
    fps = _Fingerprints()
    scan = _Scanner()
    hist: Counter = Counter()
    examples = total_tokens = 0
    chunk: list[Example] = []

    def flush() -> None:
        nonlocal total_tokens
        counts = job.counter.count_batch([ex.messages() for ex in chunk])
        for ex, n in zip(chunk, counts):
            hist[n] += 1
            total_tokens += n
            if context and n > context:
                findings.add(finding("example-too-long", ex.line, "", f"{n:,} tokens, over the {context:,}-token"
                                     f" training context of {job.model or 'the model'}; shorten or split it."))
        fps.add([(fingerprint_hash(ex), ex.line) for ex in chunk])
        chunk.clear()

    try:
        for line, obj in objects:
            fmt, problems = checker.check(obj, line)
            findings.extend(problems)
            if fmt is None or any(p.severity == "error" for p in problems):
                continue
            example = Example.from_record(obj, line)
            examples += 1
            scan(example, findings)
            other = job.leak.get(fingerprint_hash(example, fold=True)) if job.leak else None
            if other:
                findings.add(finding("holdout-leakage", line, "", f"This example is also in the holdout "
                                     f"(holdout line {other}); evaluation on it would be inflated. Remove "
                                     "it from one of the two."))
            chunk.append(example)
            if len(chunk) >= CHUNK:
                flush()
        if chunk:
            flush()
    except BaseException:
        fps.close()
        Path(fps.path).unlink(missing_ok=True)
        raise
    fps.close()
    return _Part(findings, hist, examples, total_tokens, checker.format, fps.path)


def _merge(parts: list[_Part], keep: int) -> tuple[Findings, int]:
    merged = Findings(keep=keep)
    for part in parts:
        for code in sorted(part.findings.codes() - {_CRLF}):
            merged.merge(code, part.findings.counts[code], part.findings.severity[code], part.findings.kept[code])
    crlf = [part.findings for part in parts if _CRLF in part.findings.counts]
    # where reading stopped early (binary data), the reader never gets to its CRLF count
    if crlf and not any(part.findings.codes() & _STOPS_READING for part in parts):
        kept = [f for findings in crlf for f in findings.kept[_CRLF]]
        merged.merge(_CRLF, 1, crlf[0].severity[_CRLF], [_all_crlf_lines(kept)] if kept else [])
    return merged, sum(p.examples for p in parts)


def _all_crlf_lines(per_span: list[Finding]) -> Finding:
    """One CRLF finding for the file: the first span's line, every span's count."""
    return crlf_finding(sum(crlf_lines(f) for f in per_span), per_span[0].line)


class _Scanner:
    """Privacy scan of each example. System prompts repeat across a dataset, so the clean ones are
    remembered (a bounded set) and not scanned again."""

    def __init__(self, remember: int = 1024) -> None:
        self.clean_prompts: set[str] = set()
        self.remember = remember

    def __call__(self, example: Example, findings: Findings) -> None:
        messages = example.messages()
        texts = [c if isinstance(c := m.get("content"), str) else "" for m in messages]
        prompt = texts[0] if messages and messages[0].get("role") == "system" else None
        fresh = texts[1:] if prompt in self.clean_prompts else texts
        if scan_text("\n".join(fresh), example.line, ""):
            _scan_each(example, texts, findings)
        elif prompt is not None and len(self.clean_prompts) < self.remember:
            self.clean_prompts.add(prompt)


def _scan_each(example: Example, texts: list[str], findings: Findings) -> None:
    for i, text in enumerate(texts):
        if text:
            findings.extend(scan_text(text, example.line, f"messages[{i}].content"))


def size_findings(n: int | None, file_bytes: int | None, rules: DatasetRules,
                  service: str | None) -> list[Finding]:
    """The dataset-level rules: ``n`` valid examples against the service's minimum and maximum (None: not
    checked), and a file of ``file_bytes`` against its upload limit (None: not a file)."""
    found = []
    if n and n < rules.min_examples:
        found.append(finding("below-service-minimum", 0, "", f"{n} valid examples; {service} needs at least "
                             f"{rules.min_examples}. Add more examples."))
    if n is not None and rules.max_examples and n > rules.max_examples:
        found.append(finding("above-service-maximum", 0, "", f"{n:,} examples; {service} accepts at most "
                             f"{rules.max_examples:,}. Sample down or split the job."))
    if n is not None and 0 < n < FEW_EXAMPLES:
        found.append(finding("few-examples", 0, "", f"Only {n} valid examples: fine-tuning usually needs a few "
                             "hundred to generalise. Add more, or expect a model that overfits."))
    if file_bytes is not None and rules.max_file_bytes and file_bytes > rules.max_file_bytes:
        found.append(finding("file-too-large", 0, "", f"The file is {file_bytes:,} bytes; {service} accepts at "
                             f"most {rules.max_file_bytes:,} through {rules.upload_path}. Split it or trim it."))
    return found


def _holdout_fingerprints(holdout: str | Path | Iterable[dict[str, Any]]) -> dict[int, int]:
    seen: dict[int, int] = {}
    for line, obj in iter_objects(holdout, Findings()):
        seen.setdefault(fingerprint_hash(Example.from_record(obj, line), fold=True), line)
    return seen


def token_stats(examples: list[Example], counter: TokenCounter) -> Stats:
    """Token statistics of ``examples`` alone, counted with ``counter`` (no rules checked): the training
    part of a split, whose examples were validated with the whole file."""
    hist: Counter = Counter()
    for start in range(0, len(examples), 512):
        hist.update(counter.count_batch([ex.messages() for ex in examples[start:start + 512]]))
    n = len(examples)
    return Stats(examples=n, total_tokens=sum(tokens * count for tokens, count in hist.items()),
                 tokens_p5=_percentile(hist, n, 0.05), tokens_p50=_percentile(hist, n, 0.5),
                 tokens_p95=_percentile(hist, n, 0.95), tokens_max=max(hist) if hist else 0,
                 exact=counter.exact, error_bound=counter.error_bound, tokenizer=counter.name)


def load_examples(source: str | Path | Iterable[dict[str, Any]], strict: bool = False) -> list[Example]:
    """Every example that is a JSON object. ``strict``: a line that is not (or no example at all) raises
    :class:`DatasetError` naming the first problem; otherwise such lines are skipped (validate to see why)."""
    findings = Findings(keep=1)
    examples = [Example.from_record(obj, line) for line, obj in iter_objects(source, findings)]
    if strict and findings.errors:
        first = next(f for f in findings if f.severity == "error")
        where = f"line {first.line}: " if first.line else ""
        raise DatasetError(f"{source}: {where}{first.message}", findings=[first.to_dict()])
    return examples


def first_findings(report: Report, severity: str = "error", limit: int = 5) -> list[Finding]:
    """The first few findings of ``severity``, as objects."""
    chosen = [f for f in report.findings if f["severity"] == severity][:limit]
    return [Finding(f["code"], f["severity"], f["line"], f["path"], f["message"]) for f in chosen]
