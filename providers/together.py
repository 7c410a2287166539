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
- Deployments (:class:`tuneproxy.contract.Deployable`, the last section of the class) go through the SDK's
  v2 endpoints API, inside a project: an endpoint, then a deployment of the job's registry model
  (``model_object_id``, on ``fine_tuning.retrieve`` only) on a config revision that fixes the hardware.
  Hardware prices come from ``GET /v2/public/inference-instance-types`` in US cents per hour.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from tuneproxy.contract import (
    DEFAULT_EPOCHS,
    Capabilities,
    CostEstimate,
    Credentials,
    DatasetRules,
    Deployment,
    Endpoint,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    ParameterSpec,
    Quantity,
    ServingCost,
    Stats,
    UnknownStatusWarning,
    UploadedFile,
)
from tuneproxy.dataset.convert import kept_record
from tuneproxy.errors import (
    AuthenticationFailed,
    ConfigError,
    NotFound,
    ProviderError,
    RateLimited,
    ReplayMismatch,
)

from ._http import OUTCOME_UNKNOWN, intent_tag, to_datetime
from ._sdk import SDKOptions, SDKProvider

NANO = 1_000_000_000
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
    trainable=r"[\w.-]+/[\w.-]+",
    trainable_note="Together fine-tunes models named organization/model, as on its models page",
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
        kwargs = self.wire_parameters(spec.hyperparameters)
        given = spec.hyperparameters.given()
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
        """Together's own figure once the training file is uploaded; before that the billable training
        tokens (n_epochs × the training tokens), for the core to price. Evaluations of a holdout are billed
        too (n_evals × its tokens): the figure before the upload leaves them out, Together's own includes them."""
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

    def serving_cost(self, model: str) -> ServingCost:
        """A dedicated endpoint, billed by the minute while it is up; its hourly prices are not in the catalogue."""
        return ServingCost(per="unknown", note="dedicated endpoint billed per minute while up; price not in the "
                                               "catalogue", label="dedicated")

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

    # ================================================================== paid deployments (Deployable)
    # Together serves a tuned model on a dedicated deployment, billed by the hour, started only when the user
    # asks (TunedModel.deploy, `tuneproxy deployments create`); endpoint() never deploys. The together 3.1.1
    # SDK speaks the v2 endpoints API, where everything lives in a project: an endpoint
    # (POST /v2/projects/{p}/endpoints) holds deployments (POST .../endpoints/{e}/deployments) of a registry
    # model (projects/{p}/models/{m}[/revisions/{r}]) on a config revision (projects/{p}/configs/{c}) that
    # fixes the hardware. tuneproxy makes one endpoint per deployment and names the deployment by its
    # resource path, projects/{p}/endpoints/{e}/deployments/{d}, so it can be read and deleted later with no
    # option set (`tuneproxy deployments delete` builds the provider without the job's options).

    # Every state the SDK types document -> Deployment.state. v2 deployments (DeploymentStatus.state, also
    # EndpointDeploymentSummary.state) are what this SDK reads. The v1 dedicated-endpoint states
    # (DedicatedEndpoint.state in Together's OpenAPI spec; the v1 API is not in SDK 3.1.1) are mapped too, for
    # anyone reading an older endpoint. "deleted" is tuneproxy's own raw state for a deployment it deleted:
    # Together answers a delete with an empty body.
    DEPLOYMENT_STATE_MAP: ClassVar[dict[str, Literal["creating", "ready", "stopping", "stopped", "failed"]]] = {
        "DEPLOYMENT_STATE_PROVISIONING": "creating",
        "DEPLOYMENT_STATE_READY": "ready",
        "DEPLOYMENT_STATE_SCALING": "ready",  # replicas being added or removed; it serves meanwhile
        "DEPLOYMENT_STATE_DEGRADED": "ready",  # serving, with some replicas unhealthy (raw_state says so)
        "DEPLOYMENT_STATE_FAILED": "failed",
        "DEPLOYMENT_STATE_STOPPING": "stopping",
        "DEPLOYMENT_STATE_STOPPED": "stopped",
        "PENDING": "creating",
        "STARTING": "creating",
        "STARTED": "ready",
        "STOPPING": "stopping",
        "STOPPED": "stopped",
        "ERROR": "failed",
        "deleted": "stopped",
    }
    DEPLOYMENT_REPLICAS: ClassVar[int] = 1  # min = max replicas of a deployment tuneproxy creates
    _MODEL_PATH: ClassVar[re.Pattern[str]] = re.compile(r"projects/([^/]+)/models/([^/]+)(?:/revisions/([^/]+))?")
    _DEPLOYMENT_PATH: ClassVar[re.Pattern[str]] = re.compile(r"projects/([^/]+)/endpoints/([^/]+)/deployments/([^/]+)")
    _hardware_listing: list[Any] | None = None  # GET /v2/public/inference-instance-types, read once per instance

    def deploy(self, model: str, *, hardware: str | None = None) -> Deployment:
        """Start a PAID dedicated deployment of ``model`` (one replica, billed by the hour until
        :meth:`undeploy`); returns at once, usually ``creating``. Poll :meth:`deployment` until ``ready``,
        then send chat completions to ``serving_model`` through :meth:`endpoint`.

        ``model`` is a tuned model's output name (its job is found by ``fine_tuning.list``, and the job's
        ``model_object_id``, the registry model of its final weights — else its ``adapter_object_id`` — is
        deployed) or a registry path ``projects/{p}/models/{m}[/revisions/{r}]``. The deployable configs
        are those Together lists for the model's base (``models.configs.list``); each config fixes the
        hardware, which its ``accelerator_count``/``accelerator_type`` selectors name as
        ``{count}x{type}`` (``1xnvidia-h100-80gb``), as the SDK's own CLI reads them.

        ``hardware``: that name (or an instance-type id from Together's hardware listing, or a config id
        ``cr_...``) picks the config; one this model cannot use is a :class:`ConfigError` listing the
        choices. Not given: the cheapest available one — the config whose hardware has the lowest
        ``price_cents_per_hour`` in the hardware listing (``endpoints.hardware.list``) among those the
        listing offers with capacity not reported as zero in some region (a model with a single config
        gets it). ``usd_per_hour`` is that listing price (US cents per hour per replica, divided by 100),
        else the catalogue's ``deployment_hours`` price for the hardware (Together has no rows there), else
        None. ``model`` in the result is the registry path Together pins the deployment to.

        Needs a project (``-o project_id=...`` or ``TOGETHER_PROJECT_ID``). The creates are sent once; if
        the deployment's create is refused the new endpoint is deleted again, and if its answer is lost the
        endpoint is asked for the deployment it may hold.
        """
        project = self._deployment_project()
        path, registered = self._registry_model(model, project)
        configs = self._model_configs(model, registered, project)
        config, instance = self._pick_config(model, configs, self._instance_types(), hardware)
        stem = self._name_stem(registered.name or model)
        endpoint = self._call(f"create an endpoint for {model}", lambda: self.client.endpoints.create(
            name=f"{stem}-{self.clock():%Y%m%d%H%M%S}", project_id=project), retry=False)
        created = self._create_deployment(project, endpoint.id, dict(
            name=stem, model=path, config=f"projects/{config.project_id}/configs/{config.id}",
            autoscaling={"min_replicas": self.DEPLOYMENT_REPLICAS, "max_replicas": self.DEPLOYMENT_REPLICAS}))
        return self._deployment_record(created, instance)

    def deployment(self, deployment_id: str) -> Deployment:
        """The deployment's current state (``GET .../endpoints/{e}/deployments/{d}``), its hourly price from
        the hardware listing when it can be read."""
        project, endpoint_id, dep_id = self._deployment_ref(deployment_id)
        current = self._call(f"read deployment {deployment_id}", lambda: self.client.endpoints.deployments.retrieve(
            dep_id, endpoint_id=endpoint_id, project_id=project), retry=True)
        return self._deployment_record(current)

    def undeploy(self, deployment_id: str) -> Deployment:
        """Delete the deployment, then its endpoint; ``stopped`` (raw ``deleted``): it no longer bills.

        If Together refuses the delete (its CLI deletes only a stopped deployment), the deployment is scaled
        to zero replicas instead (``minReplicas = maxReplicas = 0``, which the SDK documents as stopping it)
        and returned as Together reports it, ``stopping``; undeploy it again once it is ``stopped``. A
        deployment Together no longer has is :class:`NotFound`. An endpoint that cannot be deleted after its
        deployment was is left with a warning: it holds no deployment.
        """
        project, endpoint_id, dep_id = self._deployment_ref(deployment_id)
        current = self.deployment(deployment_id)
        deployments = self.client.endpoints.deployments
        try:
            self._call(f"delete deployment {deployment_id}", lambda: deployments.delete(
                dep_id, endpoint_id=endpoint_id, project_id=project), retry=False)
        except NotFound:
            pass  # deleted meanwhile
        except ProviderError as exc:
            if not self._answered_no(exc) or isinstance(exc, (AuthenticationFailed, RateLimited)):
                raise
            scaled = self._call(f"stop deployment {deployment_id}", lambda: deployments.update(
                dep_id, endpoint_id=endpoint_id, project_id=project, update_mask="autoscaling",
                autoscaling={"min_replicas": 0, "max_replicas": 0}), retry=False)
            return self._deployment_record(scaled)
        try:
            self._call(f"delete endpoint {endpoint_id}", lambda: self.client.endpoints.delete(
                endpoint_id, project_id=project), retry=False)
        except NotFound:
            pass
        except ReplayMismatch:
            raise
        except ProviderError as exc:
            warnings.warn(f"Deployment {deployment_id} is deleted, but Together kept its endpoint {endpoint_id} "
                          f"({exc}). It holds no deployment; `tg endpoints rm {endpoint_id}` removes it.",
                          stacklevel=2)
        return current.model_copy(update={"state": "stopped", "raw_state": "deleted"})

    def _deployment_project(self) -> str:
        """The project the v2 endpoints API works in: the ``project_id`` option, else TOGETHER_PROJECT_ID
        (read by the SDK's client)."""
        project = self.client.project_id
        if not project:
            raise ConfigError(
                "Together's dedicated endpoints (the v2 API the together SDK uses) belong to a project, and none "
                "is set: pass `-o project_id=<your project id>` (Python: provider_options={'project_id': ...}) or "
                "set TOGETHER_PROJECT_ID.")
        return str(project)

    def _deployment_ref(self, deployment_id: str) -> tuple[str, str, str]:
        """(project, endpoint id, deployment id) of ``projects/{p}/endpoints/{e}/deployments/{d}``, or of
        ``{e}/{d}`` in the configured project."""
        full = self._DEPLOYMENT_PATH.fullmatch(deployment_id)
        if full:
            return full.group(1), full.group(2), full.group(3)
        short = re.fullmatch(r"([^/]+)/([^/]+)", deployment_id)
        if short:
            return self._deployment_project(), short.group(1), short.group(2)
        raise ConfigError(f"{deployment_id!r} is not a Together deployment id: tuneproxy names them "
                          "projects/<project>/endpoints/<endpoint>/deployments/<deployment> "
                          "(`tuneproxy deployments list` shows them).")

    def _registry_model(self, model: str, project: str) -> tuple[str, Any]:
        """(the model path to deploy, its registry record) for a registry path or a tuned model's name."""
        given = self._MODEL_PATH.fullmatch(model)
        if given:
            owner, model_id, revision, path = given.group(1), given.group(2), given.group(3), model
        else:
            jobs = self._call(f"find the job that made {model}", lambda: self.client.fine_tuning.list(), retry=True)
            job = next((j for j in jobs.data if _output_name(j) == model), None)
            if job is None:
                raise ConfigError(f"Together has no fine-tuning job whose output model is {model}. Deploy a tuned "
                                  "model by its name, or a registry model by its path projects/<p>/models/<id>.")
            full = self._call(f"read job {job.id}", lambda: self.client.fine_tuning.retrieve(job.id), retry=True)
            model_id = full.api_model_object_id or full.adapter_object_id
            revision = (full.api_model_object_revision_id if full.api_model_object_id
                        else full.adapter_object_revision_id)
            if not model_id:
                raise ConfigError(f"Together's job {job.id} names no registry model for {model} (no model_object_id "
                                  "or adapter_object_id), so it cannot be deployed through the endpoints API.")
            owner, path = project, ""
        registered = self._call(f"read model {model_id}", lambda: self.client.models.retrieve(
            model_id, project_id=owner), retry=True)
        if not path:
            path = f"projects/{registered.project_id}/models/{registered.id}" + (
                f"/revisions/{revision}" if revision else "")
        return path, registered

    def _model_configs(self, model: str, registered: Any, project: str) -> list[Any]:
        """The config revisions Together lists for the model's base (the model itself when it has none)."""
        if registered.base_model:
            query = {"reference_model": registered.base_model}
        elif registered.base_model_id:
            query = {"reference_model_id": registered.base_model_id}
        else:
            query = {"reference_model": f"projects/{registered.project_id}/models/{registered.id}"}
        configs = self._call(f"list the deployment configs of {model}", lambda: list(
            self.client.models.configs.list(project_id=project, **query)), retry=True)
        if not configs:
            raise ConfigError(f"Together lists no deployment config for {model} ({next(iter(query.values()))}), "
                              "so it cannot be deployed on a dedicated endpoint.")
        return configs

    def _instance_types(self) -> list[Any]:
        """Together's inference hardware with its prices (``endpoints.hardware.list``), read once."""
        if self._hardware_listing is None:
            answer = self._call("list Together's inference hardware", lambda: self.client.endpoints.hardware.list(),
                                retry=True)
            self._hardware_listing = list(answer.data)
        return self._hardware_listing

    def _pick_config(self, model: str, configs: list[Any], listing: list[Any],
                     hardware: str | None) -> tuple[Any, Any]:
        """(config, its instance type from the listing or None): see :meth:`deploy`."""
        rows = []
        for config in configs:
            name = self._config_hardware(config)
            rows.append((config, name, self._instance(listing, name) if name else None))

        def cost(row: tuple[Any, Any, Any]) -> tuple[bool, int]:
            return row[2] is None, row[2].price_cents_per_hour if row[2] is not None else 0

        if hardware:
            wanted = {self._hardware_key(hardware)}
            named = self._instance(listing, hardware)
            if named is not None:
                wanted |= {self._hardware_key(named.name), self._hardware_key(named.id)}
            matches = [(c, name, inst) for c, name, inst in rows
                       if hardware in (c.id, f"projects/{c.project_id}/configs/{c.id}")
                       or (name and self._hardware_key(name) in wanted)
                       or (inst is not None and {self._hardware_key(inst.name), self._hardware_key(inst.id)} & wanted)]
            why = f"no deployment config of {model} runs on {hardware!r}"
        else:
            matches = [row for row in rows if row[2] is not None and self._has_capacity(row[2])]
            matches = matches or (rows if len(rows) == 1 else [])
            why = f"Together's hardware listing offers none of the {len(rows)} configs of {model} with capacity now"
        if not matches:
            choices = "; ".join(
                f"{name or c.id} (config {c.id}, "
                + (f"${inst.price_cents_per_hour / 100:.2f}/hour" if inst is not None else "price unknown")
                + (")" if inst is None or self._has_capacity(inst) else ", no capacity listed)")
                for c, name, inst in rows)
            raise ConfigError(f"Cannot deploy: {why}. Choose hardware=... (--hardware) from: {choices}.")
        config, _, instance = min(matches, key=cost)
        return config, instance

    def _create_deployment(self, project: str, endpoint_id: str, arguments: dict[str, Any]) -> Any:
        """The paid create, sent once. Refused: the new endpoint is deleted again. Answer lost: the endpoint
        (new, so whatever it holds is this create's) is asked for its deployment."""
        deployments = self.client.endpoints.deployments
        try:
            return self._call(f"create a deployment of {arguments['model']}", lambda: deployments.create(
                endpoint_id, project_id=project, **arguments), retry=False)
        except ReplayMismatch:
            raise
        except ProviderError as exc:
            if self._answered_no(exc) or isinstance(exc, (AuthenticationFailed, RateLimited)):
                with contextlib.suppress(ProviderError):  # nothing was created: take the new endpoint back
                    self._call(f"delete endpoint {endpoint_id}", lambda: self.client.endpoints.delete(
                        endpoint_id, project_id=project), retry=False)
                raise
            failure = exc
        try:
            found = self._call(f"look for the deployment on endpoint {endpoint_id}", lambda: list(
                deployments.list(endpoint_id, project_id=project)), retry=True)
        except ProviderError:
            found = None
        if found:
            return found[0]
        raise ProviderError(
            f"{failure} The deployment may still have been created on Together endpoint {endpoint_id} (project "
            f"{project}) and bill by the hour: check with `tg endpoints retrieve {endpoint_id}` and remove it with "
            f"`tg endpoints rm {endpoint_id} --force`.", provider=self.name, status_code=failure.status_code,
            raw=failure.raw) from None

    def _deployment_record(self, raw: Any, instance: Any = None) -> Deployment:
        raw_state = str(raw.status.state)
        hardware = raw.hardware or (instance.name if instance is not None else None)
        return Deployment(
            provider=self.name,
            deployment_id=f"projects/{raw.project_id}/endpoints/{raw.endpoint_id}/deployments/{raw.id}",
            model=raw.model, serving_model=raw.name, state=self._deployment_state(raw_state), raw_state=raw_state,
            hardware=hardware, usd_per_hour=self._usd_per_hour(raw.model, hardware, instance),
            created_at=to_datetime(raw.created_at),
        )

    def _deployment_state(self, raw: str) -> Literal["creating", "ready", "stopping", "stopped", "failed", "unknown"]:
        state = self.DEPLOYMENT_STATE_MAP.get(raw)
        if state is None:
            warnings.warn(f"together reported deployment state {raw!r}, which tuneproxy does not know; treating it "
                          "as 'unknown'. Please report it so it can be mapped.", UnknownStatusWarning, stacklevel=3)
            return "unknown"
        return state

    def _usd_per_hour(self, model: str, hardware: str | None, instance: Any = None) -> float | None:
        """Dollars per hour for one replica: Together's listing (cents per hour), else the catalogue."""
        if instance is None and hardware:
            try:
                instance = self._instance(self._instance_types(), hardware)
            except ReplayMismatch:
                raise
            except ProviderError:
                instance = None  # a price is not worth failing a status read or a delete over
        if instance is not None:
            return instance.price_cents_per_hour * self.DEPLOYMENT_REPLICAS / 100
        if not hardware:
            return None
        from tuneproxy.prices import price_quantities

        return price_quantities(self.name, model, [Quantity(kind="deployment_hours", amount=1,
                                                            hardware=hardware)]).usd

    @staticmethod
    def _name_stem(name: str) -> str:
        """A name-safe stem of a model's name: lower-case letters, digits and dashes, at most 40, keeping its
        end (a tuned model's suffix and job tag) whole words at a time."""
        words = [w for w in re.split(r"[^a-z0-9]+", name.rsplit("/", 1)[-1].lower()) if w]
        kept: list[str] = []
        while words and len("-".join([words[-1], *kept])) <= 40:
            kept.insert(0, words.pop())
        return "-".join(kept) or (words[-1][-40:] if words else "model")

    @staticmethod
    def _answered_no(exc: ProviderError) -> bool:
        """The service answered with a 4xx that says the request was not carried out (not 408: a timeout)."""
        return exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code not in OUTCOME_UNKNOWN

    @staticmethod
    def _config_hardware(config: Any) -> str | None:
        """A config's hardware as ``{count}x{type}`` from its ``accelerator_count``/``accelerator_type``
        selectors (the SDK CLI's reading, ``lib/cli/api/endpoints/_utils/_hardware_pricing.py``)."""
        values = {s.key: s.value for s in config.selectors or []}
        count, kind = values.get("accelerator_count"), values.get("accelerator_type")
        return f"{count}x{kind}" if count and kind else None

    @staticmethod
    def _hardware_key(name: str | None) -> str:
        """A hardware name compared loosely, as the SDK CLI does: case and a ``nvidia-`` prefix ignored."""
        return (name or "").lower().replace("nvidia-", "")

    @classmethod
    def _instance(cls, listing: list[Any], hardware: str) -> Any:
        """The listed instance type named (or with the id) ``hardware``, or None."""
        exact = next((i for i in listing if hardware in (i.name, i.id)), None)
        return exact or next((i for i in listing if cls._hardware_key(i.name) == cls._hardware_key(hardware)), None)

    @staticmethod
    def _has_capacity(instance: Any) -> bool:
        """Offered in some region whose best-effort headroom is not reported as exactly zero."""
        return any(r.headroom is None or r.headroom.value is None or r.headroom.relation != "RELATION_EQ"
                   or r.headroom.value > 0 for r in instance.regions or [])


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
