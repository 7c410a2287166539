"""Validation findings: a stable code, a severity, where, and what to do.

Codes never change meaning once published (like ruff's rule codes), so users can search, filter and
suppress them. ``docs/validation-codes.md`` is generated from :data:`CODES` and a test keeps it in step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    name: str
    severity: Severity
    summary: str


_CODE_LIST = [
    # the file as a whole
    Code("TP001", "empty-file", "error", "The file has no examples."),
    Code("TP002", "byte-order-mark", "warning", "The file starts with a UTF-8 byte-order mark."),
    Code("TP003", "invalid-utf8", "error", "A line is not valid UTF-8."),
    Code("TP004", "binary-file", "error", "The file holds binary data (NUL bytes), not JSONL text."),
    Code("TP005", "crlf-line-endings", "warning", "Lines end with CRLF; some services reject them."),
    Code("TP006", "truncated-last-line", "error", "The last line has no newline and is not complete JSON."),
    Code("TP007", "file-too-large", "error", "The file is larger than the service's upload limit."),
    Code("TP008", "json-array-file", "error", "The file is one JSON array, not one JSON object per line."),
    Code("TP009", "blank-line", "warning", "A blank line; services skip or reject them."),
    # one line as JSON
    Code("TP101", "invalid-json", "error", "A line is not valid JSON."),
    Code("TP102", "not-an-object", "error", "A line is valid JSON but not an object."),
    Code("TP103", "non-finite-number", "error", "NaN or Infinity, which JSON does not allow."),
    Code("TP104", "very-long-line", "warning", "A single line over 1 MB."),
    Code("TP105", "line-too-long", "error", "A single line over 16 MB; it is skipped unread."),
    # the example's shape
    Code("TP201", "unknown-format", "error", "The object matches none of chat, completion, preference, text."),
    Code("TP202", "mixed-formats", "error", "The file mixes formats; a file must use exactly one."),
    Code("TP203", "unknown-key", "error", "A top-level key the format (or the service) does not know."),
    Code("TP204", "format-not-supported", "error", "The chosen service does not train on this format."),
    Code("TP205", "metadata-invalid", "error", "`metadata` must be a JSON object."),
    Code("TP206", "field-invalid", "error", "A prompt, completion or text field is missing, empty or not a string."),
    # chat messages
    Code("TP301", "messages-invalid", "error", "`messages` must be a non-empty list of message objects."),
    Code("TP302", "role-invalid", "error", "A message's role is missing or not one the service accepts."),
    Code("TP303", "content-invalid", "error", "Content must be a non-empty string or a list of content parts."),
    Code("TP304", "no-assistant-turn", "error", "No assistant message with content to learn from."),
    Code("TP305", "weight-invalid", "error", "`weight` must be exactly the integer 0 or 1."),
    Code("TP306", "weight-not-allowed", "error", "`weight` on a message role the service does not allow."),
    Code("TP307", "roles-not-alternating", "error", "After the system message, user and assistant must alternate."),
    Code("TP308", "system-not-first", "error", "A system message anywhere but first."),
    Code("TP309", "tool-call-invalid", "error", "A tool call is malformed or a tool message has no call to answer."),
    Code("TP310", "unknown-message-key", "error", "A message key the service does not know."),
    Code("TP311", "tools-invalid", "error", "`tools` must be a list of function definitions."),
    # preference pairs
    Code("TP401", "preference-input-invalid", "error",
         "`input.messages` must be a non-empty list ending in a non-assistant turn."),
    Code("TP402", "preference-output-invalid", "error", "Each output must be a list of exactly one assistant message."),
    # the dataset as a whole
    Code("TP501", "few-examples", "warning", "Fewer than 200 examples: too few to fine-tune reliably."),
    Code("TP502", "below-service-minimum", "error", "Fewer examples than the service accepts."),
    Code("TP503", "above-service-maximum", "error", "More examples than the service accepts."),
    Code("TP504", "duplicate-example", "warning", "The same example appears more than once."),
    Code("TP505", "example-too-long", "error", "An example is longer than the model's training context."),
    Code("TP506", "holdout-leakage", "warning", "An example in the holdout also appears in the training data."),
    # what the text says
    Code("TP601", "secret-in-text", "warning", "Text that looks like an API key or password."),
    Code("TP602", "email-in-text", "warning", "An e-mail address in training text."),
    Code("TP603", "phone-in-text", "warning", "A phone number in training text."),
]

CODES: dict[str, Code] = {c.code: c for c in _CODE_LIST}
BY_NAME: dict[str, Code] = {c.name: c for c in _CODE_LIST}


def codes_markdown() -> str:
    """The table of every code, as ``docs/validation-codes.md`` holds it (a test keeps the two equal)."""
    lines = [
        "# Validation codes",
        "",
        "`tuneproxy validate` reports each problem under a stable code. A code's meaning never changes; new",
        "codes get new numbers. Severity is the default: a service's own rules can make an unknown key or",
        "message key an error where that service rejects it. TP0xx: the file; TP1xx: a line as JSON; TP2xx:",
        "the example's shape; TP3xx: chat messages; TP4xx: preference pairs; TP5xx: the dataset as a whole;",
        "TP6xx: what the text says.",
        "",
        "| code | name | severity | meaning |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {c.code} | {c.name} | {c.severity} | {c.summary.replace('|', '/')} |" for c in _CODE_LIST]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: its code, severity, 1-based line (0 for the whole file), JSON path and advice."""

    code: str
    severity: Severity
    line: int
    path: str
    message: str

    @property
    def name(self) -> str:
        return CODES[self.code].name

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}


def finding(name: str, line: int, path: str, message: str, severity: Severity | None = None) -> Finding:
    """Build a finding by its stable name (``"role-invalid"``); severity defaults to the code's."""
    code = BY_NAME[name]
    return Finding(code.code, severity or code.severity, line, path, message)


class Findings:
    """Collects findings with bounded memory: every one is counted, the first ``keep`` per code kept."""

    def __init__(self, keep: int = 50) -> None:
        self.keep = keep
        self.counts: dict[str, int] = defaultdict(int)
        self.kept: dict[str, list[Finding]] = defaultdict(list)
        self.severity: dict[str, Severity] = {}

    def add(self, item: Finding) -> None:
        self.counts[item.code] += 1
        # an error outranks a warning under the same code (the service decides which it is)
        if self.severity.get(item.code) != "error":
            self.severity[item.code] = item.severity
        if len(self.kept[item.code]) < self.keep:
            self.kept[item.code].append(item)

    def merge(self, code: str, count: int, severity: Severity, kept: list[Finding]) -> None:
        """Fold in another collector's findings for ``code``."""
        self.counts[code] += count
        if self.severity.get(code) != "error":
            self.severity[code] = severity
        room = self.keep - len(self.kept[code])
        self.kept[code].extend(kept[:room])

    def extend(self, items: Iterable[Finding]) -> None:
        for item in items:
            self.add(item)

    def __iter__(self) -> Iterator[Finding]:
        for code in sorted(self.kept):
            yield from self.kept[code]

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.counts.items() if self.severity[code] == "error")

    @property
    def warnings(self) -> int:
        return sum(n for code, n in self.counts.items() if self.severity[code] == "warning")

    def codes(self) -> set[str]:
        return set(self.counts)
