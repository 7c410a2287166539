"""The one ``fit()`` the Tuner-level cassettes were recorded with: the same data, hyperparameters and clock
for every provider, only ``provider`` (and its model) changing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from tests.conftest import FIXTURES
from tuneproxy import Tuner

SAMPLE = FIXTURES / "datasets" / "sample.jsonl"
MODELS = {"openai": "gpt-4o-mini-2024-07-18", "together": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"}
CREATE = {"openai": "/v1/fine_tuning/jobs", "together": "/v1/fine-tunes"}  # the paid request of each service


def before_the_sunset() -> dt.datetime:
    return dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)


def make_tuner(provider: str, transport: Any, sleep: Callable[[float], None] | None = None) -> Tuner:
    """The Tuner of the recorded ``fit_*`` cassettes (``sleep``: retry waits, recorded or skipped)."""
    return Tuner(provider, MODELS[provider], epochs=3, batch_size=8, seed=42, suffix="support-bot",
                 poll_interval=0, show_progress=False, api_key="test-key", clock=before_the_sunset,
                 transport=transport, **({"sleep": sleep} if sleep else {}))
