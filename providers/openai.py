"""OpenAI fine-tuning (supervised and DPO) through the ``openai`` 3.x SDK, which runs on ``httpx2``.

Facts this module relies on (see reference/providers-openai-together.md):
- Hyperparameters go under ``method`` (``{"type": "supervised", "supervised": {"hyperparameters": …}}``);
  OpenAI has no LoRA settings and no absolute learning rate, only a multiplier.
- A job carries up to 16 metadata pairs: tuneproxy puts its intent id there, so a create whose answer
  was lost can be found again by listing jobs filtered on that metadata.
- Cost is ``trained_tokens`` × the training price; there is no estimate endpoint.
- Self-serve fine-tuning is being wound down: no new jobs from 2027-01-06.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, ClassVar, Literal

from tuneproxy.contract import (
    Capabilities,
    CostEstimate,
    DatasetRules,
    Endpoint,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    ParameterSpec,
    Stats,
    UploadedFile,
)

from ._sdk import ChatEndpoint, SDKProvider, price_for, to_datetime

INTENT_KEY = "tuneproxy_intent"
DEFAULT_EPOCHS = 3  # what "auto" usually picks for a few hundred examples; stated in every estimate
SUNSET = dt.date(2027, 1, 6)

TRAINING_PRICES = {  # USD per 1M training tokens
    "gpt-4.1": 25.0,
    "gpt-4.1-mini": 5.0,
    "gpt-4.1-nano": 1.5,
    "gpt-4o-2024-08-06": 25.0,
    "gpt-4o-mini": 3.0,
}
INFERENCE_PRICES = {  # USD per 1M (input, output) tokens on fine-tuned models
    "gpt-4.1": (3.0, 12.0),
    "gpt-4.1-mini": (0.8, 3.2),
    "gpt-4.1-nano": (0.2, 0.8),
    "gpt-4o-2024-08-06": (3.75, 15.0),
    "gpt-4o-mini": (0.3, 1.2),
}
PRICES_AS_OF = (
    "2026 (UNVERIFIED: third-party summaries of developers.openai.com/api/docs/pricing, matching the "
    "2025 official page)"
)

MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
)

CAPABILITIES = Capabilities(
    display_name="OpenAI",
    env_key="OPENAI_API_KEY",
    parameters={
        "epochs": ParameterSpec(minimum=1, maximum=50, note="sent as n_epochs; default 'auto'"),
        "batch_size": ParameterSpec(minimum=1, maximum=256, note="default 'auto'"),
        "learning_rate_multiplier": ParameterSpec(note="> 0; default 'auto'"),
        "seed": ParameterSpec(minimum=0, maximum=2**31 - 1),
        "suffix": ParameterSpec(note="1-64 characters, part of the tuned model's name"),
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
    price_per_million_training_tokens=TRAINING_PRICES,
    prices_as_of=PRICES_AS_OF,
)


class OpenAIProvider(SDKProvider):
    """OpenAI's fine-tuning API.

    ``OpenAIProvider(api_key=..., transport=None, clock=utc_now, **options)``: ``transport`` is any
    httpx2 transport (a :class:`tuneproxy.recording.ReplayTransport` in tests), used by both the sync
    client and the async one behind :meth:`endpoint`. Options are those of ``SDKProvider`` plus
    ``organization`` and ``project``.
    """

    name: ClassVar[str] = "openai"
    capabilities: ClassVar[Capabilities] = CAPABILITIES
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

    def _sdk_errors(self) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
        import openai

        return openai.APIError, (openai.APIConnectionError,)

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self._require_key(),
            "base_url": self.options.get("base_url"),
            "organization": self.options.get("organization"),
            "project": self.options.get("project"),
            "_strict_response_validation": bool(self.options.get("strict_responses", False)),
        }

    # ------------------------------------------------------------------ lifecycle

    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        """Upload a JSONL file with purpose ``fine-tune`` (sent once)."""
        path = Path(path)
        with path.open("rb") as handle:
            data = handle.read()
        f = self._write(f"upload {path.name}",
                        lambda: self.client.files.create(file=(path.name, data), purpose="fine-tune"))
        return UploadedFile(id=f.id, filename=f.filename, bytes=f.bytes, purpose=purpose)

    def method_for(self, spec: JobSpec) -> dict[str, Any]:
        """The ``method`` block: supervised, or DPO for preference data, with the given hyperparameters."""
        given = self.translate(spec.hyperparameters)
        names = {"epochs": "n_epochs", "batch_size": "batch_size",
                 "learning_rate_multiplier": "learning_rate_multiplier"}
        hyper = {wire: given[portable] for portable, wire in names.items() if portable in given}
        kind = "dpo" if spec.format == "preference" else "supervised"
        return {"type": kind, kind: {"hyperparameters": hyper}} if hyper else {"type": kind}

    def submit(self, spec: JobSpec) -> JobRecord:
        """Create the job, tagged with the intent id in its metadata. Sent exactly once."""
        given = self.translate(spec.hyperparameters)
        kwargs: dict[str, Any] = {
            "model": spec.model,
            "training_file": spec.training_file,
            "method": self.method_for(spec),
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
        return self._record(self._read(f"read job {job_id}",
                                       lambda: self.client.fine_tuning.jobs.retrieve(job_id)))

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """Events newer than ``after``, oldest first (OpenAI lists newest first; pages are walked)."""
        newer: list[JobEvent] = []
        cursor: str | None = None
        while True:
            page = self._read(f"read events of {job_id}",
                              lambda cursor=cursor: self.client.fine_tuning.jobs.list_events(
                                  job_id, limit=100, **({"after": cursor} if cursor else {})))
            for event in page.data:
                if event.id == after:
                    return newer[::-1]
                newer.append(self._event(event))
            if not page.has_more or not page.data:
                return newer[::-1]
            cursor = page.data[-1].id

    def cancel(self, job_id: str) -> JobRecord:
        """Ask OpenAI to cancel the job."""
        return self._record(self._write(f"cancel job {job_id}",
                                        lambda: self.client.fine_tuning.jobs.cancel(job_id)))

    def find_job(self, intent_id: str) -> JobRecord | None:
        """The job whose metadata carries ``intent_id``, if OpenAI has one."""
        page = self._read(f"look up the job for intent {intent_id}",
                          lambda: self.client.fine_tuning.jobs.list(metadata={INTENT_KEY: intent_id},
                                                                    limit=10))
        for job in page.data:
            if (job.metadata or {}).get(INTENT_KEY) == intent_id:
                return self._record(job)
        return None

    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """Training tokens × epochs × the price table; OpenAI has no estimate endpoint."""
        epochs = spec.hyperparameters.epochs or DEFAULT_EPOCHS
        tokens = stats.billable_tokens(epochs)
        price = price_for(spec.model, TRAINING_PRICES)
        assumed = "" if spec.hyperparameters.epochs else f" (epochs 'auto': assumed {DEFAULT_EPOCHS})"
        if price is None:
            return CostEstimate(provider=self.name, model=spec.model, usd=None, billable_tokens=tokens,
                                basis=f"No training price known for {spec.model}; {tokens} billable tokens"
                                      f"{assumed}.")
        return CostEstimate(
            provider=self.name, model=spec.model, usd=tokens * price / 1_000_000, billable_tokens=tokens,
            basis=f"{stats.total_tokens} tokens × {epochs} epochs{assumed} × ${price}/1M training tokens "
                  f"(price as of {PRICES_AS_OF}); counted locally, not by OpenAI.",
        )

    def endpoint(self, model: str) -> Endpoint:
        """Chat completions on ``model`` (a tuned ``ft:…`` name or a base model), async first."""
        import openai

        base = model.split(":")[1] if model.startswith("ft:") else model
        return ChatEndpoint(
            model, self._async_client,
            to_error=lambda exc: self._error(exc, f"generate with {model}"),
            sdk_errors=(openai.APIError,),
            price_in_out=_inference_price(base),
        )

    def serialize(self, example: Any) -> dict[str, Any]:
        """The example as OpenAI's JSONL expects it; tuneproxy's own ``metadata`` is dropped."""
        keep = {
            "chat": ("messages", "tools", "parallel_tool_calls"),
            "preference": ("input", "preferred_output", "non_preferred_output"),
            "completion": ("prompt", "completion"),
        }.get(example.format, ())
        return {key: example.record[key] for key in keep if key in example.record}

    # ------------------------------------------------------------------ wire → contract

    def _record(self, job: Any) -> JobRecord:
        status = self.status(job.status)
        error = getattr(job.error, "message", None) if job.error else None
        billed = None
        if status.terminal and job.trained_tokens is not None:
            price = price_for(job.model, TRAINING_PRICES)
            billed = job.trained_tokens * price / 1_000_000 if price is not None else None
        return JobRecord(
            provider=self.name, job_id=job.id, model=job.model, status=status, raw_status=job.status,
            fine_tuned_model=job.fine_tuned_model, created_at=to_datetime(job.created_at),
            finished_at=to_datetime(job.finished_at), error=error or None,
            trained_tokens=job.trained_tokens, billed_usd=billed,
            intent_id=(job.metadata or {}).get(INTENT_KEY),
            detail={"estimated_finish": job.estimated_finish, "result_files": list(job.result_files or []),
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


def _inference_price(model: str) -> tuple[float, float] | None:
    for key in sorted(INFERENCE_PRICES, key=len, reverse=True):
        if model.startswith(key):
            return INFERENCE_PRICES[key]
    return None
