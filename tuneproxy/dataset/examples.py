"""The example model: one training example, its format, and format detection.

Examples stay plain JSON objects (the record as the user wrote it) wrapped in a slotted dataclass:
validation walks raw dicts to report exact JSON paths, and building pydantic models for a hundred
thousand examples would cost more than counting their tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuneproxy.contract import Format

FORMAT_KEYS: dict[str, frozenset[str]] = {
    "chat": frozenset({"messages"}),
    "preference": frozenset({"input", "preferred_output", "non_preferred_output"}),
    "completion": frozenset({"prompt", "completion"}),
    "text": frozenset({"text"}),
}
"""Keys whose presence identifies each format (checked in this order)."""

OPTIONAL_KEYS: dict[str, frozenset[str]] = {
    "chat": frozenset({"tools", "parallel_tool_calls", "metadata", "weight"}),
    "preference": frozenset({"metadata"}),
    "completion": frozenset({"metadata"}),
    "text": frozenset({"metadata"}),
}


def detect_format(record: Mapping[str, Any]) -> Format | None:
    """The format whose identifying keys ``record`` has, or None."""
    for name, keys in FORMAT_KEYS.items():
        if keys <= record.keys():
            return name  # type: ignore[return-value]
    for name, keys in FORMAT_KEYS.items():
        if keys & record.keys():
            return name  # type: ignore[return-value]
    return None


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            text for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(text := part.get("text"), str)
        )
    return ""


def _messages(value: Any) -> list[dict[str, Any]]:
    """The message objects of a list (nothing when ``value`` is no list): an unchecked record, such as a
    holdout line, can hold anything there."""
    return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []


@dataclass(slots=True)
class Example:
    """One training example: its format, the JSON object as loaded, and where it came from."""

    format: Format
    record: dict[str, Any]
    line: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: dict[str, Any], line: int = 0) -> Example:
        fmt = detect_format(record) or "text"
        metadata = record.get("metadata")
        return cls(fmt, record, line, metadata if isinstance(metadata, dict) else {})

    def messages(self) -> list[dict[str, Any]]:
        """The example as a chat conversation (the training target is the last assistant turn).

        Completion becomes user → assistant, preference uses the input and the preferred output, text
        is one assistant turn. Only message objects are kept: a record that failed validation may hold
        anything else.
        """
        r = self.record
        if self.format == "chat":
            return _messages(r.get("messages"))
        if self.format == "preference":
            inp = r.get("input")
            return _messages(inp.get("messages") if isinstance(inp, dict) else None) + _messages(
                r.get("preferred_output"))
        if self.format == "completion":
            return [{"role": "user", "content": r.get("prompt", "")},
                    {"role": "assistant", "content": r.get("completion", "")}]
        return [{"role": "assistant", "content": r.get("text", "")}]

    def prompt_messages(self) -> list[dict[str, Any]]:
        """The conversation up to (not including) the final assistant turn: what a model is asked."""
        msgs = self.messages()
        while msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        return msgs

    def reference(self) -> str:
        """The expected answer: the text of the final assistant turn."""
        for msg in reversed(self.messages()):
            if msg.get("role") == "assistant":
                return content_text(msg.get("content"))
        return ""

    def texts(self) -> Iterator[str]:
        """Every piece of human-readable text in the example (for token counts and privacy scans)."""
        for msg in self.messages():
            yield content_text(msg.get("content"))
        if self.format == "preference":
            for msg in _messages(self.record.get("non_preferred_output")):
                yield content_text(msg.get("content"))

    def folded(self) -> str:
        """The conversation's roles and texts with whitespace and case folded: equal for near-copies."""
        text = "\x1e".join(f"{m.get('role')}\x1f{content_text(m.get('content'))}" for m in self.messages())
        return " ".join(text.split()).casefold()
