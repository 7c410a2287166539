"""The one ``fit()`` the Tuner-level cassettes were recorded with: the same data, hyperparameters and clock
for every provider, only ``provider`` (and its model) changing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from tests.conftest import FIXTURES
from tuneproxy import Tuner, registry

SAMPLE = FIXTURES / "datasets" / "sample.jsonl"
MODELS = {"openai": "gpt-4o-mini-2024-07-18", "together": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
          "fireworks": "accounts/fireworks/models/qwen3-8b",
          "replicate": "meta/llama-2-7b:4b0970478e6123a0437561282904683f32a9ed0307205dc5db2b5609d6a2ceff"}
CREATE = {"openai": "/v1/fine_tuning/jobs", "together": "/v1/fine-tunes",  # the paid request of each service
          "fireworks": "/v1/accounts/acme/supervisedFineTuningJobs",
          "replicate": f"/v1/models/{MODELS['replicate'].replace(':', '/versions/')}/trainings"}
HYPERPARAMETERS: dict[str, Any] = {"epochs": 3, "batch_size": 8, "seed": 42, "suffix": "support-bot"}
# What the cassettes were recorded with that a user sets in the environment, not in the Tuner call: the
# Fireworks account and the Replicate destination model (tests set these, so the call stays the same).
FIREWORKS_ACCOUNT = "acme"
ENVIRONMENT = {"FIREWORKS_ACCOUNT_ID": FIREWORKS_ACCOUNT, "REPLICATE_DESTINATION": "acme/support-bot"}


def before_the_sunset() -> dt.datetime:
    return dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)


def hyperparameters_for(provider: str) -> dict[str, Any]:
    """:data:`HYPERPARAMETERS` less those ``provider`` does not take (Fireworks has no seed): the same fit
    everywhere, asking no provider for what it would refuse."""
    supported = registry.provider_class(provider).CAPABILITIES.parameters
    return {name: value for name, value in HYPERPARAMETERS.items() if name in supported}


def make_tuner(provider: str, transport: Any, sleep: Callable[[float], None] | None = None) -> Tuner:
    """The Tuner of the recorded ``fit_*`` cassettes (``sleep``: retry waits, recorded or skipped)."""
    return Tuner(provider, MODELS[provider], **hyperparameters_for(provider),
                 poll_interval=0, show_progress=False, api_key="test-key", clock=before_the_sunset,
                 transport=transport, **({"sleep": sleep} if sleep else {}))
