"""The held-out examples of a fit, kept with its job so that an evaluation asks exactly what was held out
and refuses what was trained on.

One private file per submission, ``$TUNEPROXY_HOME/holdouts/<intent id>.json``: the held-out records as
given, the ids of the training examples and where their file was (not their content: the user's data file
stays the one copy), for a few-shot baseline drawn from the training examples. Training records given in
memory rather than as a file are kept here too, since nothing else holds them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tuneproxy import paths
from tuneproxy.dataset.examples import Example


def example_id(record: Mapping[str, Any]) -> str:
    """The id of an example: a hash of its canonical JSON (key order and spacing do not matter)."""
    canonical = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


class Holdout(BaseModel):
    """What a fit held out, and what it trained on."""

    intent_id: str
    data: str | None = None  # the training data's path, when it was a file
    holdout: list[dict[str, Any]]
    trained: list[str]  # example ids of the training examples
    training: list[dict[str, Any]] | None = None  # the training records, when they were given in memory


def _path(intent_id: str) -> Path:
    return paths.home() / "holdouts" / f"{intent_id}.json"


def save(intent_id: str, data: Any, held: Sequence[Example], train: Sequence[Example]) -> Path:
    """Keep ``held`` and the ids of ``train`` for the submission ``intent_id`` (private to this user)."""
    path = _path(intent_id)
    paths.private_folder(path.parent)
    from_file = isinstance(data, (str, Path))
    kept = Holdout(intent_id=intent_id, data=str(Path(data).resolve()) if from_file else None,
                   holdout=[ex.record for ex in held], trained=sorted({example_id(ex.record) for ex in train}),
                   training=None if from_file else [ex.record for ex in train])
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(kept.model_dump_json())
    os.replace(staging, path)
    return path


def load(intent_id: str) -> Holdout | None:
    """The holdout kept for ``intent_id``, or None when that fit held nothing out (or ran elsewhere)."""
    path = _path(intent_id)
    if not path.is_file():
        return None
    return Holdout.model_validate_json(path.read_text(encoding="utf-8"))


__all__ = ["Holdout", "example_id", "load", "save"]
