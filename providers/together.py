"""Together AI fine-tuning (LoRA by default) through the ``together`` 3.x SDK, which runs on ``httpx``.

Facts this module relies on (see reference/providers-openai-together.md):
- ``files.upload`` is three requests through the one client: ``POST /v1/files`` answered by a 302 to a
  presigned URL, ``PUT`` of the bytes there, then ``POST /v1/files/{id}/preprocess``.
- ``fine_tuning.create`` is three requests too: model limits, the price estimate, the create.
- ``lora_r``/``lora_alpha``/``lora_dropout`` are silently ignored unless ``lora=True``: it is sent
  whenever any LoRA setting is given.
- Jobs carry no metadata. The intent id travels in a short form inside the model suffix, so a create
  whose answer was lost can be found by listing jobs.
- ``create`` returns the output name as ``output_name``, ``retrieve`` as ``x_model_output_name``
  (both are the JSON key ``model_output_name``). ``total_price`` is in nano-dollars.
- Job events carry steps but no losses. Losses come from ``GET /v1/fine-tunes/{id}/metrics``
  (``fine_tuning.list_metrics``): ``{"metrics": [{name: number}]}``, oldest first, a flat row per logged
  training step (``train/loss``, ``train/learning_rate``, ``train/epoch``, ``train/global_step``) and a
  separate row per evaluation (``eval/loss``); every row has ``train/global_step`` (the SDK's own CLI
  plots by it). A 404 there (a job older than the endpoint) is taken as no metrics.
- A validation file is only evaluated if ``n_evals`` > 0 (the SDK sends 0): tuneproxy asks for one
  evaluation per epoch unless the ``n_evals`` option (:class:`TogetherOptions`) says otherwise.
- Prices: the estimate endpoint's figure and the job's ``total_price`` are the service's own (they win);
  before the upload the catalogue prices the token count by the model's size bracket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from tuneproxy.contract import (
    Capabilities,
    CostEstimate,
    Credentials,
    DatasetRules,
    Endpoint,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    ParameterSpec,
    Quantity,
    Stats,
    UploadedFile,
)
from tuneproxy.dataset.convert import kept_record
from tuneproxy.errors import NotFound

from ._http import intent_tag, to_datetime
from ._sdk import SDKOptions, SDKProvider

NANO = 1_000_000_000
DEFAULT_EPOCHS = 1  # the SDK's default n_epochs
EVENT_LEVELS = {
    "warning": "warning", "error": "error", "legacy_iwarning": "warning", "legacy_ierror": "error",
}
FAILURE_EVENT_TYPES = frozenset({"job_error", "billing_limit"})
# After any of these no training step is logged any more, so every metrics point is final.
END_OF_TRAINING_EVENT_TYPES = frozenset(
    {"training_complete", "early_stopped", "job_complete", "job_error", "job_stopped"}
)
STEP_KEY, EPOCH_KEY, TRAIN_LOSS_KEY, VALID_LOSS_KEY = "train/global_step", "train/epoch", "train/loss", "eval/loss"
# The keys of each format that the upload carries; anything else (tuneproxy's metadata) stays home.
UPLOAD_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages", "tools"),
    "preference": ("input", "preferred_output", "non_preferred_output"),
    "completion": ("prompt", "completion"),
    "text": ("text",),
}

CAPABILITIES = Capabilities(
    display_name="Together AI",
    credentials=Credentials(env_var="TOGETHER_API_KEY", key_pattern=r"tgp_[A-Za-z0-9_\-]{8,}"),
    tokenizer="huggingface",
    parameters={
        "epochs": ParameterSpec(minimum=1, wire="n_epochs", note="the SDK checks the model's maximum"),
        "learning_rate": ParameterSpec(wire="learning_rate", note="> 0; at most the model's max_learning_rate"),
        "batch_size": ParameterSpec(minimum=1, wire="batch_size",
                                    note="within the model's min/max batch size; default 'max'"),
        "lora_rank": ParameterSpec(minimum=1, wire="lora_r", note="sent with lora=True; at most max_rank"),
        "lora_alpha": ParameterSpec(wire="lora_alpha", note="> 0; default 2 × rank"),
        "lora_dropout": ParameterSpec(minimum=0, maximum=0.999999, wire="lora_dropout", note="in [0, 1)"),
        "max_seq_length": ParameterSpec(wire="max_seq_length", note="within the model's sequence-length limits"),
        "warmup_ratio": ParameterSpec(minimum=0, maximum=1, wire="warmup_ratio"),
        "seed": ParameterSpec(minimum=0, maximum=2**31 - 1, wire="random_seed"),
        "suffix": ParameterSpec(note="tuneproxy appends a short intent tag to it"),
    },
    rules=DatasetRules(
        formats=frozenset({"chat", "completion", "text", "preference"}),
        min_examples=1,
        max_file_bytes=int(50.1 * 1024**3),
        upload_path="POST /v1/files → 302 → PUT presigned URL → POST /v1/files/{id}/preprocess",
        roles=frozenset({"system", "user", "assistant", "tool"}),
        example_keys=frozenset(
            {"messages", "tools", "prompt", "completion", "text", "input", "preferred_output",
             "non_preferred_output", "metadata"}
        ),
        unknown_example_key_is_error=True,
        weight_roles=frozenset({"system", "user", "assistant", "tool"}),
        roles_must_alternate=True,
        system_only_first=True,
    ),
)


class TogetherOptions(SDKOptions):
    """Together's settings (the key comes from ``TOGETHER_API_KEY``)."""

    project_id: str | None = Field(None, description="The project to work in (default: the key's).")
    n_evals: int | None = Field(None, ge=0, description="Evaluations of the validation file during training "
                                                        "(default: one per epoch when a holdout is sent).")
    train_on_inputs: bool | Literal["auto"] = Field(
        "auto", description="Train on the prompt tokens too (true), only on replies (false), or Together's "
                            "default for the format (auto).")


class TogetherProvider(SDKProvider):
    """Together AI's fine-tuning API, through the together SDK on an httpx transport (a
    :class:`tuneproxy.recording.ReplayTransport` in tests) shared by the sync client (including the
    presigned-URL PUT) and the async one behind :meth:`endpoint`. Settings: :class:`TogetherOptions`."""

    name: ClassVar[str] = "together"
    Options = TogetherOptions
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES
    REQUEST_ID_HEADERS: ClassVar[tuple[str, ...]] = ("x-together-request-id",)
    STATUS_MAP: ClassVar[dict[str, JobStatus]] = {
        "pending": JobStatus.QUEUED,
        "queued": JobStatus.QUEUED,
        "running": JobStatus.RUNNING,
        "compressing": JobStatus.RUNNING,
        "uploading": JobStatus.RUNNING,
        # Still stopping: not terminal until "cancelled", and the bill is not final before then.
        "cancel_requested": JobStatus.RUNNING,
        "cancelled": JobStatus.CANCELLED,
        "error": JobStatus.FAILED,
        "user_error": JobStatus.FAILED,
        "completed": JobStatus.SUCCEEDED,
    }

    SDK = ("together", "Together", "AsyncTogether", "httpx")

    # ------------------------------------------------------------------ clients

    @property
    def together_options(self) -> TogetherOptions:
        """The options, typed."""
        assert isinstance(self.options, TogetherOptions)
        return self.options

    def sdk_errors(self) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
        import together

        return together.APIError, (together.APIConnectionError,)

    def client_arguments(self) -> dict[str, Any]:
        # None would override the SDK's own default (and its environment variable): leave unset ones out
        kwargs = {key: value for key, value in super().client_arguments().items() if value is not None}
        if self.together_options.project_id:
            kwargs["project_id"] = self.together_options.project_id
        return kwargs

    # ------------------------------------------------------------------ lifecycle

    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        """Upload a JSONL file: POST /v1/files → 302 → PUT to the presigned URL → preprocess."""
        path = Path(path)
        f = self._call(f"upload {path.name}",
                       lambda: self.client.files.upload(path, purpose="fine-tune", check=True), retry=False)
        return UploadedFile(id=f.id, filename=f.filename or path.name, bytes=f.bytes or 0, purpose=purpose)

    def create_arguments(self, spec: JobSpec) -> dict[str, Any]:
        """The keyword arguments for ``fine_tuning.create``: what was given, the intent tag, and with a
        validation file the number of evaluations (without one Together never evaluates it)."""
        given = self.translate(spec.hyperparameters)
        kwargs = self.wire_parameters(spec.hyperparameters)
        if any(key.startswith("lora_") for key in given):
            kwargs["lora"] = True  # without it the SDK drops lora_r/lora_alpha/lora_dropout silently
        kwargs.update(
            model=spec.model,
            training_file=spec.training_file,
            validation_file=spec.validation_file or "",
            suffix=job_suffix(given.get("suffix"), spec.intent_id),
            training_method="dpo" if spec.format == "preference" else "sft",
        )
        if spec.validation_file:
            kwargs["n_evals"] = self.n_evals(spec)
        if spec.format != "preference":
            kwargs["train_on_inputs"] = self.together_options.train_on_inputs
        return kwargs

    def n_evals(self, spec: JobSpec) -> int:
        """Evaluations of the validation file during training: the ``n_evals`` option, else one per epoch."""
        given = self.together_options.n_evals
        return given if given is not None else spec.hyperparameters.epochs or DEFAULT_EPOCHS

    def submit(self, spec: JobSpec) -> JobRecord:
        """Create the job (the SDK asks for the model limits and a price estimate first). Sent once."""
        kwargs = self.create_arguments(spec)
        job = self._create(spec, lambda: self.client.fine_tuning.create(**kwargs))
        return self._record(job, intent_id=spec.intent_id)

    def refresh(self, job_id: str) -> JobRecord:
        """The job as Together reports it now, with the billed cost once it has ended."""
        job = self._call(f"read job {job_id}", lambda: self.client.fine_tuning.retrieve(job_id), retry=True)
        return self._record(job)

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """The job's events and loss metrics newer than event id ``after``, oldest first.

        Two reads: the job events (no ids, so the position is one: ``ev-00007``) and the metrics, one
        event per step (``metrics-<step>``: its training and evaluation rows merged). Metrics rows carry
        no time, so they are merged by step: a point goes just before the first job event that reports a
        later step or the end of training, and takes that event's time; until then (it may still gain
        its evaluation row) it waits for a later poll. The merged list thus only grows at its end, and
        the events newer than ``after`` are exactly those after it. An id this job does not have gives
        every event (the ledger keeps one copy of each id); a 404 from the metrics endpoint (a job older
        than it) gives the job events alone.
        """
        page = self._call(f"read events of {job_id}", lambda: self.client.fine_tuning.list_events(job_id),
                          retry=True)
        merged = self._merge(page.data, self._metric_points(job_id))
        ids = [event.id for event in merged]
        return merged[ids.index(after) + 1:] if after in ids else merged

    def cancel(self, job_id: str) -> JobRecord:
        """Ask Together to cancel the job (it reports ``cancel_requested`` until it has stopped)."""
        job = self._call(f"cancel job {job_id}", lambda: self.client.fine_tuning.cancel(job_id), retry=False)
        return self._record(job)

    def find_job(self, intent_id: str) -> JobRecord | None:
        """The job whose suffix carries the intent tag, if Together has one."""
        tag = intent_tag(intent_id)
        page = self._call(f"look up the job for intent {intent_id}", lambda: self.client.fine_tuning.list(),
                          retry=True)
        for job in page.data:
            names = (getattr(job, "suffix", None) or "", _output_name(job) or "")
            if any(tag in name for name in names):
                return self._record(job, intent_id=intent_id)
        return None

    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """Together's own figure once the training file is uploaded; before that the billable tokens
        (n_epochs × training tokens, plus n_evals × the holdout's tokens when known), for the core to price."""
        epochs = spec.hyperparameters.epochs or DEFAULT_EPOCHS
        kind = "preference_training_tokens" if spec.format == "preference" else "training_tokens"
        counted = CostEstimate(
            provider=self.name, model=spec.model,
            quantities=[Quantity(kind=kind, amount=stats.billable_tokens(epochs))],
            basis=f"{stats.total_tokens:,} tokens × {epochs} epochs",
        )
        if not spec.training_file.startswith("file-"):
            return counted
        answer = self._call("estimate the price", lambda: self.client.fine_tuning.estimate_price(
            **self._estimate_arguments(spec, epochs)), retry=True)
        if not answer.estimation_available:
            return counted.model_copy(update={"basis": f"{counted.basis} (service: {answer.unavailable_reason})"})
        train = int(answer.estimated_train_token_count or 0) + int(answer.estimated_eval_token_count or 0)
        return CostEstimate(
            provider=self.name, model=spec.model, quantities=[Quantity(kind=kind, amount=train)],
            usd=answer.estimated_total_price, usd_low=answer.estimated_total_price,
            usd_high=answer.estimated_total_price, authoritative=True,
            basis=f"Together's estimate-price endpoint for {spec.training_file} × {epochs} epochs",
            price_source="Together AI estimate-price endpoint",
        )

    def _estimate_arguments(self, spec: JobSpec, epochs: int) -> dict[str, Any]:
        hp = spec.hyperparameters
        kwargs: dict[str, Any] = {
            "training_file": spec.training_file, "model": spec.model, "n_epochs": epochs,
        }
        if spec.validation_file:
            kwargs.update(validation_file=spec.validation_file, n_evals=self.n_evals(spec))
        if spec.format == "preference":
            kwargs["training_method"] = {"method": "dpo"}
        else:
            kwargs["training_method"] = {"method": "sft", "train_on_inputs": self.together_options.train_on_inputs}
        if hp.lora_rank is not None:
            kwargs["training_type"] = {"type": "Lora", "lora_r": hp.lora_rank,
                                       "lora_alpha": int(hp.lora_alpha or 2 * hp.lora_rank)}
        return kwargs

    def endpoint(self, model: str) -> Endpoint:
        """Chat completions on ``model``: a tuned model's serving name (on a dedicated endpoint, or a
        serverless LoRA where Together still offers one) or a base model."""
        return self.chat_endpoint(model)

    def inference_model(self, base: str) -> str | None:
        """``base`` itself, except a ``-Reference`` training id: Together cannot serve those at all, and
        its serverless variants (``-Turbo``) are other, quantized weights — no fair comparison. None then:
        deploy the base model on a dedicated endpoint to compare against it."""
        return None if base.endswith("-Reference") else base

    def serialize(self, example: Any) -> dict[str, Any]:
        """The example in Together's columns for its format; tuneproxy's own ``metadata`` is dropped."""
        return kept_record(example, UPLOAD_KEYS)

    # ------------------------------------------------------------------ wire → contract

    def _record(self, job: Any, intent_id: str | None = None) -> JobRecord:
        raw = str(job.status)
        status = self.status(raw)
        price = getattr(job, "total_price", None)
        billed = price / NANO if status.terminal and price is not None else None
        tokens = getattr(job, "token_count", None)
        kind = "preference_training_tokens" if _is_dpo(job) else "training_tokens"
        return JobRecord(
            provider=self.name, job_id=job.id, base_model=getattr(job, "model", None) or "",
            status=status, raw_status=raw, tuned_model=_output_name(job),
            created_at=to_datetime(job.created_at),
            finished_at=to_datetime(job.updated_at) if status.terminal else None,
            error=_failure_message(job) if status is JobStatus.FAILED else None,
            billable=[Quantity(kind=kind, amount=tokens)] if tokens is not None else [],
            billed_usd=billed, intent_id=intent_id,
            detail={"suffix": getattr(job, "suffix", None),
                    "epochs_completed": getattr(job, "epochs_completed", None)},
        )

    def _event(self, index: int, event: Any) -> JobEvent:
        return JobEvent(
            id=f"ev-{index:05d}", time=to_datetime(event.created_at),
            level=EVENT_LEVELS.get(str(event.level), "info"),
            message=event.message, step=event.step, total_steps=event.total_steps,
        )

    def _metric_points(self, job_id: str) -> dict[int, dict[str, float]]:
        """The job's metrics rows by step, training and evaluation rows of one step merged."""
        try:
            answer = self._call(f"read metrics of {job_id}", lambda: self.client.fine_tuning.list_metrics(job_id),
                                retry=True)
        except NotFound:
            return {}
        points: dict[int, dict[str, float]] = {}
        for row in answer.metrics or []:
            if row.get(STEP_KEY) is not None:
                points.setdefault(int(row[STEP_KEY]), {}).update(row)
        return points

    def _merge(self, events: list[Any], points: dict[int, dict[str, float]]) -> list[JobEvent]:
        """Job events in order, each preceded by the metrics points it makes final (see :meth:`events`)."""
        merged: list[JobEvent] = []
        waiting, total = sorted(points), None
        for index, event in enumerate(events):
            total = event.total_steps or total
            if str(event.type) in END_OF_TRAINING_EVENT_TYPES:
                final, waiting = waiting, []
            elif event.step is not None:
                final = [step for step in waiting if step < event.step]
                waiting = [step for step in waiting if step >= event.step]
            else:
                final = []
            merged += [e for step in final if (e := _metric_event(step, points[step], event, total))]
            merged.append(self._event(index, event))
        return merged


def job_suffix(user_suffix: str | None, intent_id: str) -> str:
    """The model suffix sent to Together: the user's suffix (if any) and the intent tag."""
    tag = intent_tag(intent_id)
    return f"{user_suffix}-{tag}" if user_suffix else tag


def _metric_event(step: int, point: dict[str, float], final_at: Any, total: int | None) -> JobEvent | None:
    """One step's losses as an event at the time of the job event that made it final; None without a loss."""
    train, valid = point.get(TRAIN_LOSS_KEY), point.get(VALID_LOSS_KEY)
    if train is None and valid is None:
        return None
    losses = ", ".join(f"{name} loss={value:.4f}" for name, value in (("training", train), ("validation", valid))
                       if value is not None)
    return JobEvent(
        id=f"metrics-{step}", time=to_datetime(final_at.created_at),
        message=f"Step {step}{f'/{total}' if total else ''}: {losses}", step=step, total_steps=total,
        epoch=point.get(EPOCH_KEY), train_loss=train, valid_loss=valid,
    )


def _is_dpo(job: Any) -> bool:
    method = getattr(job, "training_method", None)
    name = method.get("method") if isinstance(method, dict) else getattr(method, "method", None)
    return name == "dpo"


def _output_name(job: Any) -> str | None:
    # create() returns the lib type (output_name); retrieve()/list() the generated one (x_model_output_name).
    return getattr(job, "x_model_output_name", None) or getattr(job, "output_name", None)


def _failure_message(job: Any) -> str | None:
    """The service's own words for a failure: the last error event it attached to the job."""
    for event in reversed(getattr(job, "events", None) or []):
        if getattr(event, "level", None) == "error" or getattr(event, "type", None) in FAILURE_EVENT_TYPES:
            return event.message
    return None
