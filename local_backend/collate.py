"""Turning chat examples into training tokens: assistant-only labels, and packing without padding.

Labels come from the model's own chat template: each assistant turn's characters are located by
rendering the conversation up to that turn (with the generation prompt) and up to its end, so whatever
the template wraps around a turn, only what the model must produce is trained. Turns with ``weight: 0``
are context only. Packed rows carry position ids that restart at each example, which makes the model
attend within each example only (see :func:`collate_row`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneproxy.dataset.examples import content_text
from tuneproxy.local_backend.errors import TemplateError

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One example as tokens; ``labels`` is ``IGNORE`` wherever the model is not trained."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        """How many tokens carry a loss."""
        return sum(1 for label in self.labels if label != IGNORE)


def _plain(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages with string content (templates expect strings) and without tuneproxy-only keys."""
    out = []
    for msg in messages:
        clean = {k: v for k, v in msg.items() if k != "weight"}
        if not isinstance(clean.get("content", ""), str):
            clean["content"] = content_text(clean.get("content"))
        out.append(clean)
    return out


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns to train on.

    A span runs from the end of the generation prompt before the turn to the end of the turn as the
    template renders it (content plus the end-of-turn marker), less trailing whitespace.
    """
    plain = _plain(messages)
    text = _render(tokenizer, plain, generation_prompt=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant" or msg.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, plain[:i], generation_prompt=True) if i else ""
        through = _render(tokenizer, plain[: i + 1], generation_prompt=False)
        if not text.startswith(before) or not text.startswith(through) or len(through) <= len(before):
            raise TemplateError(
                "The chat template does not render conversations prefix by prefix (an earlier turn "
                "renders differently once later turns follow), so assistant tokens cannot be located. "
                "Use a template that renders each turn independently."
            )
        # the separator after the end-of-turn marker is never generated, so it is not trained
        end = len(text[: len(through)].rstrip())
        spans.append((len(before), end))
    return text, spans


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], max_length: int) -> Encoded:
    """Tokenize one conversation; label only tokens that start inside a trained assistant span."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])[:max_length]
    labels = []
    for token_id, (start, end) in zip(ids, enc["offset_mapping"], strict=False):
        inside = end > start and any(lo <= start < hi for lo, hi in spans)
        labels.append(token_id if inside else IGNORE)
    return Encoded(ids, labels)


def pack_rows(examples: Sequence[Encoded], row_tokens: int) -> list[list[Encoded]]:
    """Group examples into rows of at most ``row_tokens`` tokens (first-fit decreasing).

    An example longer than a row gets a row of its own. Rows are never padded: each is processed alone.
    """
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for ex in sorted(examples, key=len, reverse=True):
        for i, free in enumerate(room):
            if len(ex) <= free:
                rows[i].append(ex)
                room[i] -= len(ex)
                break
        else:
            rows.append([ex])
            room.append(max(row_tokens - len(ex), 0))
    return rows


def collate_row(row: Sequence[Encoded]) -> dict[str, Any]:
    """One packed row as tensors of shape (1, tokens).

    Position ids restart at 0 for each example. With no attention mask, transformers reads the restarts
    as sequence boundaries and builds a block-diagonal causal mask (sdpa/eager) or uses the varlen path
    (flash attention), so no example attends to another. Labels are already shifted: ``labels[t]`` is
    the token predicted at position ``t``; the last token of each example predicts nothing.
    """
    import torch

    input_ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for ex in row:
        input_ids += ex.input_ids
        positions += range(len(ex))
        targets += ex.labels[1:] + [IGNORE]
    return {
        "input_ids": torch.tensor([input_ids]),
        "position_ids": torch.tensor([positions]),
        "targets": torch.tensor([targets]),
    }
