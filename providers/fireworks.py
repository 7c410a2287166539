"""Fireworks AI supervised fine-tuning (LoRA) through the ``fireworks-ai`` 1.2.x SDK, which runs on ``httpx``.

Facts this module relies on (see reference/providers-fireworks-replicate.md §1):
- Everything lives under an account: ``/v1/accounts/{account_id}/...``. The account id comes from the
  ``account_id`` option or ``FIREWORKS_ACCOUNT_ID``; the key from ``FIREWORKS_API_KEY``.
- The SDK builds absolute ``https://api.fireworks.ai`` URLs unless a base URL is given, and retries 409s
  (and every POST) by default: its retries are off here (:mod:`providers._sdk`), so a create is sent once.
- A dataset is a record first (``datasets.create`` with the example count, which Fireworks needs from the
  client), then its bytes in one multipart ``:upload`` call (at most 150 MB; the SDK's large-file helper
  opens its own HTTP client, outside the injected transport, so it is not used), then it is ``READY``.
  Resource ids are 1–63 characters of ``a-z0-9-``, not starting or ending with ``-``.
- A job's ``state`` is one of the SDK's 18 ``JOB_STATE_*`` values (the live API adds ``DELETED`` and
  ``ARCHIVED``); ``cancel`` answers ``{}``, so the job is read again after it.
- Jobs carry no metadata: the intent tag travels in the display name, which the job keeps, so a create whose
  answer was lost is found by listing jobs.
- ``outputModel`` may come back as a bare id or as ``accounts/{a}/models/{m}``; tuneproxy names the tuned
  model by the full name, which is what inference takes.
- ``estimatedCost`` (google.type.Money: ``units`` as a string, ``nanos``) is the service's money figure; it is
  the billed figure once the job has ended. Before the job, the core prices tokens × epochs by the catalogue's
  size band.
- There are no job events: :meth:`FireworksProvider.events` derives them from the job itself (its creation,
  its state, its progress percent and epoch) and from its metrics file.
- The loss curve is only behind ``metricsFileSignedUrl``, a signed storage URL on the job. Fireworks documents
  the field ("The signed URL for the metrics file") but not the file. What public client code reads from it
  (openpond/openpond ``apps/server/src/training/fireworks-metrics.ts`` and its test; ``firectl dpo-job
  export-metrics`` saves the DPO equivalent as ``metrics.jsonl``): JSON lines, one per logged step, either
  flat (``{"step": 1, "train/step": 1, "train/loss": 1.379, "train/lr": 0.0001, "train/total_tokens": …}``)
  or nested (``{"timestamp": <unix s>, "step": 1, "data": {"train/epoch": 0, "train/loss": 0.93, …}}``).
  No sample shows an evaluation row; ``eval/loss`` (and a few spellings like it) is assumed. So it is read
  defensively (``providers/_metrics_file.py``: JSON lines, a JSON array, or CSV with a step column and
  loss-like columns), fetched on the provider's own transport without the API key, and a file that cannot be
  fetched or read is a :class:`MetricsWarning`, never a failed read of the job.
- A tuned LoRA is served only on a dedicated deployment (:class:`tuneproxy.contract.Deployable`, the last
  section of the class): ``deployments.create`` with the LoRA as base model, read until ``READY``, deleted on
  request; its hourly price from the catalogue's GPU-hour rows. Inference names ``model#deployment``.
"""

from __future__ import annotations

import csv
import hashlib
import os
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
from tuneproxy.dataset.convert import chat_record
from tuneproxy.dataset.examples import Example
from tuneproxy.errors import ConfigError, DatasetError, NotFound, ProviderError, ReplayMismatch, redact
from tuneproxy.recording import CassetteMismatch

from ._http import intent_tag, to_datetime
from ._metrics_file import MetricPoint, metric_points
from ._sdk import SDKOptions, SDKProvider

MESSAGE_KEYS = frozenset({"role", "content", "weight", "tool_calls", "tool_call_id", "name", "reasoning_content"})
ACCOUNT_ENV = "FIREWORKS_ACCOUNT_ID"
DIRECT_UPLOAD_LIMIT = 150 * 1024 * 1024  # the ``:upload`` call's limit; larger files need signed URLs
ID_MAX = 63
NANO = 1_000_000_000
_MODEL_NAME = re.compile(r"accounts/[^/]+/models/[^/#]+")
class MetricsWarning(UserWarning):
    """A Fireworks job's metrics file could not be fetched or read: the job is read without its loss curve."""

CAPABILITIES = Capabilities(
    display_name="Fireworks AI",
    trainable=r"accounts/[\w-]+/models/[\w.-]+",
    trainable_note="Fireworks fine-tunes models named accounts/<account>/models/<model>",
    credentials=Credentials(env_var="FIREWORKS_API_KEY", key_pattern=r"fw_[A-Za-z0-9]{8,}"),
    parameters={
        "epochs": ParameterSpec(minimum=1, wire="epochs"),
        "learning_rate": ParameterSpec(wire="learning_rate"),
        "batch_size": ParameterSpec(minimum=1, wire="batch_size_samples", note="examples per step"),
        "lora_rank": ParameterSpec(minimum=1, maximum=64, wire="lora_rank", note="power of 2"),
        "max_seq_length": ParameterSpec(wire="max_context_length"),
        "suffix": ParameterSpec(note="the tuned model's id: the suffix and a short intent tag"),
    },
    rules=DatasetRules(
        formats=frozenset({"chat"}),
        min_examples=3,
        max_examples=3_000_000,
        max_file_bytes=DIRECT_UPLOAD_LIMIT,
        upload_path="the direct dataset upload (150 MB)",
        roles=frozenset({"system", "user", "assistant", "tool"}),
        message_keys=MESSAGE_KEYS,
        weight_roles=frozenset({"system", "user", "assistant", "tool"}),
        system_only_first=True,
        default_context_tokens=32768,
    ),
    serving_note=("Fireworks serves a tuned LoRA only on a dedicated deployment, which bills by the GPU-hour for as "
                  "long as it is up: `tuneproxy deployments create JOB_ID --wait` starts one, `tuneproxy deployments "
                  "list` shows what is up, `tuneproxy deployments delete ID` stops it."),
)


class FireworksOptions(SDKOptions):
    """Fireworks' settings (the key comes from ``FIREWORKS_API_KEY``)."""

    account_id: str | None = Field(None, min_length=1, description="The Fireworks account that holds datasets, jobs "
                                                                   f"and models (default: {ACCOUNT_ENV}).")
    upload_poll_seconds: float = Field(2.0, ge=0, description="Seconds between two checks that an uploaded dataset "
                                                              "is ready.")
    upload_poll_attempts: int = Field(60, ge=1, description="Checks of an uploaded dataset before giving up on it.")


class FireworksProvider(SDKProvider):
    """Fireworks AI's supervised fine-tuning API, through the fireworks-ai SDK on an httpx transport (a
    :class:`tuneproxy.recording.ReplayTransport` in tests). Settings: :class:`FireworksOptions`."""

    name: ClassVar[str] = "fireworks"
    Options = FireworksOptions
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES
    SDK = ("fireworks", "Fireworks", "AsyncFireworks", "httpx")
    STATUS_MAP: ClassVar[dict[str, JobStatus]] = {
        **{f"JOB_STATE_{s}": JobStatus.QUEUED for s in
           ("CREATING", "PENDING", "RE_QUEUEING", "CREATING_INPUT_DATASET", "IDLE")},
        "JOB_STATE_VALIDATING": JobStatus.VALIDATING,
        "JOB_STATE_RUNNING": JobStatus.RUNNING,
        "JOB_STATE_WRITING_RESULTS": JobStatus.RUNNING,
        "JOB_STATE_COMPLETED": JobStatus.SUCCEEDED,
        "JOB_STATE_EARLY_STOPPED": JobStatus.SUCCEEDED,
        "JOB_STATE_FAILED": JobStatus.FAILED,
        "JOB_STATE_EXPIRED": JobStatus.FAILED,
        "JOB_STATE_CANCELLED": JobStatus.CANCELLED,
        # Still stopping: not terminal until CANCELLED, and the bill is not final before then.
        "JOB_STATE_CANCELLING": JobStatus.RUNNING,
    }
    # A job being deleted, deleted or archived says nothing about how training ended, a paused one is
    # neither running nor finished, and UNSPECIFIED is the protobuf default: shown as unknown, with a warning.
    DOCUMENTED_UNMAPPED: ClassVar[frozenset[str]] = frozenset(
        f"JOB_STATE_{s}" for s in ("UNSPECIFIED", "DELETING", "DELETING_CLEANING_UP", "PAUSED", "DELETED", "ARCHIVED")
    )
    _metrics_client: Any = None  # the plain httpx client that fetches metrics files (built on first use)

    # ------------------------------------------------------------------ clients

    @property
    def fireworks_options(self) -> FireworksOptions:
        """The options, typed."""
        assert isinstance(self.options, FireworksOptions)
        return self.options

    @property
    def account_id(self) -> str:
        """The account: the ``account_id`` option, else ``FIREWORKS_ACCOUNT_ID``; neither is a ConfigError."""
        account = self.fireworks_options.account_id or os.environ.get(ACCOUNT_ENV)
        if not account:
            raise ConfigError(f"No Fireworks account id: set the environment variable {ACCOUNT_ENV} (for example "
                              f"`export {ACCOUNT_ENV}=my-account`) or pass `-o account_id=...` (Python: "
                              "provider_options={'account_id': ...}).")
        return account

    def sdk_errors(self) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
        import fireworks

        return fireworks.APIError, (fireworks.APIConnectionError,)

    def client_arguments(self) -> dict[str, Any]:
        # None would override the SDK's own default (and its environment variable): leave unset ones out.
        # Without an account the client still serves chat completions and deployments named in full.
        kwargs = {key: value for key, value in super().client_arguments().items() if value is not None}
        account = self.fireworks_options.account_id or os.environ.get(ACCOUNT_ENV)
        if account:
            kwargs["account_id"] = account
        return kwargs

    @property
    def api(self) -> Any:
        """The sync client, for calls under the account (checked first: the SDK's own complaint would be a
        ValueError mistaken for an unreadable answer)."""
        _ = self.account_id
        return self.client

    # ------------------------------------------------------------------ upload

    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        """Create the dataset record with its example count, send the bytes in one multipart ``:upload``
        call, then read the dataset until it is ``READY``. The dataset id is the file's name and a hash of
        its bytes, so the same file is one dataset: one that already exists and is ready is reused."""
        path = Path(path)
        size = path.stat().st_size
        if size > DIRECT_UPLOAD_LIMIT:
            raise DatasetError(f"{path.name} is {size / 1024 ** 2:.0f} MB: Fireworks' direct dataset upload takes at "
                               f"most {DIRECT_UPLOAD_LIMIT // 1024 ** 2} MB, and tuneproxy does not use the signed-URL "
                               "upload. Split the data or train on fewer examples.")
        data = path.read_bytes()
        dataset_id = dataset_id_for(path.name, data)
        datasets = self.api.datasets
        examples = sum(1 for line in data.splitlines() if line.strip())
        try:
            self._call(f"create dataset {dataset_id}", lambda: datasets.create(
                dataset_id=dataset_id, dataset={"user_uploaded": {}, "example_count": str(examples)}), retry=False)
        except ProviderError as exc:
            if exc.status_code != 409:
                raise
            existing = self._call(f"read dataset {dataset_id}", lambda: datasets.get(dataset_id), retry=True)
            if existing.state == "READY":  # the same bytes, uploaded before
                return self._uploaded(existing, path, size, purpose)
        self._call(f"upload {path.name}", lambda: datasets.upload(dataset_id, file=path), retry=False)
        return self._uploaded(self._wait_until_ready(dataset_id), path, size, purpose)

    def _wait_until_ready(self, dataset_id: str) -> Any:
        options = self.fireworks_options
        for attempt in range(options.upload_poll_attempts):
            if attempt:
                self.sleep(options.upload_poll_seconds)
            dataset = self._call(f"read dataset {dataset_id}", lambda: self.api.datasets.get(dataset_id),
                                 retry=True)
            status = dataset.status
            if status is not None and status.code not in (None, "OK"):
                raise ProviderError(f"Fireworks refused dataset {dataset_id}: {status.message or status.code}",
                                    provider=self.name, raw=str(status.code))
            if dataset.state == "READY":
                return dataset
        waited = (options.upload_poll_attempts - 1) * options.upload_poll_seconds
        raise ProviderError(
            f"Fireworks dataset {dataset_id} is still {dataset.state} after {options.upload_poll_attempts} checks "
            f"({waited:g} s), so no job was created and nothing is billed. Check it with `firectl get dataset "
            f"{dataset_id}`; once it is READY, run the same command again (the dataset is reused, not uploaded "
            "again). To wait longer for it, raise the number of checks: `-o upload_poll_attempts=120` (Python: "
            "provider_options={'upload_poll_attempts': 120}).", provider=self.name, raw=str(dataset.state))

    def _uploaded(self, dataset: Any, path: Path, size: int, purpose: Literal["train", "validation"]) -> UploadedFile:
        return UploadedFile(id=dataset.name, filename=path.name, bytes=size, purpose=purpose)

    # ------------------------------------------------------------------ jobs

    def create_arguments(self, spec: JobSpec) -> dict[str, Any]:
        """The keyword arguments for ``supervised_fine_tuning_jobs.create``: what was given under Fireworks'
        names, the datasets by full name, and the intent tag in the display name (and the output model's id
        when a suffix is given)."""
        kwargs = self.wire_parameters(spec.hyperparameters)
        tag = intent_tag(spec.intent_id)
        suffix = spec.hyperparameters.suffix
        kwargs.update(dataset=self.dataset_name(spec.training_file), base_model=spec.model,
                      display_name=f"tuneproxy-{tag}")
        if suffix:
            kwargs["output_model"] = fireworks_id(f"{suffix}-{tag}")
        if spec.validation_file:
            kwargs["evaluation_dataset"] = self.dataset_name(spec.validation_file)
        return kwargs

    def submit(self, spec: JobSpec) -> JobRecord:
        """Create the job. Sent once: a lost answer is found again by :meth:`find_job`."""
        kwargs = self.create_arguments(spec)
        job = self._create(spec, lambda: self.api.supervised_fine_tuning_jobs.create(**kwargs))
        return self._record(job, intent_id=spec.intent_id)

    def refresh(self, job_id: str) -> JobRecord:
        """The job as Fireworks reports it now, with the billed cost once it has ended."""
        return self._record(self._read(job_id))

    def _read(self, job_id: str) -> Any:
        jobs = self.api.supervised_fine_tuning_jobs
        return self._call(f"read job {job_id}", lambda: jobs.get(job_id), retry=True)

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """Events read off the job (Fireworks keeps no event list): its creation, one event per step of its
        metrics file (``metrics-<step>``: the losses of that step), and last its status (state, progress
        percent, epoch, latest step), each with an id that names what it says, so a later read gives the
        same ids to what has not changed.

        The list only grows at its end, so the events newer than ``after`` are those after it: a step joins
        once a later step is logged or the job has ended (until then it may still gain its evaluation row),
        and the status event comes last with an id naming all it reports (``state-<STATE>-epoch<e>-<p>pct-
        step<s>``), so any change makes a new one. An id the job no longer shows gives every event (the
        ledger keeps one copy of each id)."""
        job = self._read(job_id)
        found = self._events(job, self._metric_points(job))
        ids = [event.id for event in found]
        return found[ids.index(after) + 1:] if after in ids else found

    def _metric_points(self, job: Any) -> list[MetricPoint]:
        """The steps of the job's metrics file that are final (all of them once the job has ended; else
        all but the last), oldest first; none without a file or when it cannot be fetched or read."""
        url = job.metrics_file_signed_url
        if not url:
            return []
        job_id = job_id_of(job.name or "")
        text = self._metrics_file(url, job_id)
        if text is None:
            return []
        try:
            points = sorted(metric_points(text).values(), key=lambda point: point.step)
        except (ValueError, TypeError, csv.Error) as exc:
            warnings.warn(f"The metrics file of Fireworks job {job_id} could not be read ({type(exc).__name__}: "
                          f"{exc}); its loss curve is left out.", MetricsWarning, stacklevel=4)
            return []
        return points if self.status(str(job.state or "")).terminal else points[:-1]

    def _metrics_file(self, url: str, job_id: str) -> str | None:
        """The metrics file's text, fetched on the provider's own transport (a replay in tests) by a plain
        client: the URL is signed, so the API key is never sent to the storage host. A failure is a
        warning (the next read tries again); a replay mismatch is an error."""
        import httpx

        if self._metrics_client is None:
            self._metrics_client = httpx.Client(transport=self.transport, timeout=self.settings.timeout,
                                                follow_redirects=True)
        shown = redact(url.split("?", 1)[0])
        try:
            response = self._metrics_client.get(url)
        except CassetteMismatch as exc:
            raise self.error(exc, f"read the metrics file of job {job_id}") from None
        except httpx.HTTPError as exc:
            warnings.warn(f"The metrics file of Fireworks job {job_id} could not be fetched from {shown} "
                          f"({type(exc).__name__}); its loss curve is left out for now.", MetricsWarning,
                          stacklevel=5)
            return None
        if response.status_code != 200:
            warnings.warn(f"The metrics file of Fireworks job {job_id} could not be fetched from {shown} (HTTP "
                          f"{response.status_code}); its loss curve is left out for now.", MetricsWarning,
                          stacklevel=5)
            return None
        return response.text

    def cancel(self, job_id: str) -> JobRecord:
        """Ask Fireworks to cancel the job (it answers ``{}``), then read the job: it reports
        ``JOB_STATE_CANCELLING`` until it has stopped."""
        jobs = self.api.supervised_fine_tuning_jobs
        self._call(f"cancel job {job_id}", lambda: jobs.cancel(job_id, body={}), retry=False)
        return self.refresh(job_id)

    def find_job(self, intent_id: str) -> JobRecord | None:
        """The job whose display name carries the intent tag, if Fireworks has one (every page is read)."""
        tag = intent_tag(intent_id)
        jobs = self._call(f"look up the job for intent {intent_id}",
                          lambda: list(self.api.supervised_fine_tuning_jobs.list(page_size=200)), retry=True)
        for job in jobs:
            if tag in (job.display_name or ""):
                return self._record(job, intent_id=intent_id)
        return None

    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """Training tokens × epochs (Fireworks' default of 1 when not given), for the core to price with the
        catalogue's size band. Fireworks has no estimate endpoint; the job's own ``estimatedCost`` wins later."""
        epochs = spec.hyperparameters.epochs or DEFAULT_EPOCHS
        return CostEstimate(
            provider=self.name, model=spec.model,
            quantities=[Quantity(kind="training_tokens", amount=stats.billable_tokens(epochs))],
            basis=f"{stats.total_tokens:,} tokens × {epochs} epochs",
        )

    def endpoint(self, model: str) -> Endpoint:
        """Chat completions on ``model``: a base model Fireworks serves, or a tuned model on its deployment
        (``accounts/{a}/models/{m}#accounts/{a}/deployments/{d}``). A deployment bills by the GPU-second, not
        by the token, so completions are not priced from the catalogue."""
        return self.chat_endpoint(model, priced=False)

    def serving_cost(self, model: str) -> ServingCost:
        """A dedicated deployment per GPU-hour while it is up: the catalogue's range over its GPUs."""
        from tuneproxy.prices import load_catalogue

        rows = [p for p in load_catalogue().prices if p.provider == self.name and p.kind == "deployment_hour"]
        if not rows:
            return ServingCost(per="unknown", note="a dedicated deployment, per GPU-hour; no price in the catalogue",
                               label="dedicated")
        return ServingCost(per="hour", usd_low=min(p.usd_low if p.usd_low is not None else p.usd for p in rows),
                           usd_high=max(p.usd for p in rows), note="dedicated deployment per GPU-hour while up",
                           label="dedicated")

    def serialize(self, example: Example) -> dict[str, Any]:
        """Fireworks chat JSONL: ``messages`` (known keys only) and ``tools``."""
        return chat_record(example, MESSAGE_KEYS, frozenset({"tools"}))

    # ================================================================== paid deployments (Deployable)
    # Fireworks serves a tuned LoRA only on a dedicated deployment (no serverless LoRA any more), billed per
    # GPU-second while it is up, started only when the user asks (TunedModel.deploy, `tuneproxy deployments
    # create`); endpoint() never deploys. One LoRA per deployment ("live merge": the LoRA is the deployment's
    # base model). A deployment is named by its resource name, accounts/{a}/deployments/{d}, so it can be read
    # and deleted later by a provider built with no option set.

    # Every state the SDK's Deployment.state documents -> Deployment.state; STATE_UNSPECIFIED (the protobuf
    # default) says nothing and is shown as unknown, with a warning.
    DEPLOYMENT_STATE_MAP: ClassVar[dict[str, Literal["creating", "ready", "stopping", "stopped", "failed"]]] = {
        "CREATING": "creating",
        "READY": "ready",
        "UPDATING": "ready",  # a change being rolled out; it serves meanwhile (raw_state says so)
        "DELETING": "stopping",
        "DELETED": "stopped",
        "FAILED": "failed",
    }
    DEPLOYMENT_REPLICAS: ClassVar[int] = 1  # min = max replicas of a deployment tuneproxy creates
    _DEPLOYMENT_NAME: ClassVar[re.Pattern[str]] = re.compile(r"accounts/([^/]+)/deployments/([^/]+)")

    def deploy(self, model: str, *, hardware: str | None = None) -> Deployment:
        """Start a PAID dedicated deployment of the tuned ``model`` (one replica, billed per GPU-second until
        :meth:`undeploy`); returns at once, usually ``creating``. Poll :meth:`deployment` until ``ready``, then
        send chat completions to its ``serving_model`` (``model#deployment``) through :meth:`endpoint`.

        ``hardware``: an accelerator type of the SDK (``NVIDIA_H100_80GB``…); by default Fireworks chooses.
        The deployment's id is the model's id, so a create whose answer was lost is looked up by it (and a
        second deploy of the same model is refused by Fireworks rather than billed twice).
        """
        model = self.model_name(model)
        deployment_id = fireworks_id(model.rsplit("/", 1)[-1])
        arguments: dict[str, Any] = {"base_model": model, "deployment_id": deployment_id,
                                     "min_replica_count": self.DEPLOYMENT_REPLICAS,
                                     "max_replica_count": self.DEPLOYMENT_REPLICAS}
        if hardware:
            arguments.update(accelerator_type=hardware, accelerator_count=1)
        deployments = self.api.deployments
        try:
            created = self._call(f"create a deployment of {model}", lambda: deployments.create(**arguments),
                                 retry=False)
        except ReplayMismatch:
            raise
        except ProviderError as exc:
            if exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code != 408:
                raise  # answered: nothing was created
            try:  # the answer was lost: the id it would have is known
                created = self._call(f"look for deployment {deployment_id}", lambda: deployments.get(deployment_id),
                                     retry=True)
            except ProviderError:
                raise ProviderError(
                    f"{exc} The deployment may still have been created and bill by the hour: check with `firectl "
                    f"get deployment {deployment_id}` and remove it with `firectl delete deployment {deployment_id}`.",
                    provider=self.name, status_code=exc.status_code, raw=exc.raw) from None
        return self._deployment_record(created)

    def deployment(self, deployment_id: str) -> Deployment:
        """The deployment's current state (``GET .../deployments/{d}``)."""
        account, dep_id = self._deployment_ref(deployment_id)
        current = self._call(f"read deployment {deployment_id}", lambda: self.client.deployments.get(
            dep_id, account_id=account), retry=True)
        return self._deployment_record(current)

    def undeploy(self, deployment_id: str) -> Deployment:
        """Delete the deployment, then read it: ``stopping`` while Fireworks deletes it, ``stopped`` once it
        is deleted or gone (it no longer bills). A deployment Fireworks never had is :class:`NotFound`."""
        account, dep_id = self._deployment_ref(deployment_id)
        current = self.deployment(deployment_id)
        self._call(f"delete deployment {deployment_id}", lambda: self.client.deployments.delete(
            dep_id, account_id=account), retry=False)
        try:
            return self.deployment(deployment_id)
        except NotFound:
            return current.model_copy(update={"state": "stopped", "raw_state": "DELETED"})

    def _deployment_ref(self, deployment_id: str) -> tuple[str, str]:
        """(account, deployment id) of ``accounts/{a}/deployments/{d}``, or of ``{d}`` in the configured account."""
        full = self._DEPLOYMENT_NAME.fullmatch(deployment_id)
        if full:
            return full.group(1), full.group(2)
        if "/" in deployment_id:
            raise ConfigError(f"{deployment_id!r} is not a Fireworks deployment: tuneproxy names them "
                              "accounts/<account>/deployments/<id> (`tuneproxy deployments list` shows them).")
        return self.account_id, deployment_id

    def _deployment_record(self, raw: Any) -> Deployment:
        raw_state = str(raw.state or "STATE_UNSPECIFIED")
        hardware = str(raw.accelerator_type) if raw.accelerator_type else None
        return Deployment(
            provider=self.name, deployment_id=raw.name, model=raw.base_model,
            serving_model=f"{raw.base_model}#{raw.name}", state=self._deployment_state(raw_state),
            raw_state=raw_state, hardware=hardware,
            usd_per_hour=self._usd_per_hour(raw.base_model, hardware, raw.accelerator_count or 1),
            created_at=to_datetime(raw.create_time),
        )

    def _deployment_state(self, raw: str) -> Literal["creating", "ready", "stopping", "stopped", "failed", "unknown"]:
        state = self.DEPLOYMENT_STATE_MAP.get(raw)
        if state is None:
            warnings.warn(f"fireworks reported deployment state {raw!r}, which tuneproxy does not map; treating it "
                          "as 'unknown'.", UnknownStatusWarning, stacklevel=3)
            return "unknown"
        return state

    def _usd_per_hour(self, model: str, hardware: str | None, accelerators: int) -> float | None:
        """Dollars per hour for the deployment's replicas, from the catalogue's GPU-hour prices."""
        if not hardware:
            return None
        from tuneproxy.prices import price_quantities

        return price_quantities(self.name, model, [Quantity(
            kind="deployment_hours", amount=accelerators * self.DEPLOYMENT_REPLICAS, hardware=hardware)]).usd

    # ------------------------------------------------------------------ names

    def dataset_name(self, dataset: str) -> str:
        """``accounts/{a}/datasets/{id}`` for a dataset given by id or by full name."""
        return dataset if dataset.startswith("accounts/") else f"accounts/{self.account_id}/datasets/{dataset}"

    def model_name(self, model: str) -> str:
        """``accounts/{a}/models/{id}`` for an output model Fireworks names by id or by full name."""
        return model if _MODEL_NAME.fullmatch(model) else f"accounts/{self.account_id}/models/{model}"

    # ------------------------------------------------------------------ wire → contract

    def _record(self, job: Any, intent_id: str | None = None) -> JobRecord:
        raw = str(job.state or "JOB_STATE_UNSPECIFIED")
        status = self.status(raw)
        cost = money_usd(job.estimated_cost)
        progress = job.job_progress
        tokens = progress.input_tokens if progress is not None else None
        finished = (job.completed_time or job.update_time or self.clock()) if status.terminal else None
        return JobRecord(
            provider=self.name, job_id=job_id_of(job.name or ""), base_model=job.base_model or "",
            status=status, raw_status=raw,
            tuned_model=self.model_name(job.output_model) if status is JobStatus.SUCCEEDED and job.output_model
            else None,
            created_at=to_datetime(job.create_time), finished_at=to_datetime(finished),
            error=(job.status.message or None) if status is JobStatus.FAILED and job.status is not None else None,
            # jobProgress.inputTokens: the tokens the trainer read, all epochs (Fireworks states no billed count)
            billable=[Quantity(kind="training_tokens", amount=tokens)] if tokens else [],
            billed_usd=cost if status.terminal else None, intent_id=intent_id,
            detail={"display_name": job.display_name, "estimated_usd": cost,
                    "percent": progress.percent if progress is not None else None,
                    "epoch": progress.epoch if progress is not None else None},
        )

    def _events(self, job: Any, points: list[MetricPoint]) -> list[JobEvent]:
        created = to_datetime(job.create_time) or self.clock()
        updated = to_datetime(job.update_time) or created
        raw = str(job.state or "JOB_STATE_UNSPECIFIED")
        found = [JobEvent(id="created", time=created, message=f"Job {job_id_of(job.name or '')} created")]
        found += [point.event(updated) for point in points]
        progress = job.job_progress
        percent = progress.percent if progress is not None else None
        epoch = progress.epoch if progress is not None else None
        last = points[-1].step if points else None
        failed = self.STATUS_MAP.get(raw) is JobStatus.FAILED
        key, said = [f"state-{raw}"], []
        if epoch is not None:
            key.append(f"epoch{epoch}")
        if percent is not None:
            key.append(f"{percent}pct")
            said.append(f"{percent}% done")
        if epoch is not None:
            said.append(f"epoch {epoch}")
        if last is not None:
            key.append(f"step{last}")
            said.append(f"step {last}")
        message = f"State {raw.removeprefix('JOB_STATE_').lower()}" + (f" ({', '.join(said)})" if said else "")
        if failed and job.status is not None and job.status.message:
            message += f": {job.status.message}"
        found.append(JobEvent(id="-".join(key), time=updated, level="error" if failed else "info", message=message,
                              step=last, epoch=epoch))
        return found


def job_id_of(name: str) -> str:
    """The job id: the last segment of ``accounts/{a}/supervisedFineTuningJobs/{id}``."""
    return name.rsplit("/", 1)[-1]


def fireworks_id(text: str) -> str:
    """``text`` as a Fireworks resource id: a-z, 0-9 and ``-``, 1–63 characters, no ``-`` at either end
    (the end is kept: it holds the tag or hash that makes the id unique)."""
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower()))
    cleaned = cleaned[-ID_MAX:].strip("-")
    if not cleaned:
        raise ConfigError(f"{text!r} has no letter or digit to make a Fireworks id of.")
    return cleaned


def dataset_id_for(filename: str, data: bytes) -> str:
    """The dataset id for a file: its name's stem and the start of its bytes' SHA-256."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    stem = re.sub(r"[^a-z0-9]+", "-", Path(filename).stem.lower()).strip("-")[:ID_MAX - 17]
    return fireworks_id(f"tp-{stem}-{digest}" if stem else f"tp-{digest}")


def money_usd(money: Any) -> float | None:
    """US dollars of a google.type.Money (``units`` a string of whole units, ``nanos`` billionths), or None
    without one or in another currency."""
    if money is None or (money.currency_code or "USD") != "USD":
        return None
    if money.units is None and money.nanos is None:
        return None
    return int(money.units or 0) + (money.nanos or 0) / NANO
