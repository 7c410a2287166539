"""OpenAI fine-tuning (supervised and DPO) through the ``openai`` 3.x SDK, which runs on ``httpx2``.

Facts this module relies on (see reference/providers-openai-together.md):
- Hyperparameters go under ``method`` (``{"type": "supervised", "supervised": {"hyperparameters": …}}``);
  OpenAI has no LoRA settings and no absolute learning rate, only a multiplier.
- A job carries up to 16 metadata pairs: tuneproxy puts its intent id there, so a create whose answer
  was lost can be found again by listing jobs filtered on that metadata.
- The bill is ``trained_tokens`` (SFT and DPO alike) at the catalogue's training price; there is no
  estimate endpoint, so tokens are counted locally with OpenAI's own tokenizer.
- Self-serve fine-tuning is being wound down: no new jobs from 2027-01-06.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from tuneproxy.contract import (
    DEFAULT_EPOCHS,
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

from ._http import to_datetime
from ._sdk import SDKOptions, SDKProvider

INTENT_KEY = "tuneproxy_intent"
SUNSET = dt.date(2027, 1, 6)

MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
)
# The keys of each format that the upload carries; anything else (tuneproxy's metadata) stays home.
UPLOAD_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages", "tools", "parallel_tool_calls"),
    "preference": ("input", "preferred_output", "non_preferred_output"),
    "completion": ("prompt", "completion"),
}

CAPABILITIES = Capabilities(
    display_name="OpenAI",
    trainable=r"(ft:)?(gpt-|babbage-002|davinci-002|o\d).*",
    trainable_note="OpenAI fine-tunes its own gpt-… models",
    credentials=Credentials(env_var="OPENAI_API_KEY", key_pattern=r"sk-[A-Za-z0-9_\-]{8,}"),
    tokenizer="tiktoken",
    parameters={
        "epochs": ParameterSpec(minimum=1, maximum=50, wire="n_epochs", note="default 'auto'"),
        "batch_size": ParameterSpec(minimum=1, maximum=256, wire="batch_size", note="default 'auto'"),
        "learning_rate_multiplier": ParameterSpec(wire="learning_rate_multiplier", note="> 0; default 'auto'"),
        "seed": ParameterSpec(minimum=0, maximum=2**31 - 1, note="sent at the top level of the job"),
        "suffix": ParameterSpec(note="1-64 characters, part of the tuned model's name; sent at the top level"),
    },
    rules=DatasetRules(
        formats=frozenset({"chat", "preference"}),
        min_examples=10,
        max_file_bytes=512 * 1000 * 1000,
        upload_path="POST /v1/files (purpose fine-tune, .jsonl)",
        roles=frozenset({"system", "developer", "user", "assistant", "tool", "function"}),
        message_keys=MESSAGE_KEYS,
        unknown_message_key_is_error=True,
        example_keys=frozenset(
            {"messages", "tools", "parallel_tool_calls", "functions", "input", "preferred_output",
             "non_preferred_output", "metadata"}
        ),
        weight_roles=frozenset({"assistant"}),
        context_tokens={
            "gpt-4o-mini": 65_536,
            "gpt-4o": 65_536,
            "gpt-4.1": 65_536,
        },
    ),
    sunset=SUNSET,
    sunset_note=(
        "OpenAI is winding down self-serve fine-tuning (notice of 2026-05-07): from 2027-01-06 nobody can "
        "create new jobs; tuned models stay callable until their base model shuts down."
    ),
)


class OpenAIOptions(SDKOptions):
    """OpenAI's settings (the key comes from ``OPENAI_API_KEY``)."""

    organization: str | None = Field(None, description="The organization id to bill (default: the key's).")
    project: str | None = Field(None, description="The project id to bill (default: the key's).")


class OpenAIProvider(SDKProvider):
    """OpenAI's fine-tuning API, through the openai SDK on an httpx2 transport (a
    :class:`tuneproxy.recording.ReplayTransport` in tests) shared by the sync client and the async one
    behind :meth:`endpoint`. Settings: :class:`OpenAIOptions`."""

    name: ClassVar[str] = "openai"
    Options = OpenAIOptions
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES
    # ``pausing``/``paused`` are documented but outside the SDK's enum, and a paused job is neither
    # running nor finished: they are left out on purpose, so they surface as UNKNOWN with a warning.
    STATUS_MAP: ClassVar[dict[str, JobStatus]] = {
        "validating_files": JobStatus.VALIDATING,
        "queued": JobStatus.QUEUED,
        "running": JobStatus.RUNNING,
        "succeeded": JobStatus.SUCCEEDED,
        "failed": JobStatus.FAILED,
        "cancelled": JobStatus.CANCELLED,
    }
    DOCUMENTED_UNMAPPED: ClassVar[frozenset[str]] = frozenset({"pausing", "paused"})

    SDK = ("openai", "OpenAI", "AsyncOpenAI", "httpx2")

    # ------------------------------------------------------------------ clients

    def sdk_errors(self) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
        import openai

        return openai.APIError, (openai.APIConnectionError,)

    def client_arguments(self) -> dict[str, Any]:
        options = self.options
        assert isinstance(options, OpenAIOptions)
        return {**super().client_arguments(), "organization": options.organization, "project": options.project}

    # ------------------------------------------------------------------ lifecycle

    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        """Upload a JSONL file with purpose ``fine-tune`` (sent once)."""
        path = Path(path)
        with path.open("rb") as handle:
            data = handle.read()
        f = self._call(f"upload {path.name}",
                       lambda: self.client.files.create(file=(path.name, data), purpose="fine-tune"), retry=False)
        return UploadedFile(id=f.id, filename=f.filename, bytes=f.bytes, purpose=purpose)

    def method_for(self, spec: JobSpec) -> dict[str, Any]:
        """The ``method`` block: supervised, or DPO for preference data, with the given hyperparameters."""
        hyper = self.wire_parameters(spec.hyperparameters)
        kind = "dpo" if spec.format == "preference" else "supervised"
        return {"type": kind, kind: {"hyperparameters": hyper}} if hyper else {"type": kind}

    def submit(self, spec: JobSpec) -> JobRecord:
        """Create the job, tagged with the intent id in its metadata. Sent exactly once."""
        method = self.method_for(spec)  # checks every given hyperparameter against OpenAI's limits
        given = spec.hyperparameters.given()
        kwargs: dict[str, Any] = {
            "model": spec.model,
            "training_file": spec.training_file,
            "method": method,
            "metadata": {INTENT_KEY: spec.intent_id},
        }
        if spec.validation_file:
            kwargs["validation_file"] = spec.validation_file
        for key in ("suffix", "seed"):
            if key in given:
                kwargs[key] = given[key]
        job = self._create(spec, lambda: self.client.fine_tuning.jobs.create(**kwargs))
        return self._record(job)

    def refresh(self, job_id: str) -> JobRecord:
        """The job as OpenAI reports it now, with billed cost once it has ended."""
        return self._record(self._call(f"read job {job_id}",
                                       lambda: self.client.fine_tuning.jobs.retrieve(job_id), retry=True))

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """Events newer than ``after``, oldest first (OpenAI lists newest first; pages are walked)."""
        newer: list[JobEvent] = []
        cursor: str | None = None
        while True:
            page = self._call(f"read events of {job_id}",
                              lambda cursor=cursor: self.client.fine_tuning.jobs.list_events(
                                  job_id, limit=100, **({"after": cursor} if cursor else {})), retry=True)
            for event in page.data:
                if event.id == after:
                    return newer[::-1]
                newer.append(self._event(event))
            if not page.has_more or not page.data:
                return newer[::-1]
            cursor = page.data[-1].id

    def cancel(self, job_id: str) -> JobRecord:
        """Ask OpenAI to cancel the job."""
        return self._record(self._call(f"cancel job {job_id}",
                                       lambda: self.client.fine_tuning.jobs.cancel(job_id), retry=False))

    def find_job(self, intent_id: str) -> JobRecord | None:
        """The job whose metadata carries ``intent_id``, if OpenAI has one."""
        page = self._call(f"look up the job for intent {intent_id}",
                          lambda: self.client.fine_tuning.jobs.list(metadata={INTENT_KEY: intent_id}, limit=10),
                          retry=True)
        for job in page.data:
            if (job.metadata or {}).get(INTENT_KEY) == intent_id:
                return self._record(job)
        return None

    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """Training tokens × epochs, counted locally with OpenAI's tokenizer; OpenAI has no estimate
        endpoint. With epochs 'auto' the count assumes 3 and the range spans 1 to 5 epochs."""
        epochs = spec.hyperparameters.epochs or DEFAULT_EPOCHS
        kind = "training_tokens"  # SFT and DPO are billed alike: file tokens × epochs
        tokens = stats.billable_tokens(epochs)
        quantity = Quantity(kind=kind, amount=tokens)
        assumed = ""
        if spec.hyperparameters.epochs is None:
            quantity = Quantity(kind=kind, amount=tokens, low=stats.billable_tokens(1), high=stats.billable_tokens(5))
            assumed = f" (epochs 'auto': {DEFAULT_EPOCHS} assumed, 1 to 5 possible)"
        return CostEstimate(provider=self.name, model=spec.model, quantities=[quantity],
                            basis=f"{stats.total_tokens:,} tokens × {epochs} epochs{assumed}, counted locally "
                                  "(OpenAI has no estimate endpoint)")

    def endpoint(self, model: str) -> Endpoint:
        """Chat completions on ``model`` (a tuned ``ft:…`` name or a base model), async first. The
        catalogue holds fine-tuned models' inference prices, so only ``ft:`` models' completions are priced
        (a base model's cost is left unknown rather than priced at the tuned rate)."""
        return self.chat_endpoint(model, priced=model.startswith("ft:"))

    def serialize(self, example: Any) -> dict[str, Any]:
        """The example as OpenAI's JSONL expects it; tuneproxy's own ``metadata`` is dropped."""
        return kept_record(example, UPLOAD_KEYS)

    # ------------------------------------------------------------------ wire → contract

    def _record(self, job: Any) -> JobRecord:
        status = self.status(job.status)
        error = getattr(job.error, "message", None) if job.error else None
        billable = ([Quantity(kind="training_tokens", amount=job.trained_tokens)]
                    if job.trained_tokens is not None else [])
        return JobRecord(
            provider=self.name, job_id=job.id, base_model=job.model, status=status, raw_status=job.status,
            tuned_model=job.fine_tuned_model, created_at=to_datetime(job.created_at),
            finished_at=to_datetime(job.finished_at), estimated_finish=to_datetime(job.estimated_finish),
            error=error or None, billable=billable, intent_id=(job.metadata or {}).get(INTENT_KEY),
            detail={"result_files": list(job.result_files or []),
                    "error_code": getattr(job.error, "code", None) if job.error else None},
        )

    def _event(self, event: Any) -> JobEvent:
        data = event.data if isinstance(event.data, dict) else {}
        return JobEvent(
            id=event.id, time=to_datetime(event.created_at),
            level={"warn": "warning", "error": "error"}.get(event.level, "info"),
            message=event.message, step=data.get("step"), total_steps=data.get("total_steps"),
            epoch=data.get("epoch"), train_loss=data.get("train_loss"), valid_loss=data.get("valid_loss"),
        )

