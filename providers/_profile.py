"""A provider whose data rules, upload format and prices are known but whose job lifecycle is not built.

Such a provider can validate, convert and estimate; every call that would talk to the service raises a
clear error instead of pretending. Replaced by the full provider when its issue lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tuneproxy.contract import (
    CostEstimate,
    Endpoint,
    JobEvent,
    JobRecord,
    JobSpec,
    Provider,
    Stats,
    UploadedFile,
)
from tuneproxy.errors import ConfigError


class LifecycleNotBuilt(ConfigError):
    """Submitting to this service is not built yet."""


class ProfileOnlyProvider(Provider):
    """Validation rules and upload format only; the lifecycle methods raise :class:`LifecycleNotBuilt`."""

    def _not_built(self, what: str) -> LifecycleNotBuilt:
        return LifecycleNotBuilt(
            f"{what} on {self.capabilities.display_name} is not built yet in this version of tuneproxy: "
            "`tuneproxy validate --provider` and cost estimates work; to train now use provider "
            "'together', 'openai' or 'local'."
        )

    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        raise self._not_built("Uploading")

    def submit(self, spec: JobSpec) -> JobRecord:
        raise self._not_built("Submitting a job")

    def refresh(self, job_id: str) -> JobRecord:
        raise self._not_built("Following a job")

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        raise self._not_built("Reading job events")

    def cancel(self, job_id: str) -> JobRecord:
        raise self._not_built("Cancelling a job")

    def find_job(self, intent_id: str) -> JobRecord | None:
        raise self._not_built("Finding a job")

    def endpoint(self, model: str) -> Endpoint:
        raise self._not_built("Generating with a model")

    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """Tokens × epochs × the size band's price per million tokens, when a band matches the model."""
        caps = self.capabilities
        epochs = spec.hyperparameters.epochs or 1
        tokens = stats.billable_tokens(epochs)
        price = next((p for band, p in caps.price_per_million_training_tokens.items()
                      if band in spec.model.lower()), None)
        if price is None:
            return CostEstimate(provider=self.name, model=spec.model, usd=None, billable_tokens=tokens,
                                basis=f"no price known for {spec.model}; see {caps.display_name}'s pricing page")
        return CostEstimate(
            provider=self.name, model=spec.model, usd=round(tokens * price / 1e6, 4), billable_tokens=tokens,
            basis=f"{tokens:,} tokens × ${price}/1M (price list as of {caps.prices_as_of}).",
        )
