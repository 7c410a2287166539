"""Validation of a whole dataset: stream it once, check every example, count tokens, report.

One pass, constant memory: examples are checked in chunks, token counts go into a histogram (exact
percentiles without keeping a list), and duplicate detection keeps its 8-byte fingerprints in a
temporary SQLite file rather than in RAM.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tuneproxy.contract import DatasetRules, Stats
from tuneproxy.dataset.examples import Example
from tuneproxy.dataset.findings import Finding, Findings, finding
from tuneproxy.dataset.reader import iter_objects
from tuneproxy.dataset.rules import ExampleChecker, scan_text
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

    def duplicates(self, limit: int) -> list[tuple[int, list[int]]]:
        rows = self.db.execute(
            "SELECT count(*), group_concat(line) FROM (SELECT h, line FROM fp ORDER BY line) "
            "GROUP BY h HAVING count(*) > 1 ORDER BY min(line) LIMIT ?", (limit,)
        ).fetchall()
        return [(n, sorted(int(x) for x in lines.split(","))) for n, lines in rows]

    def close(self) -> None:
        self.db.close()
        Path(self.path).unlink(missing_ok=True)


def fingerprint_hash(example: Example, fold: bool = False) -> int:
    digest = hashlib.blake2b(example.fingerprint(fold).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


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


def validate(
    source: str | Path | Iterable[dict[str, Any]],
    *,
    rules: DatasetRules | None = None,
    service: str | None = None,
    model: str | None = None,
    holdout: str | Path | Iterable[dict[str, Any]] | None = None,
    counter: TokenCounter | None = None,
    keep: int = 50,
) -> Report:
    """Check a dataset against the common rules and, when given, a service's ``rules``.

    ``source`` is a JSONL path or an iterable of example dicts. ``model`` picks the token counter
    (exact for OpenAI models) and the context limit. ``holdout`` is checked for leakage into training.
    """
    rules = rules or GENERIC_RULES
    counter = counter or counter_for(model)
    checker = ExampleChecker(rules, service or "the target service")
    findings = Findings(keep=keep)
    context = rules.context_for(model)
    leak = _holdout_fingerprints(holdout) if holdout is not None else {}
    fps = _Fingerprints()
    hist: Counter = Counter()
    examples = total_tokens = 0
    chunk: list[Example] = []

    def flush() -> None:
        nonlocal total_tokens
        counts = counter.count_batch([ex.messages() for ex in chunk])
        for ex, n in zip(chunk, counts):
            hist[n] += 1
            total_tokens += n
            if context and n > context:
                findings.add(finding("example-too-long", ex.line, "", f"{n:,} tokens, over the {context:,}-token"
                                     f" training context of {model or 'the model'}; shorten or split it."))
        fps.add([(fingerprint_hash(ex), ex.line) for ex in chunk])
        chunk.clear()

    try:
        for line, obj in iter_objects(source, findings):
            fmt, problems = checker.check(obj, line)
            findings.extend(problems)
            if fmt is None or any(p.severity == "error" for p in problems):
                continue
            example = Example.from_record(obj, line)
            examples += 1
            _scan(example, findings)
            if leak:
                other = leak.get(fingerprint_hash(example, fold=True))
                if other:
                    findings.add(finding("holdout-leakage", line, "", f"This example is also in the holdout "
                                         f"(holdout line {other}); evaluation on it would be inflated. Remove "
                                         "it from one of the two."))
            chunk.append(example)
            if len(chunk) >= CHUNK:
                flush()
        if chunk:
            flush()
        for n, lines in fps.duplicates(keep):
            findings.add(finding("duplicate-example", lines[1], "", f"Same example on lines "
                                 f"{', '.join(map(str, lines[:5]))}{' …' if n > 5 else ''} ({n} copies); keep one."))
    finally:
        fps.close()
    _dataset_rules(examples, rules, service, findings)
    size = Path(source).stat().st_size if isinstance(source, (str, Path)) and Path(source).is_file() else None
    if size is not None and rules.max_file_bytes and size > rules.max_file_bytes:
        findings.add(finding("file-too-large", 0, "", f"The file is {size:,} bytes; {service} accepts at most "
                             f"{rules.max_file_bytes:,} through {rules.upload_path}. Split it or trim it."))
    stats = Stats(
        examples=examples, total_tokens=total_tokens,
        tokens_p5=_percentile(hist, examples, 0.05), tokens_p50=_percentile(hist, examples, 0.5),
        tokens_p95=_percentile(hist, examples, 0.95), tokens_max=max(hist) if hist else 0,
        exact=counter.exact, error_bound=counter.error_bound, tokenizer=counter.name,
    )
    return Report(
        source=str(source) if isinstance(source, (str, Path)) else "<records>",
        service=service, model=model, format=checker.format, ok=findings.errors == 0,
        errors=findings.errors, warnings=findings.warnings, counts=dict(sorted(findings.counts.items())),
        findings=[f.to_dict() for f in findings], stats=stats, file_bytes=size,
    )


def _scan(example: Example, findings: Findings) -> None:
    for i, message in enumerate(example.messages()):
        content = message.get("content")
        if isinstance(content, str) and content:
            findings.extend(scan_text(content, example.line, f"messages[{i}].content"))


def _dataset_rules(n: int, rules: DatasetRules, service: str | None, findings: Findings) -> None:
    if n and n < rules.min_examples:
        findings.add(finding("below-service-minimum", 0, "", f"{n} valid examples; {service} needs at least "
                             f"{rules.min_examples}. Add more examples."))
    if rules.max_examples and n > rules.max_examples:
        findings.add(finding("above-service-maximum", 0, "", f"{n:,} examples; {service} accepts at most "
                             f"{rules.max_examples:,}. Sample down or split the job."))
    if 0 < n < FEW_EXAMPLES:
        findings.add(finding("few-examples", 0, "", f"Only {n} valid examples: fine-tuning usually needs a few "
                             "hundred to generalise. Add more, or expect a model that overfits."))


def _holdout_fingerprints(holdout: str | Path | Iterable[dict[str, Any]]) -> dict[int, int]:
    seen: dict[int, int] = {}
    for line, obj in iter_objects(holdout, Findings()):
        seen.setdefault(fingerprint_hash(Example.from_record(obj, line), fold=True), line)
    return seen


def load_examples(source: str | Path | Iterable[dict[str, Any]]) -> list[Example]:
    """Every usable example (skipping lines that are not JSON objects); validate first to see why."""
    return [Example.from_record(obj, line) for line, obj in iter_objects(source, Findings(keep=0))]


def first_findings(report: Report, severity: str = "error", limit: int = 5) -> list[Finding]:
    """The first few findings of ``severity``, as objects."""
    chosen = [f for f in report.findings if f["severity"] == severity][:limit]
    return [Finding(f["code"], f["severity"], f["line"], f["path"], f["message"]) for f in chosen]
