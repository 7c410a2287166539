"""The contract every backend implements, and the records that cross it.

A backend — a managed service or the local trainer — is a :class:`Provider`, built from its typed
:class:`ProviderOptions`. The core talks to it only through these types: jobs, events, billable
quantities and completions look the same whatever the backend. What a backend *can* do is asked of the
instance (:attr:`Provider.capabilities`); optional verbs (paid deployment: :class:`Deployable`) are
discovered with ``isinstance``. Wire objects are pydantic models; raw service strings are kept beside the
normalized values they were mapped to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import difflib
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator

from tuneproxy.errors import (
    ConfigError,
    ProviderError,
    RateLimited,
    UnsupportedParameter,
    config_error_from,
    register_secret,
    register_secret_value,
)

T = TypeVar("T")

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
    """Portable hyperparameter names; each provider translates the ones it supports (see
    :attr:`ParameterSpec.wire`). The CLI's flags are generated from these fields and their descriptions."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1, le=100, description="Passes over the training data.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Absolute peak learning rate.")
    learning_rate_multiplier: float | None = Field(
        None, gt=0, description="Multiplier on the service's own default learning rate (few services take it)."
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

DEFAULT_EPOCHS = 3
"""Epochs when none are given: the Tuner sends this to every backend (so the same fit trains as long
everywhere, and each estimate is for what will run), and every backend's estimate assumes it."""


class ProviderOptions(BaseModel):
    """A backend's own settings, typed and documented (each backend subclasses this as ``Options``).

    One channel carries them from ``Tuner(provider_options=...)``, the CLI's ``-o KEY=VALUE`` and the
    config file to the provider. A misspelt key or a wrong type is a :class:`ConfigError` naming the
    nearest valid key. The settings that were given are stored with each submission in the ledger, so a
    job can be followed later by a provider built the same way. Keys are never options: they come from
    the environment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, values: Mapping[str, Any] | None, *, backend: str = "this provider") -> ProviderOptions:
        """Validate ``values``; every problem becomes one :class:`ConfigError` that says what to do."""
        values = dict(values or {})
        unknown = [key for key in values if key not in cls.model_fields]
        if unknown:
            hints = []
            for key in unknown:
                # str(): a key from a config file or a dict can be a number; it is still just unknown
                near = difflib.get_close_matches(str(key), list(cls.model_fields), n=1, cutoff=0.5)
                hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            valid = ", ".join(cls.model_fields) or "none"
            raise ConfigError(f"Unknown option(s) for {backend}: {', '.join(hints)}. Valid options: {valid} "
                              "(`tuneproxy providers` describes each).")
        try:
            return cls(**values)
        except ValidationError as exc:
            raise config_error_from(exc, f"Invalid option for {backend}") from None

    def stored(self) -> dict[str, Any]:
        """The options that were set explicitly, as JSON-ready values: what the ledger keeps."""
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Option name → its description (for ``tuneproxy providers``)."""
        return {name: field.description or "" for name, field in cls.model_fields.items()}


class DatasetRules(BaseModel):
    """A backend's own data rules, as data, so the core can check them without naming the service."""

    model_config = ConfigDict(frozen=True)

    formats: frozenset[str] = Field(frozenset({"chat"}), description="Example formats the backend trains on.")
    min_examples: int = Field(1, description="Fewest training examples the service accepts.")
    max_examples: int | None = Field(None, description="Most training examples the service accepts.")
    max_file_bytes: int | None = Field(None, description="Largest upload, in bytes, on the path tuneproxy uses.")
    upload_path: str = Field("upload", description="How files reach the service (named in size findings).")
    roles: frozenset[str] = Field(frozenset({"system", "user", "assistant", "tool"}),
                                  description="Message roles the service accepts.")
    message_keys: frozenset[str] | None = Field(None, description="Keys a message may carry (None: any).")
    unknown_message_key_is_error: bool = Field(False, description="An unknown message key fails the upload.")
    example_keys: frozenset[str] | None = Field(None, description="Top-level keys an example may carry.")
    unknown_example_key_is_error: bool = Field(False, description="An unknown example key fails the upload.")
    weight_roles: frozenset[str] = Field(frozenset({"assistant"}),
                                         description="Roles whose messages may carry a training weight.")
    weight_float_allowed: bool = Field(False, description="Weights may be fractions, not just 0/1.")
    roles_must_alternate: bool = Field(False, description="user and assistant turns must alternate.")
    system_only_first: bool = Field(False, description="A system message may only come first.")
    default_context_tokens: int | None = Field(None, description="Training context when no model rule matches.")
    context_tokens: Mapping[str, int] = Field(default_factory=dict,
                                              description="Model id prefix → training context in tokens.")

    def context_for(self, model: str | None) -> int | None:
        """The training context (tokens per example) for ``model``, by longest matching prefix."""
        if model:
            for prefix in sorted(self.context_tokens, key=len, reverse=True):
                if model.startswith(prefix):
                    return self.context_tokens[prefix]
        return self.default_context_tokens


class ParameterSpec(BaseModel):
    """How a provider supports one portable hyperparameter: its limits and its name on the wire."""

    minimum: float | None = Field(None, description="Smallest value the service accepts.")
    maximum: float | None = Field(None, description="Largest value the service accepts.")
    wire: str | None = Field(None, description="The service's own name for it; None: sent another way "
                                               "(the provider's docstring says how).")
    note: str = Field("", description="What a user should know about it on this backend.")


class Credentials(BaseModel):
    """Where a backend's key comes from and what it looks like, so every output can be scrubbed of it."""

    model_config = ConfigDict(frozen=True)

    env_var: str = Field(description="Environment variable that holds the API key.")
    key_pattern: str | None = Field(None, description="Regular expression matching the key's shape.")


Tokenizer = Literal["tiktoken", "huggingface"]


class Capabilities(BaseModel):
    """What a backend can do: the core reads this instead of knowing services by name."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    display_name: str = Field(description="The backend's name as users know it.")
    credentials: Credentials | None = Field(None, description="Its API key, if it needs one.")
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict,
                                                 description="Portable hyperparameters it honours.")
    rules: DatasetRules = Field(default_factory=DatasetRules, description="Its data rules.")
    tokenizer: Tokenizer = Field("huggingface", description="Which tokenizer family bills its tokens.")
    sunset: dt.date | None = Field(None, description="From this date no new jobs are accepted.")
    sunset_note: str = Field("", description="Why, and what stays available after it.")
    poll_seconds: float = Field(10.0, description="How often a waiting client should ask for the job's state.")
    serving_note: str = Field("", description="What serving a tuned model costs beyond its requests (a paid "
                                              "deployment, idle time), shown with a fit's result.")
    trainable: str | None = Field(None, description="A regular expression every model id the backend can fine-tune "
                                                    "matches in full (None: any id).")
    trainable_note: str = Field("", description="What the backend fine-tunes, in words, for the error when a "
                                                "model id does not match ``trainable``.")

    @property
    def env_key(self) -> str | None:
        """The environment variable holding the key (None: no key needed)."""
        return self.credentials.env_var if self.credentials else None


class UploadedFile(BaseModel):
    """A training or validation file the backend holds."""

    id: str
    filename: str
    bytes: int
    purpose: Literal["train", "validation"] = "train"


class JobSpec(BaseModel):
    """Everything a backend needs to create one fine-tuning job (backend settings are the provider's
    own :class:`ProviderOptions`, not part of the spec)."""

    model: str
    training_file: str
    validation_file: str | None = None
    format: Format = "chat"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    intent_id: str = Field(description="tuneproxy's id for this submission; tags the job for reconciling.")


QuantityKind = Literal["training_tokens", "preference_training_tokens", "input_tokens", "output_tokens",
                       "hardware_seconds", "gpu_hours", "deployment_hours"]


class Quantity(BaseModel):
    """A billable amount a backend reports or forecasts; the core prices it with the catalogue."""

    kind: QuantityKind
    amount: float = Field(description="The amount, in the kind's unit (tokens, seconds or hours).")
    low: float | None = Field(None, description="For a forecast: the least it could be.")
    high: float | None = Field(None, description="For a forecast: the most it could be.")
    model: str | None = Field(None, description="The model it is priced by (default: the job's base model).")
    hardware: str | None = Field(None, description="The hardware it ran on, for per-second or hourly prices.")


def training_tokens(quantities: Sequence[Quantity]) -> int | None:
    """The training tokens (supervised and preference) among ``quantities``; None when they count none."""
    amounts = [q.amount for q in quantities if q.kind in ("training_tokens", "preference_training_tokens")]
    return int(sum(amounts)) if amounts else None


class JobRecord(BaseModel):
    """A job as the backend last reported it."""

    provider: str
    job_id: str
    base_model: str = Field(description="The model the job fine-tunes.",
                            validation_alias=AliasChoices("base_model", "model"))
    status: JobStatus
    raw_status: str
    tuned_model: str | None = Field(None, description="The fine-tuned model's name, once there is one.",
                                    validation_alias=AliasChoices("tuned_model", "fine_tuned_model"))
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    estimated_finish: dt.datetime | None = Field(
        None, description="The backend's own estimate of when the job will finish (None when it gives none).")
    error: str | None = Field(None, description="The service's own failure message, verbatim.")
    billable: list[Quantity] = Field(default_factory=list,
                                     description="What the service counts toward the bill so far.")
    billed_usd: float | None = Field(None, description="A money figure the service itself states (it wins "
                                                       "over a figure priced from quantities).")
    intent_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, description="Backend-specific extras, for display.")

    @model_validator(mode="before")
    @classmethod
    def _from_schema_1(cls, data: Any) -> Any:
        # records saved by tuneproxy 0.1 kept the billed token count in its own field
        if isinstance(data, dict) and data.get("trained_tokens") is not None and not data.get("billable"):
            data = {**data, "billable": [{"kind": "training_tokens", "amount": data["trained_tokens"]}]}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def trained_tokens(self) -> int | None:
        """Billable training tokens the service reported, if any."""
        return training_tokens(self.billable)


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
    """A cost figure before the job: the quantities a backend forecasts and, priced, their range in USD.

    A backend fills ``quantities`` (and ``usd`` only when the service itself stated the figure, with
    ``authoritative``); the core prices quantities with the catalogue and fills the dollars.
    """

    provider: str
    model: str
    quantities: list[Quantity] = Field(default_factory=list)
    usd: float | None = None
    usd_low: float | None = None
    usd_high: float | None = None
    wall_time_s: float | None = Field(None, description="How long the run may take, when it can be told.")
    basis: str = Field(description="How the figure was reached, in words, with the price's date.")
    price_source: str | None = Field(None, description="Where the price came from, with its as-of date.")
    authoritative: bool = Field(False, description="True when the service itself gave the figure.")
    stale: bool = Field(False, description="A price used is more than 90 days old.")
    assumed_band: str | None = Field(None, description="Said when a model tuneproxy does not know was priced by a "
                                                       "size band read from its name.")
    requirements: str | None = Field(None, description="What the run needs besides money, where the backend says "
                                                       "(memory, and which hardware fits, for a local run).")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def billable_tokens(self) -> int | None:
        """Training tokens the estimate is for, if it counts tokens."""
        return training_tokens(self.quantities)


class ServingCost(BaseModel):
    """What asking a tuned model costs on its backend: per token, per hour or second of dedicated hardware,
    nothing, or unknown — with a note saying how it is billed."""

    per: Literal["tokens", "hour", "second", "free", "unknown"]
    usd_input_per_m: float | None = Field(None, description="Per 1M input tokens (``per='tokens'``).")
    usd_output_per_m: float | None = Field(None, description="Per 1M output tokens (``per='tokens'``).")
    usd_low: float | None = Field(None, description="Per hour or second: the least of the prices that apply.")
    usd_high: float | None = Field(None, description="Per hour or second: the most of the prices that apply.")
    note: str = Field("", description="How serving is billed, in words.")
    label: str = Field("", description="A word or two for tables: 'serverless', 'dedicated', 'this machine'.")

    def describe(self, long: bool = False) -> str:
        """A short phrase for a table, e.g. ``$0.30/$1.20 per 1M in/out serverless`` or ``$2.90–$6.99/h dedicated``
        (``long``: with the note saying how it is billed instead of the label)."""
        def money(value: float) -> str:
            return f"${value:.2f}" if value >= 0.01 else f"${value:.6f}".rstrip("0")
        if self.per == "tokens" and self.usd_input_per_m is not None and self.usd_output_per_m is not None:
            figure = f"{money(self.usd_input_per_m)}/{money(self.usd_output_per_m)} per 1M in/out"
        elif self.per in ("hour", "second") and self.usd_low is not None and self.usd_high is not None:
            unit = "h" if self.per == "hour" else "s"
            span = money(self.usd_low) if self.usd_low == self.usd_high else \
                f"{money(self.usd_low)}–{money(self.usd_high)}"
            figure = f"{span}/{unit}"
        elif self.per == "free":
            figure = "$0"
        else:
            figure = "unknown"
        if long and self.note:
            return f"{figure} ({self.note})"
        return f"{figure} {self.label}".strip()


class Deployment(BaseModel):
    """A paid serving deployment of a model (billed by the hour while it exists)."""

    provider: str
    deployment_id: str
    model: str = Field(description="The model it serves.")
    serving_model: str | None = Field(None, description="The name to send inference requests to.")
    state: Literal["creating", "ready", "stopping", "stopped", "failed", "unknown"]
    raw_state: str
    hardware: str | None = None
    usd_per_hour: float | None = None
    created_at: dt.datetime | None = None


class GenerationParams(BaseModel):
    """The generation settings every endpoint takes, so an evaluation asks every backend the same way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(256, ge=1, description="Most tokens to generate.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 is greedy: the same answer every time.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    seed: int | None = Field(None, ge=0, description="Sampling seed, where the backend honours one.")
    stop: tuple[str, ...] = Field((), max_length=4, description="Strings that end the reply.")


class Usage(BaseModel):
    """Tokens one completion read and wrote."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class Completion(BaseModel):
    """One generation from an endpoint."""

    text: str
    finish_reason: str = Field(description="Why generation stopped: stop, length, or the service's word.")
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    cost_usd: float | None = None


Message = Mapping[str, Any]
Outcome = Completion | ProviderError


def generation_params(params: GenerationParams | None, overrides: Mapping[str, Any]) -> GenerationParams:
    """``params`` (default: the defaults) with ``overrides`` by name, validated (a wrong one is a
    :class:`ConfigError`)."""
    base = params or GenerationParams()
    if not overrides:
        return base
    try:
        return GenerationParams(**{**base.model_dump(), **overrides})
    except ValidationError as exc:
        raise config_error_from(exc, "Invalid generation setting") from None


class Endpoint(ABC):
    """Something that answers chat messages: a tuned model, or its base for comparison. Async first.

    Generation settings are :class:`GenerationParams` (or the same names as keywords). A batch returns
    one outcome per conversation: a :class:`Completion`, or the :class:`ProviderError` that item ended in
    (a :class:`RateLimited` item is retried first, waiting what the service asked), so one failure never
    loses the other answers.
    """

    model: str
    # True when a batch is answered faster than its items one by one (a local model generating them
    # together): the evaluation runner then sends this endpoint batches through acomplete_many.
    batches: bool = False
    sleep: Callable[[float], Awaitable[None]] = staticmethod(asyncio.sleep)  # type: ignore[assignment]
    rate_limit_retries: int = 4
    max_rate_limit_wait: float = 60.0  # a longer wait asked for is cut to this, then the item is retried

    @abstractmethod
    async def _generate(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        """Generate one reply to ``messages`` (raise :class:`ProviderError` subclasses on failure)."""

    async def acomplete(self, messages: Sequence[Message], params: GenerationParams | None = None,
                        **overrides: Any) -> Completion:
        """One reply to ``messages``; a rate limit is waited out a few times before it is raised."""
        settings = generation_params(params, overrides)
        for attempt in range(self.rate_limit_retries + 1):
            try:
                return await self._generate(messages, settings)
            except RateLimited as exc:
                if attempt == self.rate_limit_retries:
                    raise
                asked = exc.retry_after if exc.retry_after is not None else 2.0 ** attempt
                await self.sleep(min(asked, self.max_rate_limit_wait))
        raise AssertionError("unreachable")  # pragma: no cover

    async def acomplete_many(self, batch: Sequence[Sequence[Message]], params: GenerationParams | None = None,
                             *, concurrency: int = 4, **overrides: Any) -> list[Outcome]:
        """One outcome per conversation, in order, at most ``concurrency`` at a time."""
        settings = generation_params(params, overrides)
        gate = asyncio.Semaphore(concurrency)

        async def one(messages: Sequence[Message]) -> Outcome:
            async with gate:
                try:
                    return await self.acomplete(messages, settings)
                except ProviderError as exc:
                    return exc

        return list(await asyncio.gather(*(one(m) for m in batch)))

    async def aclose(self) -> None:  # noqa: B027 - optional hook: most endpoints hold nothing open
        """Release what the endpoint holds open in the running event loop (HTTP clients)."""

    def complete(self, messages: Sequence[Message], params: GenerationParams | None = None,
                 **overrides: Any) -> Completion:
        """Blocking twin of :meth:`acomplete`; works inside a running event loop (a notebook) too."""
        return run_blocking(self._closing(self.acomplete(messages, params, **overrides)))

    def complete_many(self, batch: Sequence[Sequence[Message]], params: GenerationParams | None = None,
                      *, concurrency: int = 4, **overrides: Any) -> list[Outcome]:
        """Blocking twin of :meth:`acomplete_many`; works inside a running event loop too."""
        return run_blocking(self._closing(self.acomplete_many(batch, params, concurrency=concurrency,
                                                              **overrides)))

    async def _closing(self, work: Awaitable[T]) -> T:
        # each blocking call runs its own event loop: close its clients before the loop goes away
        try:
            return await work
        finally:
            await self.aclose()


def run_blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to completion from blocking code. Inside a running event loop (Jupyter), where
    ``asyncio.run`` refuses, it runs on a fresh loop in a worker thread and this call waits for it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneproxy") as pool:
        return pool.submit(asyncio.run, work).result()


def timed(start: float) -> float:
    """Seconds since ``start`` (a ``time.perf_counter()`` reading)."""
    return time.perf_counter() - start


class Provider(ABC):
    """A fine-tuning backend. One subclass per service, plus the local trainer.

    Subclasses set ``name``, ``Options`` (their :class:`ProviderOptions`), ``CAPABILITIES`` (or override
    :attr:`capabilities` when what they support depends on the options) and a ``STATUS_MAP`` from every
    raw status the service documents to one :class:`JobStatus` (documented statuses left out on purpose
    go in ``DOCUMENTED_UNMAPPED``). They speak only to their service: saving records is the core's job
    (the ledger), never the provider's.

    ``transport`` (an httpx/httpx2 transport: replay in tests), ``clock`` and ``sleep`` are the seams
    tests use; they are not options and are never stored.
    """

    name: ClassVar[str]
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions
    CAPABILITIES: ClassVar[Capabilities]
    STATUS_MAP: ClassVar[Mapping[str, JobStatus]]
    DOCUMENTED_UNMAPPED: ClassVar[frozenset[str]] = frozenset()
    # Modules the backend needs beyond tuneproxy's own dependencies, and the extra that installs them.
    REQUIRES: ClassVar[tuple[str, ...]] = ()
    EXTRA: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A backend's key variable and key shape are scrubbed from every message once its class exists,
        # so the core never lists services' keys itself.
        super().__init_subclass__(**kwargs)
        caps = cls.__dict__.get("CAPABILITIES")
        if isinstance(caps, Capabilities) and caps.credentials:
            register_secret(caps.credentials.env_var, caps.credentials.key_pattern)

    def __init__(self, options: ProviderOptions | Mapping[str, Any] | None = None, *,
                 api_key: str | None = None, transport: Any = None, clock: Clock = utc_now,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if isinstance(options, ProviderOptions) and not isinstance(options, self.Options):
            raise ConfigError(f"{type(options).__name__} are not {self.CAPABILITIES.display_name}'s options: "
                              f"give a {self.Options.__name__} or a dict.")
        self.options = (options if isinstance(options, self.Options)
                        else self.Options.parse(options, backend=self.CAPABILITIES.display_name))
        self.api_key = api_key
        if api_key:
            register_secret_value(api_key)
        self.transport = transport
        self.clock = clock
        self.sleep = sleep

    def __repr__(self) -> str:  # never show the key
        return f"<{type(self).__name__} {self.name}>"

    @property
    def capabilities(self) -> Capabilities:
        """What this instance supports (override when it depends on the options)."""
        return self.CAPABILITIES

    def status(self, raw: str) -> JobStatus:
        """Normalize one raw status string of this service."""
        return normalize_status(self.name, raw, self.STATUS_MAP)

    def translate(self, hyperparameters: Hyperparameters,
                  supported_by: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """Check every given portable parameter is supported and in range; return them by portable name.

        ``supported_by`` (parameter → display names of the providers that support it, which the core
        builds from the registry) lets the error name where an unsupported parameter would work.
        """
        caps = self.capabilities
        given = hyperparameters.given()
        unsupported = [k for k in given if k not in caps.parameters]
        if unsupported:
            elsewhere = "".join(
                f" {key} is supported by: {', '.join(supported_by[key])}."
                for key in sorted(unsupported) if supported_by and supported_by.get(key)
            )
            names = ", ".join(sorted(unsupported))
            raise UnsupportedParameter(
                f"{caps.display_name} does not support: {names}.{elsewhere} "
                "Remove it, or choose a provider that supports it "
                "(`tuneproxy providers --json` lists what each supports)."
            )
        for key, value in given.items():
            spec = caps.parameters[key]
            if isinstance(value, (int, float)):
                if spec.minimum is not None and value < spec.minimum:
                    raise UnsupportedParameter(f"{key}={value} is below {caps.display_name}'s minimum {spec.minimum}.")
                if spec.maximum is not None and value > spec.maximum:
                    raise UnsupportedParameter(f"{key}={value} is above {caps.display_name}'s maximum {spec.maximum}.")
        return given

    def wire_parameters(self, hyperparameters: Hyperparameters) -> dict[str, Any]:
        """The given hyperparameters under the service's own names (those with a ``wire`` name)."""
        given = self.translate(hyperparameters)
        specs = self.capabilities.parameters
        return {specs[key].wire: value for key, value in given.items() if specs[key].wire}  # type: ignore[misc]

    def check(self, spec: JobSpec) -> list[str]:
        """Backend-specific preflight problems for ``spec`` beyond the dataset rules (messages to show)."""
        return []

    def submit_problems(self) -> list[str]:
        """Settings a submission needs that validating and estimating do not (a model to train into),
        checked before anything is uploaded; messages to show. Default: none."""
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
        """Ask the backend to stop the job (it answers at once; follow the job to see it stop)."""

    @abstractmethod
    def find_job(self, intent_id: str) -> JobRecord | None:
        """The job created for ``intent_id`` if it exists — how a lost create response is reconciled."""

    @abstractmethod
    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """What the job will bill, before anything is paid: the quantities it forecasts (the core prices
        them), or the service's own money figure (``authoritative``)."""

    @abstractmethod
    def endpoint(self, model: str) -> Endpoint:
        """An endpoint that generates with ``model`` (a tuned model name or a servable base model).

        Never deploys anything: where the service serves a tuned model only on a paid deployment, the
        user deploys it first (:class:`Deployable`) and passes its serving name here.
        """

    def inference_model(self, base: str) -> str | None:
        """The model id that serves ``base`` (the model a job trained on) for comparison, or None when
        this backend cannot serve it. Default: the same id."""
        return base

    def serving_cost(self, model: str) -> ServingCost:
        """What asking the model tuned from ``model`` costs here. Default: the catalogue's per-token inference
        prices of the model that serves ``model`` (unknown when the catalogue has none). A backend that serves
        tuned models on dedicated hardware says so by overriding this."""
        from tuneproxy.prices import load_catalogue

        serving = self.inference_model(model) or model
        catalogue = load_catalogue()
        given = catalogue.match(self.name, serving, "inference_input"), catalogue.match(self.name, serving,
                                                                                      "inference_output")
        if given[0] is None or given[1] is None:
            return ServingCost(per="unknown", note="no serving price in the catalogue")
        return ServingCost(per="tokens", usd_input_per_m=given[0].usd * 1e6 / given[0].per,
                           usd_output_per_m=given[1].usd * 1e6 / given[1].per, note="per request, serverless",
                           label="serverless")

    def prices(self) -> Sequence[Any]:
        """Prices this instance knows beyond the catalogue (:class:`tuneproxy.prices.Price` rows — a
        user's own GPU-hour price), matched first. Default: none."""
        return ()

    def serialize(self, example: Any) -> dict[str, Any]:
        """One example in this backend's upload format (default: the example as loaded)."""
        return dict(example.record)


@runtime_checkable
class Deployable(Protocol):
    """A backend that serves a tuned model only on a paid, dedicated deployment.

    Never triggered implicitly: creating one costs money by the hour, so it happens only when the user
    asks (``TunedModel.deploy()``, ``tuneproxy deployments create``), is written to the ledger with its
    hourly price, and ``tuneproxy deployments list|delete`` can find and stop it.
    """

    def deploy(self, model: str, *, hardware: str | None = None) -> Deployment:
        """Start serving ``model``; returns at once (the deployment may still be ``creating``)."""
        ...

    def deployment(self, deployment_id: str) -> Deployment:
        """The deployment's current state."""
        ...

    def undeploy(self, deployment_id: str) -> Deployment:
        """Stop and delete the deployment (billing stops)."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """A backend that can restart a stopped job from its latest checkpoint."""

    def resume(self, job_id: str) -> JobRecord:
        """Restart the job; returns its new state."""
        ...
