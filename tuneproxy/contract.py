"""The contract every backend implements, and the records that cross it.

A backend — a managed service or the local trainer — is a :class:`Provider`. The core talks to it only
through these types, so everything downstream (jobs, ledger, events, costs, evaluation) cannot tell one
backend from another. Wire objects are pydantic models; raw service strings are kept beside the
normalized values they were mapped to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneproxy.errors import UnsupportedParameter

Format = Literal["chat", "completion", "preference", "text"]
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The default clock: timezone-aware UTC now. Providers take a clock so tests can move time."""
    return dt.datetime.now(dt.timezone.utc)


class JobStatus(str, Enum):
    """One normalized set of job states, whatever the backend calls them."""

    QUEUED = "queued"
    VALIDATING = "validating"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class UnknownStatusWarning(UserWarning):
    """A service reported a job status tuneproxy has not seen documented."""


def normalize_status(provider: str, raw: str, table: Mapping[str, JobStatus]) -> JobStatus:
    """Map a raw service status through ``table``; an unseen one becomes UNKNOWN with a warning."""
    status = table.get(raw)
    if status is None:
        warnings.warn(
            f"{provider} reported job status {raw!r}, which tuneproxy does not know; treating it as "
            "'unknown' and carrying on. Please report it so it can be mapped.",
            UnknownStatusWarning,
            stacklevel=2,
        )
        return JobStatus.UNKNOWN
    return status


class Hyperparameters(BaseModel):
    """Portable hyperparameter names; each provider translates the ones it supports."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1, le=100, description="Passes over the training data.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Absolute peak learning rate.")
    learning_rate_multiplier: float | None = Field(
        None, gt=0, description="Multiplier on the service's own default learning rate (OpenAI)."
    )
    batch_size: int | None = Field(None, ge=1, le=1024, description="Examples per optimizer step.")
    lora_rank: int | None = Field(None, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scaling alpha.")
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="Dropout on the LoRA path.")
    max_seq_length: int | None = Field(None, ge=16, description="Longest training sequence, in tokens.")
    warmup_ratio: float | None = Field(None, ge=0, le=1, description="Fraction of steps to warm up over.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Random seed for reproducibility.")
    suffix: str | None = Field(
        None, min_length=1, max_length=40, description="Tag added to the tuned model's name."
    )

    def given(self) -> dict[str, Any]:
        """The parameters the user set, by portable name."""
        return self.model_dump(exclude_none=True)


PORTABLE_HYPERPARAMETERS: tuple[str, ...] = tuple(Hyperparameters.model_fields)


class DatasetRules(BaseModel):
    """A backend's own data rules, as data, so the core can check them without naming the service."""

    model_config = ConfigDict(frozen=True)

    formats: frozenset[str] = frozenset({"chat"})
    min_examples: int = 1
    max_examples: int | None = None
    max_file_bytes: int | None = None
    upload_path: str = "upload"
    roles: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})
    message_keys: frozenset[str] | None = None
    unknown_message_key_is_error: bool = False
    example_keys: frozenset[str] | None = None
    unknown_example_key_is_error: bool = False
    weight_roles: frozenset[str] = frozenset({"assistant"})
    weight_float_allowed: bool = False
    roles_must_alternate: bool = False
    system_only_first: bool = False
    default_context_tokens: int | None = None
    context_tokens: Mapping[str, int] = Field(default_factory=dict)

    def context_for(self, model: str | None) -> int | None:
        """The training context (tokens per example) for ``model``, by longest matching prefix."""
        if model:
            for prefix in sorted(self.context_tokens, key=len, reverse=True):
                if model.startswith(prefix):
                    return self.context_tokens[prefix]
        return self.default_context_tokens


class ParameterSpec(BaseModel):
    """How a provider supports one portable hyperparameter."""

    minimum: float | None = None
    maximum: float | None = None
    note: str = ""


class Capabilities(BaseModel):
    """What a backend can do: the core reads this instead of knowing services by name."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    display_name: str
    env_key: str | None = Field(None, description="Environment variable that holds the API key.")
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    rules: DatasetRules = Field(default_factory=DatasetRules)
    sunset: dt.date | None = Field(None, description="From this date no new jobs are accepted.")
    sunset_note: str = ""
    price_per_million_training_tokens: Mapping[str, float] = Field(default_factory=dict)
    prices_as_of: str = ""
    poll_seconds: float = Field(10.0, description="How often a waiting client should ask for the job's state.")


class UploadedFile(BaseModel):
    """A training or validation file the backend holds."""

    id: str
    filename: str
    bytes: int
    purpose: Literal["train", "validation"] = "train"


class JobSpec(BaseModel):
    """Everything a backend needs to create one fine-tuning job."""

    model: str
    training_file: str
    validation_file: str | None = None
    format: Format = "chat"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    intent_id: str = Field(description="tuneproxy's id for this submission; tags the job for reconciling.")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific settings.")


class JobRecord(BaseModel):
    """A job as the backend last reported it."""

    provider: str
    job_id: str
    model: str
    status: JobStatus
    raw_status: str
    fine_tuned_model: str | None = None
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error: str | None = Field(None, description="The service's own failure message, verbatim.")
    trained_tokens: int | None = None
    billed_usd: float | None = None
    intent_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class JobEvent(BaseModel):
    """One line of a job's log, with training metrics when the backend sent them."""

    id: str
    time: dt.datetime
    level: Literal["info", "warning", "error"] = "info"
    message: str = ""
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None


class Stats(BaseModel):
    """What the cost estimate needs to know about a dataset."""

    examples: int
    total_tokens: int
    tokens_p5: int = 0
    tokens_p50: int = 0
    tokens_p95: int = 0
    tokens_max: int = 0
    exact: bool = True
    error_bound: float = 0.0
    tokenizer: str = ""

    def billable_tokens(self, epochs: int) -> int:
        """Training tokens billed for ``epochs`` passes."""
        return self.total_tokens * epochs


class CostEstimate(BaseModel):
    """A cost figure before the job, with how it was computed."""

    provider: str
    model: str
    usd: float | None
    billable_tokens: int | None = None
    basis: str = Field(description="How the figure was reached, in words, with the price's date.")
    authoritative: bool = Field(False, description="True when the service itself gave the figure.")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Completion(BaseModel):
    """One generation from an endpoint."""

    text: str
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    cost_usd: float | None = None


Message = Mapping[str, Any]


class Endpoint(ABC):
    """Something that answers chat messages: a tuned model, or its base for comparison. Async first."""

    model: str

    @abstractmethod
    async def acomplete(self, messages: Sequence[Message], **params: Any) -> Completion:
        """Generate one reply to ``messages``."""

    async def acomplete_many(
        self, batch: Sequence[Sequence[Message]], concurrency: int = 4, **params: Any
    ) -> list[Completion]:
        """Generate a reply for each conversation, at most ``concurrency`` at a time, in order."""
        gate = asyncio.Semaphore(concurrency)

        async def one(messages: Sequence[Message]) -> Completion:
            async with gate:
                return await self.acomplete(messages, **params)

        return list(await asyncio.gather(*(one(m) for m in batch)))

    async def aclose(self) -> None:  # noqa: B027 - optional hook: most endpoints hold nothing open
        """Release what the endpoint holds open in the running event loop (HTTP clients)."""

    def complete(self, messages: Sequence[Message], **params: Any) -> Completion:
        """Blocking twin of :meth:`acomplete`."""
        return asyncio.run(self._closing(self.acomplete(messages, **params)))

    def complete_many(self, batch: Sequence[Sequence[Message]], **params: Any) -> list[Completion]:
        """Blocking twin of :meth:`acomplete_many`."""
        return asyncio.run(self._closing(self.acomplete_many(batch, **params)))

    async def _closing(self, work: Any) -> Any:
        # each blocking call runs its own event loop: close its clients before the loop goes away
        try:
            return await work
        finally:
            await self.aclose()


def timed(start: float) -> float:
    """Seconds since ``start`` (a ``time.perf_counter()`` reading)."""
    return time.perf_counter() - start


class Provider(ABC):
    """A fine-tuning backend. One subclass per service, plus the local trainer.

    Subclasses set ``name``, ``capabilities`` and a ``STATUS_MAP`` from every raw status the service
    documents to one :class:`JobStatus`. They speak only to their service: saving records is the core's
    job (the ledger), never the provider's.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    STATUS_MAP: ClassVar[Mapping[str, JobStatus]]

    def __init__(self, *, api_key: str | None = None, transport: Any = None, clock: Clock = utc_now,
                 **options: Any) -> None:
        self.api_key = api_key
        self.transport = transport
        self.clock = clock
        self.options = options

    def __repr__(self) -> str:  # never show the key
        return f"<{type(self).__name__} {self.name}>"

    def status(self, raw: str) -> JobStatus:
        """Normalize one raw status string of this service."""
        return normalize_status(self.name, raw, self.STATUS_MAP)

    @classmethod
    def translate(
        cls, hyperparameters: Hyperparameters, supported_by: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, Any]:
        """Check every given portable parameter is supported; return them by portable name.

        ``supported_by`` (parameter → display names of the providers that support it, which the core
        builds from the registry) lets the error name where an unsupported parameter would work.
        """
        given = hyperparameters.given()
        unsupported = [k for k in given if k not in cls.capabilities.parameters]
        if unsupported:
            elsewhere = "".join(
                f" {key} is supported by: {', '.join(supported_by[key])}."
                for key in sorted(unsupported) if supported_by and supported_by.get(key)
            )
            names = ", ".join(sorted(unsupported))
            raise UnsupportedParameter(
                f"{cls.capabilities.display_name} does not support: {names}.{elsewhere} "
                "Remove it, or choose a provider that supports it "
                "(`tuneproxy providers --json` lists what each supports)."
            )
        for key, value in given.items():
            spec = cls.capabilities.parameters[key]
            if isinstance(value, (int, float)):
                if spec.minimum is not None and value < spec.minimum:
                    raise UnsupportedParameter(
                        f"{key}={value} is below {cls.capabilities.display_name}'s minimum {spec.minimum}."
                    )
                if spec.maximum is not None and value > spec.maximum:
                    raise UnsupportedParameter(
                        f"{key}={value} is above {cls.capabilities.display_name}'s maximum {spec.maximum}."
                    )
        return given

    def check(self, spec: JobSpec) -> list[str]:
        """Backend-specific preflight problems for ``spec`` beyond the dataset rules (messages to show)."""
        return []

    @abstractmethod
    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        """Send a file already converted to this backend's upload format."""

    @abstractmethod
    def submit(self, spec: JobSpec) -> JobRecord:
        """Create the job (never retried blindly: it can cost money)."""

    @abstractmethod
    def refresh(self, job_id: str) -> JobRecord:
        """The job's current state."""

    @abstractmethod
    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """Log lines and metrics newer than event id ``after``, oldest first."""

    @abstractmethod
    def cancel(self, job_id: str) -> JobRecord:
        """Ask the backend to stop the job."""

    @abstractmethod
    def find_job(self, intent_id: str) -> JobRecord | None:
        """The job created for ``intent_id`` if it exists — how a lost create response is reconciled."""

    @abstractmethod
    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """What the job will cost, before anything is paid."""

    @abstractmethod
    def endpoint(self, model: str) -> Endpoint:
        """An endpoint that generates with ``model`` (a tuned model name or a base model)."""

    def serialize(self, example: Any) -> dict[str, Any]:
        """One example in this backend's upload format (default: the example as loaded)."""
        return dict(example.record)
