"""Held-out examples as items to ask, and the few-shot prompt a baseline is given.

An item is a chat example cut before its final assistant message: the conversation (the data's own system
prompt kept) is what every system is asked, the cut-off message is the reference answer. Its id is a
fingerprint of the whole example, so the same example has the same id in every run, cache and report.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tuneproxy.dataset.examples import Example, content_text
from tuneproxy.errors import ConfigError, DatasetError
from tuneproxy.evaluation.model import Item
from tuneproxy.holdouts import example_id


def slice_value(record: Mapping[str, Any], key: str | None) -> str | None:
    """The example's value of the slice key, looked up in its ``metadata`` (then at the top level)."""
    if key is None:
        return None
    metadata = record.get("metadata")
    value = metadata.get(key) if isinstance(metadata, Mapping) and key in metadata else record.get(key)
    return None if value is None else str(value)


def to_item(example: Example, slice_by: str | None = None) -> Item:
    """The example as an item: everything before its final assistant message, and that message's text."""
    if example.format != "chat":
        raise DatasetError(f"Evaluation asks chat examples; line {example.line} is {example.format}. Convert "
                           "the holdout to chat messages first.")
    messages = example.record["messages"]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        raise DatasetError(f"Line {example.line} has no prompt before an assistant answer to compare with.")
    prompt = [{k: v for k, v in m.items() if k in ("role", "content", "name")} for m in messages[:last]]
    return Item(id=example_id(example.record), messages=prompt, reference=content_text(messages[last]["content"]),
                slice=slice_value(example.record, slice_by))


def to_items(examples: Iterable[Example], slice_by: str | None = None) -> list[Item]:
    """Items for ``examples``, duplicates (the same example twice) asked once."""
    seen: dict[str, Item] = {}
    for example in examples:
        item = to_item(example, slice_by)
        seen.setdefault(item.id, item)
    items = list(seen.values())
    if slice_by is not None and all(item.slice is None for item in items):
        raise ConfigError(f"No held-out example has the slice key {slice_by!r} in its metadata; check the name.")
    return items


def few_shot_examples(training: Sequence[Example], k: int, slice_by: str | None = None,
                      seed: int = 0) -> list[Example]:
    """``k`` training examples for a few-shot prompt: chosen by a seeded draw (the same every run), spread
    over the slice key's values in turn so that every slice shows up when k allows."""
    if k < 1:
        raise ConfigError(f"few-shot:K needs K of 1 or more, not {k}.")
    chat = [ex for ex in training if ex.format == "chat"]
    if not chat:
        raise ConfigError("A few-shot baseline needs the training examples, and none were found.")
    groups: dict[str | None, list[Example]] = defaultdict(list)
    for example in sorted(chat, key=lambda ex: example_id(ex.record)):  # independent of file order
        groups[slice_value(example.record, slice_by)].append(example)
    rng = random.Random(seed)
    for members in groups.values():
        rng.shuffle(members)
    order = sorted(groups, key=lambda value: (value is None, str(value)))
    chosen: list[Example] = []
    while len(chosen) < min(k, len(chat)):
        for value in order:
            if groups[value] and len(chosen) < k:
                chosen.append(groups[value].pop())
    return chosen


def with_shots(item: Item, shots: Sequence[Example]) -> list[dict[str, Any]]:
    """The item's conversation with the shots as earlier user/assistant turns, after its system prompt."""
    system = [m for m in item.messages[:1] if m.get("role") == "system"]
    turns: list[dict[str, Any]] = []
    for shot in shots:
        shown = to_item(shot)
        turns += [m for m in shown.messages if m.get("role") != "system"]
        turns.append({"role": "assistant", "content": shown.reference})
    return system + turns + item.messages[len(system):]
