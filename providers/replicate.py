"""Replicate trainings of a language-model LoRA trainer, through the ``replicate`` 1.0.x SDK on ``httpx``.

Facts this module relies on (see reference/providers-fireworks-replicate.md §2):

- A training runs a *trainer*: a model version (``owner/name:<64-hex version>``) whose Cog ``train()`` takes
  the training's ``input`` as is, so input names depend on the trainer. The defaults here are the documented
  Llama-family LoRA trainer's (``meta/llama-2-7b`` and siblings: ``train_data``, ``num_train_epochs``,
  ``train_batch_size``, ``learning_rate``, ``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``seed``,
  ``validation_data``); :class:`ReplicateOptions` maps the portable names to another trainer's, and the
  parameters the provider accepts follow from that mapping (:attr:`ReplicateProvider.capabilities`). A model
  given without ``:version`` trains its latest version, read from ``GET /v1/models/{owner}/{name}``.
- The trained weights go to a *destination* model that must exist first. tuneproxy creates one only when
  asked (``create_destination=true``: a private model on ``destination_hardware``); otherwise a missing one is
  an error that says how to make it.
- Data goes up through the files API (``POST /v1/files``, multipart); the training's input names the file by
  its ``urls.get`` URL. The trainer reads ``{"prompt", "completion"}`` or ``{"text"}`` lines: a conversation
  is rendered to a prompt with :func:`tuneproxy.dataset.convert.render_prompt`, the same rendering the
  endpoint sends to the tuned model.
- Trainings keep no metadata. The intent tag rides in the data URL's fragment (``...#tp<tag>``): the input is
  kept verbatim and listed with every training, and a fragment is never sent when the trainer downloads the
  URL. :meth:`ReplicateProvider.find_job` looks for it there.
- Statuses: ``starting | processing | succeeded | failed | canceled``. ``logs`` is the whole log so far; it is
  read into events, one per line (progress-bar redraws left out), with losses where the trainer prints them
  (Hugging Face Trainer's ``{'loss': …, 'epoch': …}`` dicts or ``loss=…`` pairs).
- The bill is ``metrics.predict_time`` (seconds on the trainer's hardware; queueing is free) × the catalogue's
  per-second price of ``hardware``. The SDK's ``Training`` drops ``metrics``, so a training is read as raw JSON
  through the SDK's own request layer and then parsed with the SDK's parser.
- The SDK wraps every transport in a ``RetryTransport`` that re-sends GETs up to 10 times with real sleeps.
  The client here is built without it (:func:`direct_client_class`): reads are retried by tuneproxy's one
  ``Retrier`` (the provider's injectable sleep), and nothing is retried twice over.
- A tuned version answers predictions (``POST /v1/predictions`` with ``Prefer: wait``), polled until done;
  a language model's output is a list of text chunks, joined. Its cost is the prediction's
  ``metrics.predict_time`` × the per-second price of ``destination_hardware``; a private model that does not
  boot fast also bills its setup and idle time, which no prediction reports (the serving note says so).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, field_validator

from tuneproxy.contract import (
    DEFAULT_EPOCHS,
    PORTABLE_HYPERPARAMETERS,
    Capabilities,
    Completion,
    CostEstimate,
    Credentials,
    DatasetRules,
    Endpoint,
    GenerationParams,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    Message,
    ParameterSpec,
    Quantity,
    ServingCost,
    Stats,
    UploadedFile,
    Usage,
    timed,
)
from tuneproxy.dataset.convert import prompt_completion_record, render_prompt, text_record
from tuneproxy.dataset.examples import Example
from tuneproxy.errors import ConfigError, NotFound, ProviderError, RateLimited

from ._chat import LoopClients
from ._http import intent_tag, to_datetime
from ._sdk import SDKOptions, SDKProvider

DESTINATION_ENV = "REPLICATE_DESTINATION"
BASE_URL = "https://api.replicate.com"
TRAINING_LIST_PAGES = 10  # find_job reads the newest trainings, this many pages of them

# The documented Llama-family LoRA trainer (reference §2.5): portable name -> its input name, and its limits.
LLAMA_INPUTS: dict[str, str] = {
    "epochs": "num_train_epochs",
    "learning_rate": "learning_rate",
    "batch_size": "train_batch_size",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "seed": "seed",
}
LIMITS: dict[str, ParameterSpec] = {
    "epochs": ParameterSpec(minimum=1),
    "batch_size": ParameterSpec(minimum=1),
    "lora_rank": ParameterSpec(minimum=1),
    "lora_dropout": ParameterSpec(minimum=0, maximum=1),
}
LLAMA_GENERATION: dict[str, str] = {"max_tokens": "max_new_tokens", "temperature": "temperature",
                                    "top_p": "top_p", "seed": "seed", "stop": "stop_sequences"}

_MODEL_REF = re.compile(r"(?P<owner>[A-Za-z0-9][\w.-]*)/(?P<name>[\w.-]+)(?::(?P<version>[0-9a-f]{64}))?")
_VERSION_ONLY = re.compile(r"[0-9a-f]{64}")
_PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's "  5%|▌   | 50/1000 [...]"
_LOSS_DICT = re.compile(r"'(?P<key>loss|eval_loss|epoch|step|global_step)':\s*(?P<value>-?[0-9.]+(?:e[-+]?\d+)?)")
_LOSS_PAIR = re.compile(r"\b(?P<key>loss|eval_loss|train_loss|val_loss|valid_loss|epoch|step)\s*[=:]\s*"
                        r"(?P<value>-?[0-9.]+(?:e[-+]?\d+)?)", re.IGNORECASE)


class ReplicateOptions(SDKOptions):
    """Replicate's settings (the key comes from ``REPLICATE_API_TOKEN``). The defaults suit the documented
    Llama-family LoRA trainer (``meta/llama-2-7b`` and siblings); another trainer needs its own input names."""

    destination: str | None = Field(None, description=f"The model (owner/name) that receives the trained version "
                                                      f"(default: {DESTINATION_ENV}).")
    create_destination: bool = Field(False, description="Create the destination model (private) when it does not "
                                                         "exist; otherwise a missing one is an error.")
    destination_hardware: str = Field("gpu-a40-large", min_length=1, description="Hardware SKU of a destination "
                                      "model tuneproxy creates; also what its predictions are priced by.")
    hardware: str = Field("8x gpu-a40-large", min_length=1, description="The trainer's hardware, as on its /train "
                          "page and in the price catalogue: what the training's seconds are priced by.")
    trainer_inputs: dict[str, str] = Field(default_factory=lambda: dict(LLAMA_INPUTS),
                                           description="Portable hyperparameter -> the trainer's input name; the "
                                                       "parameters not listed are not supported.")
    data_input: str = Field("train_data", min_length=1, description="The trainer's input for the training file.")
    validation_input: str | None = Field("validation_data", description="The trainer's input for a validation "
                                                                         "file (none: the holdout is not sent).")
    data_format: Literal["auto", "text"] = Field("auto", description="Lines the trainer reads: prompt/completion "
                                                                     "pairs and text (auto), or text only.")
    prompt_input: str = Field("prompt", min_length=1, description="The tuned model's input for the prompt.")
    generation_inputs: dict[str, str] = Field(default_factory=lambda: dict(LLAMA_GENERATION),
                                              description="Generation setting -> the model's input name.")
    tokens_per_second: float = Field(3000.0, gt=0, description="Assumed training throughput for the estimate "
                                                               "(tokens per second on the trainer's hardware).")
    setup_seconds: float = Field(240.0, ge=0, description="Assumed billed start-up time of a training, in seconds.")
    prediction_wait: int = Field(60, ge=1, le=60, description="Seconds a prediction request waits for its answer "
                                                              "before it is polled.")
    prediction_poll_seconds: float = Field(1.0, ge=0, description="Seconds between two reads of a prediction.")
    prediction_polls: int = Field(300, ge=1, description="Reads of a prediction before giving up on it.")

    @field_validator("trainer_inputs")
    @classmethod
    def _portable(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(PORTABLE_HYPERPARAMETERS))
        if unknown:
            raise ValueError(f"not portable hyperparameters: {', '.join(unknown)} (portable ones: "
                             f"{', '.join(PORTABLE_HYPERPARAMETERS)})")
        return value

    @field_validator("destination")
    @classmethod
    def _owner_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", value):
            raise ValueError(f"{value!r} is not owner/name")
        return value


CAPABILITIES = Capabilities(
    display_name="Replicate",
    trainable=r"[\w.-]+/[\w.-]+(:[0-9a-f]{64})?",
    trainable_note="Replicate trains a trainer named owner/name or owner/name:<version id>",
    credentials=Credentials(env_var="REPLICATE_API_TOKEN", key_pattern=r"r8_[A-Za-z0-9]{8,}"),
    parameters={key: LIMITS.get(key, ParameterSpec()).model_copy(update={"wire": wire})
                for key, wire in LLAMA_INPUTS.items()},
    rules=DatasetRules(
        formats=frozenset({"chat", "completion", "text"}),
        min_examples=1,
        roles=frozenset({"system", "user", "assistant"}),
        default_context_tokens=2048,
    ),
    serving_note=("A private model on Replicate bills its hardware while it sets up and idles too, unless it "
                  "boots fast; the recorded cost of a prediction counts only its own seconds."),
)


def api_error(response: httpx.Response) -> Any:
    """The SDK's ``ReplicateError`` for an error response, carrying what tuneproxy's error mapping reads: the
    status code, the service's words (``detail`` or ``title``) and the response headers (``Retry-After``) —
    the headers only, never the response, whose request holds the key."""
    from replicate.exceptions import ReplicateError

    exc = ReplicateError.from_response(response)
    exc.status_code = response.status_code  # type: ignore[attr-defined]
    exc.message = exc.detail or exc.title or response.reason_phrase  # type: ignore[attr-defined]
    exc.response = types.SimpleNamespace(headers=dict(response.headers))  # type: ignore[attr-defined]
    return exc


@functools.cache
def direct_client_class() -> type:
    """``replicate.Client`` with its HTTP clients built straight on the injected transport: the SDK wraps any
    transport in its ``RetryTransport``, which re-sends GETs up to 10 times with real sleeps, under
    tuneproxy's own retries. Errors carry their status and headers (:func:`api_error`)."""
    from replicate.__about__ import __version__
    from replicate.client import Client

    class DirectClient(Client):
        def __init__(self, api_token: str, *, base_url: str | None, timeout: float, transport: Any) -> None:
            root = base_url or os.environ.get("REPLICATE_BASE_URL") or BASE_URL  # as the SDK's own client
            super().__init__(api_token, base_url=root)
            self._settings = {"base_url": root, "timeout": timeout, "headers": {
                "User-Agent": f"replicate-python/{__version__}", "Authorization": f"Bearer {api_token}"}}
            self._transport = transport
            self._sync: httpx.Client | None = None
            self._async: httpx.AsyncClient | None = None

        @property
        def _client(self) -> httpx.Client:
            if self._sync is None:
                self._sync = httpx.Client(transport=self._transport or httpx.HTTPTransport(), **self._settings)
            return self._sync

        @property
        def _async_client(self) -> httpx.AsyncClient:
            if self._async is None:
                self._async = httpx.AsyncClient(transport=self._transport or httpx.AsyncHTTPTransport(),
                                                **self._settings)
            return self._async

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
            response = self._client.request(method, path, **kwargs)
            if 400 <= response.status_code < 600:
                raise api_error(response)
            return response

        async def _async_request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
            response = await self._async_client.request(method, path, **kwargs)
            if 400 <= response.status_code < 600:
                raise api_error(response)
            return response

        async def close(self) -> None:
            if self._async is not None:
                await self._async.aclose()

        def __repr__(self) -> str:  # never show the key
            return "<DirectClient replicate>"

    return DirectClient


class ReplicateProvider(SDKProvider):
    """Replicate trainings through the replicate SDK on an httpx transport (a
    :class:`tuneproxy.recording.ReplayTransport` in tests). Settings: :class:`ReplicateOptions`."""

    name: ClassVar[str] = "replicate"
    Options = ReplicateOptions
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES
    REQUEST_ID_HEADERS: ClassVar[tuple[str, ...]] = ("cf-ray",)  # Cloudflare's ray id: what support asks for
    STATUS_MAP: ClassVar[dict[str, JobStatus]] = {
        "starting": JobStatus.QUEUED,
        "processing": JobStatus.RUNNING,
        "succeeded": JobStatus.SUCCEEDED,
        "failed": JobStatus.FAILED,
        "canceled": JobStatus.CANCELLED,
    }

    # ------------------------------------------------------------------ options and clients

    @property
    def replicate_options(self) -> ReplicateOptions:
        """The options, typed."""
        assert isinstance(self.options, ReplicateOptions)
        return self.options

    @property
    def capabilities(self) -> Capabilities:
        """The portable parameters the configured trainer takes (its ``trainer_inputs``), under its names."""
        mapping = self.replicate_options.trainer_inputs
        if mapping == LLAMA_INPUTS:
            return self.CAPABILITIES
        parameters = {key: LIMITS.get(key, ParameterSpec()).model_copy(update={"wire": wire})
                      for key, wire in mapping.items()}
        return self.CAPABILITIES.model_copy(update={"parameters": parameters})

    def sdk_errors(self) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
        from replicate.exceptions import ReplicateError

        return ReplicateError, (httpx.TransportError,)

    def make_client(self, asynchronous: bool) -> Any:
        """The SDK's client on the injected transport, without the SDK's retry layer (:func:`direct_client_class`)."""
        return direct_client_class()(self._require_key(), base_url=self.settings.base_url,
                                     timeout=self.settings.timeout, transport=self.transport)

    @property
    def destination(self) -> str:
        """The destination model: the ``destination`` option, else ``REPLICATE_DESTINATION``."""
        value = self.replicate_options.destination or os.environ.get(DESTINATION_ENV)
        if not value:
            raise ConfigError(self._no_destination())
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", value):
            raise ConfigError(f"{DESTINATION_ENV}={value!r} is not a Replicate model name (owner/name).")
        return value

    def _no_destination(self) -> str:
        return (f"Replicate puts a trained version into a destination model: set {DESTINATION_ENV}=owner/name "
                "or pass `-o destination=owner/name` (Python: provider_options={'destination': ...}); add "
                "`-o create_destination=true` to have tuneproxy create it as a private model.")

    def submit_problems(self) -> list[str]:
        """A destination must be named before anything is uploaded (an estimate needs none)."""
        return [] if self.replicate_options.destination or os.environ.get(DESTINATION_ENV) else [self._no_destination()]

    # ------------------------------------------------------------------ upload

    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        """Send the file through the files API; its id for the training is the URL the trainer reads it from."""
        path = Path(path)
        files = self.client.files
        uploaded = self._call(f"upload {path.name}", lambda: files.create(
            path, content_type="application/jsonl", metadata={"tuneproxy": purpose}), retry=False)
        url = uploaded.urls.get("get")
        if not url:
            raise self._unreadable(f"upload {path.name}", "a file without its URL")
        return UploadedFile(id=url, filename=path.name, bytes=uploaded.size, purpose=purpose)

    # ------------------------------------------------------------------ jobs

    def trainer(self, model: str) -> tuple[str, str, str]:
        """(owner, name, version id) of a trainer given as ``owner/name:version``, or as ``owner/name`` (its
        latest version, read from Replicate). A model Replicate does not have is :class:`NotFound`."""
        found = _MODEL_REF.fullmatch(model)
        if not found:
            raise ConfigError(f"{model!r} is not a Replicate trainer: give owner/name or owner/name:<version id>.")
        owner, name, version = found.group("owner"), found.group("name"), found.group("version")
        if version:
            return owner, name, version
        models = self.client.models
        try:
            current = self._call(f"read model {owner}/{name}", lambda: models.get(f"{owner}/{name}"), retry=True)
        except NotFound:
            raise NotFound(f"Replicate has no model {owner}/{name}: check the name at "
                           f"https://replicate.com/{owner}/{name}.", provider=self.name, status_code=404,
                           raw="404") from None
        latest = current.latest_version
        if latest is None:
            raise ProviderError(f"Replicate's {owner}/{name} has no version to train: name one as "
                                f"{owner}/{name}:<version id>.", provider=self.name)
        return owner, name, latest.id

    def ensure_destination(self) -> str:
        """The destination model, checked to exist (and created, private, when ``create_destination``)."""
        destination = self.destination
        models = self.client.models
        try:
            self._call(f"read model {destination}", lambda: models.get(destination), retry=True)
            return destination
        except NotFound:
            if not self.replicate_options.create_destination:
                raise NotFound(
                    f"The destination model {destination} does not exist on Replicate. Create it at "
                    "https://replicate.com/create, or pass `-o create_destination=true` to have tuneproxy create it "
                    f"(private, on {self.replicate_options.destination_hardware}).", provider=self.name,
                    status_code=404, raw="404") from None
        owner, name = destination.split("/")
        self._call(f"create model {destination}", lambda: models.create(
            owner, name, visibility="private", hardware=self.replicate_options.destination_hardware,
            description="Fine-tunes made with tuneproxy"), retry=False)
        return destination

    def create_arguments(self, spec: JobSpec, version: str) -> dict[str, Any]:
        """The training's ``input``: the given hyperparameters under the trainer's names, the data URLs (the
        training file's carrying the intent tag in its fragment)."""
        options = self.replicate_options
        given = self.wire_parameters(spec.hyperparameters)
        alpha = self.capabilities.parameters.get("lora_alpha")
        if alpha is not None and isinstance(given.get(alpha.wire), float) and given[alpha.wire].is_integer():
            given[alpha.wire] = int(given[alpha.wire])  # the trainer's lora_alpha is an integer input
        given[options.data_input] = f"{spec.training_file.split('#')[0]}#{intent_tag(spec.intent_id)}"
        if spec.validation_file and options.validation_input:
            given[options.validation_input] = spec.validation_file
        return given

    def submit(self, spec: JobSpec) -> JobRecord:
        """Check the destination, then create the training (sent once: a lost answer is found by
        :meth:`find_job`). An unknown trainer or version is :class:`NotFound` with what to check."""
        owner, name, version = self.trainer(spec.model)
        destination = self.ensure_destination()
        training_input = self.create_arguments(spec, version)
        trainings = self.client.trainings
        try:
            training = self._create(spec, lambda: trainings.create(
                model=f"{owner}/{name}", version=version, input=training_input, destination=destination))
        except NotFound:
            raise NotFound(f"Replicate has no trainer {owner}/{name}:{version}: check the version at "
                           f"https://replicate.com/{owner}/{name}/versions (a model without its trainer cannot be "
                           "fine-tuned).", provider=self.name, status_code=404, raw="404") from None
        return self._record(training, {}, intent_id=spec.intent_id)

    def _read(self, job_id: str) -> tuple[Any, dict[str, Any]]:
        """(the SDK's Training, the raw JSON: the SDK drops ``metrics``), from one GET."""
        from replicate.training import _json_to_training

        def read() -> tuple[Any, dict[str, Any]]:
            raw = self.client._request("GET", f"/v1/trainings/{job_id}").json()
            return _json_to_training(self.client, raw), raw

        return self._call(f"read training {job_id}", read, retry=True)

    def refresh(self, job_id: str) -> JobRecord:
        """The training as Replicate reports it now, with its billed seconds once it has ended."""
        training, raw = self._read(job_id)
        return self._record(training, raw)

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """The training's log, one event per line (``log-N``, N its line number), with losses where a line
        prints them, and the error of a failed training. Those after event id ``after``."""
        training, _ = self._read(job_id)
        found = log_events(training.logs or "", to_datetime(training.started_at or training.created_at)
                           or self.clock())
        if training.status == "failed" and training.error:
            when = to_datetime(training.completed_at) or self.clock()
            found.append(JobEvent(id="error", time=when, level="error", message=str(training.error)))
        ids = [event.id for event in found]
        return found[ids.index(after) + 1:] if after in ids else found

    def cancel(self, job_id: str) -> JobRecord:
        """Ask Replicate to cancel the training; it answers with the training (``canceled`` once stopped)."""
        trainings = self.client.trainings
        training = self._call(f"cancel training {job_id}", lambda: trainings.cancel(job_id), retry=False)
        return self._record(training, {})

    def find_job(self, intent_id: str) -> JobRecord | None:
        """The training whose data URL carries the intent tag (in its fragment), among the newest
        :data:`TRAINING_LIST_PAGES` pages of trainings."""
        tag = intent_tag(intent_id)
        key = self.replicate_options.data_input
        trainings = self.client.trainings
        cursor: Any = ...
        for _ in range(TRAINING_LIST_PAGES):
            page = self._call(f"look up the training for intent {intent_id}",
                              lambda cursor=cursor: trainings.list(cursor), retry=True)
            for training in page.results:
                data = str((training.input or {}).get(key, ""))
                if data.endswith(f"#{tag}"):
                    return self._record(training, {}, intent_id=intent_id)
            if not page.next:
                return None
            cursor = page.next
        return None

    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """Seconds on the trainer's hardware: an assumed start-up plus tokens × epochs at an assumed
        throughput (both options), from half to twice that. Replicate states no figure before the run; the
        bill is what the training reports it used."""
        options = self.replicate_options
        epochs = spec.hyperparameters.epochs or DEFAULT_EPOCHS
        tokens = stats.billable_tokens(epochs)
        seconds = options.setup_seconds + tokens / options.tokens_per_second
        return CostEstimate(
            provider=self.name, model=spec.model,
            quantities=[Quantity(kind="hardware_seconds", amount=round(seconds, 1), low=round(seconds / 2, 1),
                                 high=round(seconds * 2, 1), hardware=options.hardware)],
            wall_time_s=seconds,
            basis=(f"{tokens:,} tokens ({stats.total_tokens:,} × {epochs} epochs) at an assumed "
                   f"{options.tokens_per_second:,.0f} tokens/s plus {options.setup_seconds:.0f} s start-up on "
                   f"{options.hardware}, from half to twice that (assumptions, not Replicate's figure)"),
        )

    def endpoint(self, model: str) -> Endpoint:
        """Predictions on ``model``: a trained version (``owner/name:<version>``, what a training outputs) or
        a model Replicate serves by name (``owner/name``)."""
        return PredictionEndpoint(self, model)

    def serving_cost(self, model: str) -> ServingCost:
        """Predictions per second on the destination model's hardware (a private model that does not boot fast
        also bills its set-up and idle time)."""
        from tuneproxy.prices import load_catalogue

        hardware = self.replicate_options.destination_hardware
        price = load_catalogue().match(self.name, None, "hardware_second", hardware)
        if price is None:
            return ServingCost(per="unknown", note=f"per second on {hardware}; no price in the catalogue")
        return ServingCost(per="second", usd_low=price.usd / price.per, usd_high=price.usd / price.per,
                           note=f"per second on {hardware}, plus set-up and idle time unless it boots fast",
                           label="private model")

    def serialize(self, example: Example) -> dict[str, Any]:
        """``{"text"}`` for text examples (and everything, with ``data_format=text``), ``{"prompt",
        "completion"}`` for the rest, a conversation rendered as the endpoint renders it."""
        if example.format == "text" or self.replicate_options.data_format == "text":
            return text_record(example)
        return prompt_completion_record(example)

    # ------------------------------------------------------------------ wire → contract

    def _record(self, training: Any, raw: Mapping[str, Any], intent_id: str | None = None) -> JobRecord:
        status = self.status(str(training.status))
        metrics = raw.get("metrics") if isinstance(raw.get("metrics"), Mapping) else {}
        seconds = metrics.get("predict_time") if metrics else None
        hardware = self.replicate_options.hardware
        output = training.output if isinstance(training.output, Mapping) else {}
        version = training.version if isinstance(training.version, str) else getattr(training.version, "id", "")
        finished = (training.completed_at or self.clock()) if status.terminal else None
        return JobRecord(
            provider=self.name, job_id=training.id, base_model=f"{training.model}:{version}" if version
            else training.model, status=status, raw_status=str(training.status),
            tuned_model=output.get("version") if status is JobStatus.SUCCEEDED else None,
            created_at=to_datetime(training.created_at), finished_at=to_datetime(finished),
            error=(str(training.error) if training.error else None) if status is JobStatus.FAILED else None,
            billable=[Quantity(kind="hardware_seconds", amount=float(seconds), hardware=hardware)]
            if isinstance(seconds, (int, float)) else [],
            intent_id=intent_id,
            detail={"destination": training.destination, "hardware": hardware,
                    "predict_time_s": seconds, "total_time_s": metrics.get("total_time") if metrics else None},
        )


def log_events(logs: str, when: Any) -> list[JobEvent]:
    """One event per log line, ``log-N`` by its line number (stable: the log only grows), with the losses,
    epoch and step a line prints. Empty lines and progress-bar redraws without a loss are left out."""
    found = []
    for number, line in enumerate(logs.splitlines(), start=1):
        text = line.strip()
        if not text or (_PROGRESS_BAR.search(text) and "loss" not in text):
            continue  # a progress bar redrawn step by step: hundreds of lines saying nothing a loss line does not
        values: dict[str, float] = {}
        for match in (*_LOSS_DICT.finditer(text), *_LOSS_PAIR.finditer(text)):
            try:
                values.setdefault(match.group("key").lower(), float(match.group("value")))
            except ValueError:
                continue
        train = values.get("loss", values.get("train_loss"))
        valid = values.get("eval_loss", values.get("val_loss", values.get("valid_loss")))
        step = values.get("step", values.get("global_step"))
        found.append(JobEvent(
            id=f"log-{number}", time=when, message=text[:2000],
            level="error" if text.lower().startswith(("error", "traceback")) else "info",
            train_loss=train, valid_loss=valid, epoch=values.get("epoch"),
            step=int(step) if step is not None and (train is not None or valid is not None) else None))
    return found


class PredictionEndpoint(Endpoint):
    """Predictions on a Replicate model: the conversation rendered as the training data was, sent as the
    model's prompt input; polled until done; the output chunks joined. One async client per event loop."""

    def __init__(self, provider: ReplicateProvider, model: str) -> None:
        self.model = model
        self.provider = provider.name
        self._provider = provider
        self._clients = LoopClients(lambda: provider.make_client(asynchronous=True))
        self.sleep = lambda seconds: asyncio.to_thread(provider.sleep, seconds)  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"<PredictionEndpoint {self.model}>"

    def request_input(self, messages: Sequence[Message], params: GenerationParams) -> dict[str, Any]:
        """The model's input: the rendered prompt and the generation settings under the model's names."""
        options = self._provider.replicate_options
        names = options.generation_inputs
        given: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": params.temperature,
                                 "top_p": params.top_p, "seed": params.seed,
                                 "stop": ",".join(params.stop) if params.stop else None}
        inputs = {names[key]: value for key, value in given.items() if key in names and value is not None}
        inputs[options.prompt_input] = render_prompt([dict(m) for m in messages])
        return inputs

    async def _generate(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        client = self._clients.get()
        options = self._provider.replicate_options
        start = time.perf_counter()
        found = _MODEL_REF.fullmatch(self.model)
        version = found.group("version") if found else (self.model if _VERSION_ONLY.fullmatch(self.model) else None)
        inputs = self.request_input(messages, params)
        wait = options.prediction_wait
        if version:
            prediction = await self._ask(lambda: client.predictions.async_create(
                version=version, input=inputs, wait=wait))
        elif found:
            prediction = await self._ask(lambda: client.models.predictions.async_create(
                model=f"{found.group('owner')}/{found.group('name')}", input=inputs, wait=wait))
        else:
            raise ConfigError(f"{self.model!r} is not a Replicate model: give owner/name or owner/name:<version>.")
        for _ in range(options.prediction_polls):
            if prediction.status in ("succeeded", "failed", "canceled"):
                break
            await self.sleep(options.prediction_poll_seconds)
            prediction = await self._ask(lambda p=prediction: client.predictions.async_get(p.id), read=True)
        else:
            raise ProviderError(f"Replicate's prediction {prediction.id} on {self.model} did not finish after "
                                f"{options.prediction_polls} reads.", provider=self.provider)
        return self._completion(prediction, params, timed(start))

    async def _ask(self, call: Callable[[], Awaitable[Any]], *, read: bool = False) -> Any:
        """One SDK call; its errors, and an answer it cannot read, leave as tuneproxy errors (raised outside the
        ``except``). A read (a poll) is asked again after a rate limit; a create is never sent twice."""
        provider = self._provider
        action = f"generate with {self.model}"
        api_error, _ = provider.sdk_errors()
        for attempt in range(self.rate_limit_retries + 1):
            error: ProviderError
            try:
                return await call()
            except api_error as exc:
                error = provider.error(exc, action)
            except httpx.TransportError as exc:
                error = provider.error(exc, action)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:  # pydantic.v1 errors are ValueErrors
                error = provider._unreadable(action, type(exc).__name__)
            if not (read and isinstance(error, RateLimited)) or attempt == self.rate_limit_retries:
                raise error
            await self.sleep(min(error.retry_after or 2.0 ** attempt, self.max_rate_limit_wait))
        raise AssertionError("unreachable")  # pragma: no cover

    def _completion(self, prediction: Any, params: GenerationParams, latency: float) -> Completion:
        """The joined output; usage and cost from the prediction's metrics. Replicate states no finish reason:
        ``length`` when the output used every token allowed, ``stop`` when fewer, ``unknown`` without counts."""
        if prediction.status != "succeeded":
            reason = prediction.error or "no reason given"
            raise ProviderError(f"Replicate's prediction on {self.model} ended {prediction.status}: {reason}",
                                provider=self.provider, raw=str(prediction.status))
        output = prediction.output
        text = "".join(str(chunk) for chunk in output) if isinstance(output, list) else str(output or "")
        metrics = prediction.metrics if isinstance(prediction.metrics, Mapping) else {}
        usage = Usage(prompt_tokens=int(metrics.get("input_token_count") or 0),
                      completion_tokens=int(metrics.get("output_token_count") or 0))
        if "output_token_count" not in metrics:
            finish = "unknown"
        else:
            finish = "length" if usage.completion_tokens >= params.max_tokens else "stop"
        seconds = metrics.get("predict_time")
        return Completion(text=text, finish_reason=finish, usage=usage, latency_s=latency,
                          cost_usd=self._cost(seconds) if isinstance(seconds, (int, float)) else None)

    def _cost(self, seconds: float) -> float | None:
        from tuneproxy.prices import price_quantities

        hardware = self._provider.replicate_options.destination_hardware
        return price_quantities(self.provider, self.model, [
            Quantity(kind="hardware_seconds", amount=seconds, hardware=hardware)]).usd

    async def aclose(self) -> None:
        """Close the running loop's client."""
        await self._clients.aclose()
