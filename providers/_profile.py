"""A provider whose data rules, upload format and prices are known but whose job lifecycle is not built.

Such a provider can validate, convert and estimate; every call that would talk to the service raises a
clear error instead of pretending. Replaced by the full provider when its issue lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tuneproxy.contract import (
    DEFAULT_EPOCHS,
    CostEstimate,
    Endpoint,
    JobEvent,
    JobRecord,
    JobSpec,
    Provider,
    Quantity,
    Stats,
    UploadedFile,
)
from tuneproxy.errors import LifecycleNotBuilt


class ProfileOnlyProvider(Provider):
    """Validation rules and upload format only; the lifecycle methods raise :class:`LifecycleNotBuilt`."""

    def _not_built(self, what: str) -> LifecycleNotBuilt:
        return LifecycleNotBuilt(
            f"{what} on {self.capabilities.display_name} is not built yet in this version of tuneproxy: "
            "`tuneproxy validate --provider` and cost estimates work; `tuneproxy providers` lists the "
            "backends that can train now."
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
        """Training tokens × epochs (DEFAULT_EPOCHS when not given), for the core to price with the catalogue."""
        epochs = spec.hyperparameters.epochs or DEFAULT_EPOCHS
        kind = "preference_training_tokens" if spec.format == "preference" else "training_tokens"
        return CostEstimate(
            provider=self.name, model=spec.model,
            quantities=[Quantity(kind=kind, amount=stats.billable_tokens(epochs))],
            basis=f"{stats.total_tokens:,} tokens × {epochs} epochs",
        )
