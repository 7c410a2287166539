"""Reading training files: JSONL, one example per line, wrapped as tuneproxy :class:`Example` objects."""

from __future__ import annotations

import json
from pathlib import Path

from tuneproxy.dataset.examples import Example
from tuneproxy.errors import DatasetError


def read_examples(path: str | Path) -> list[Example]:
    """Examples from a JSONL file, one JSON object per line (blank lines skipped)."""
    examples = []
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise DatasetError(f"Training file {path} does not exist. Check the path.") from None
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path}, line {number}: not valid JSON ({exc.msg}). Fix or remove it."
                ) from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}, line {number}: expected one JSON object per line.")
            examples.append(Example.from_record(record, line=number))
    if not examples:
        raise DatasetError(f"{path} holds no examples. Add at least one JSON object per line.")
    return examples
