"""Conversions from the example model to the upload shapes services take, and writing them as JSONL.

The shapes are named by what they are (chat records, prompt/completion, text), not by who takes them;
each provider's ``serialize`` picks one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneproxy.dataset.examples import Example, content_text


def chat_record(example: Example, message_keys: frozenset[str] | None = None,
                example_keys: frozenset[str] = frozenset({"tools", "parallel_tool_calls"})) -> dict[str, Any]:
    """``{"messages": [...]}`` plus any of ``example_keys`` present; message keys filtered if given."""
    messages = example.messages()
    if message_keys is not None:
        messages = [{k: v for k, v in m.items() if k in message_keys} for m in messages]
    record: dict[str, Any] = {"messages": messages}
    for key in example_keys:
        if key in example.record:
            record[key] = example.record[key]
    return record


def kept_record(example: Example, keys: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The example's own top-level keys that ``keys[format]`` lists, in that order (tuneproxy's
    ``metadata`` never travels unless listed); a format with no entry keeps nothing."""
    return {key: example.record[key] for key in keys.get(example.format, ()) if key in example.record}


def render_prompt(messages: list[dict[str, Any]]) -> str:
    """A plain-text rendering of a conversation, for services that train on prompt/completion pairs."""
    return "".join(f"{m.get('role', 'user')}: {content_text(m.get('content'))}\n" for m in messages) + "assistant: "


def prompt_completion_record(example: Example) -> dict[str, Any]:
    """``{"prompt", "completion"}``: a completion example as is, a conversation rendered as text."""
    if example.format == "completion":
        return {"prompt": example.record["prompt"], "completion": example.record["completion"]}
    return {"prompt": render_prompt(example.prompt_messages()), "completion": example.reference()}


def text_record(example: Example) -> dict[str, Any]:
    """``{"text"}``: a text example as is, anything else as prompt followed by completion."""
    if example.format == "text":
        return {"text": example.record["text"]}
    pair = prompt_completion_record(example)
    return {"text": pair["prompt"] + pair["completion"]}


def write_jsonl(examples: Iterable[Example], path: Path,
                serialize: Callable[[Example], dict[str, Any]]) -> int:
    """Write ``serialize(example)`` for each example as compact UTF-8 JSONL; return the byte count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for example in examples:
            handle.write(json.dumps(serialize(example), ensure_ascii=False, separators=(",", ":")) + "\n")
    return path.stat().st_size
