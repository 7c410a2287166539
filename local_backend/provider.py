"""The local QLoRA backend behind the same Provider contract as the managed services.

``submit`` checks the run (model, LoRA targets, memory) and starts a worker process in its own session,
so the job outlives the client. Everything about a job lives in one folder under the provider's home,
private to its user (folders 0700, the data's copies and the job's files 0600)::

    <home>/files/<file-id>.jsonl          uploaded training/validation files (content-addressed)
    <home>/models/<name>-<size>-<mtime>/  GGUF models dequantized once into plain HF folders
    <home>/jobs/<job-id>/
        job.json        spec, resolved settings, intent id (written by submit)
        state.json      raw status, step, epoch, losses, tokens/s, ETA, error (atomic, under .lock)
        events.jsonl    one JobEvent per line (appended under .lock)
        worker.pid, worker.log, cancel (present once cancel was asked)
        checkpoints/step-NNNNNNNN/   latest checkpoint (atomic)
        adapter/        the PEFT adapter;  merged/  the merged model (option merge)
        summary.json    wall time, tokens, tokens/s, peak memory

Several processes may follow one job (the client that submitted it, ``tuneproxy jobs show`` elsewhere).
A job whose worker has been asked to start (state ``queued`` with ``start_requested_at``) but has no pid
yet is alive for :data:`START_GRACE_S`, so a refresh in that window never declares it dead.

Importing this module does not import torch: reading ``CAPABILITIES`` stays cheap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from tuneproxy.contract import (
    DEFAULT_EPOCHS,
    Capabilities,
    Clock,
    CostEstimate,
    DatasetRules,
    Endpoint,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    ParameterSpec,
    Provider,
    ProviderOptions,
    Quantity,
    ServingCost,
    Stats,
    UploadedFile,
    utc_now,
)
from tuneproxy.dataset.validate import load_examples
from tuneproxy.errors import ConfigError, DatasetError, JobNotFound, TuneproxyError
from tuneproxy.local_backend import models
from tuneproxy.local_backend.jobfiles import (
    ADAPTER_DIR,
    CANCEL_FILE,
    JOB_FILE,
    LOG_FILE,
    MERGED_DIR,
    PID_FILE,
    TERMINAL,
    JobFiles,
    open_private,
    write_json_atomic,
)
from tuneproxy.local_backend.settings import LocalOptions, settings_from_spec
from tuneproxy.paths import private_folder
from tuneproxy.prices import Price

MODEL_PREFIX = "local:"
CPU_TRAINING_FLOPS = 1.0e11  # effective FLOP/s a few CPU cores reach on small-model LoRA training
GPU_TRAINING_FLOPS = 1.0e14  # effective FLOP/s of one recent GPU on small-model (Q)LoRA training
TIME_SPREAD = 3.0  # the time guess is good to a factor of about this either way
START_GRACE_S = 60.0  # how long a worker asked to start may go without a pid before it is declared dead
CANCEL_POLL_S = 0.2


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _seconds_between(start: str | None, end: str | None) -> float:
    """Seconds from ``start`` to ``end`` (ISO 8601), 0 when either is missing or they are out of order."""
    if not start or not end:
        return 0.0
    return max(0.0, (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds())


class LocalProvider(Provider):
    """Fine-tunes on this machine: QLoRA on a GPU, plain LoRA on CPU.

    Options are :class:`~tuneproxy.local_backend.settings.LocalOptions`: ``home`` (job area),
    ``price_per_gpu_hour``, ``python`` (worker interpreter), ``cancel_timeout``, ``generation_batch_size``
    and the backend's own training settings (``target_modules``, ``quantization``, ``device``, ...).
    Portable hyperparameters come only from ``JobSpec.hyperparameters``; each is a
    :class:`~tuneproxy.local_backend.settings.TrainSettings` field of the same name (its ``wire`` name).

    The local backend states no money: a finished job reports ``gpu_hours`` (wall-clock hours of its
    worker, summed over resumed runs) and the training tokens it processed, and :meth:`prices` gives
    the core the user's ``price_per_gpu_hour`` to price them with. Beyond the contract: :meth:`resume`
    (the :class:`~tuneproxy.contract.Resumable` protocol) and :meth:`delete`.
    """

    name: ClassVar[str] = "local"
    Options: ClassVar[type[ProviderOptions]] = LocalOptions
    REQUIRES: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft")
    EXTRA: ClassVar[str | None] = "local"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        display_name="Local (QLoRA)",
        credentials=None,
        tokenizer="huggingface",
        parameters={
            "epochs": ParameterSpec(minimum=1, maximum=100, wire="epochs"),
            "learning_rate": ParameterSpec(minimum=1e-7, maximum=1e-1, wire="learning_rate"),
            "batch_size": ParameterSpec(minimum=1, maximum=1024, wire="batch_size",
                                        note="examples per optimizer step"),
            "lora_rank": ParameterSpec(minimum=1, maximum=512, wire="lora_rank"),
            "lora_alpha": ParameterSpec(minimum=1e-3, wire="lora_alpha", note="default 2 × lora_rank"),
            "lora_dropout": ParameterSpec(minimum=0, maximum=0.99, wire="lora_dropout"),
            "max_seq_length": ParameterSpec(minimum=16, maximum=131072, wire="max_seq_length"),
            "warmup_ratio": ParameterSpec(minimum=0, maximum=1, wire="warmup_ratio"),
            "seed": ParameterSpec(minimum=0, wire="seed"),
            "suffix": ParameterSpec(note="kept as a tag on the job"),
        },
        rules=DatasetRules(formats=frozenset({"chat", "completion", "text"}), min_examples=1),
        poll_seconds=1.0,
    )
    STATUS_MAP: ClassVar[dict[str, JobStatus]] = {
        "queued": JobStatus.QUEUED,
        "loading_model": JobStatus.RUNNING,
        "running": JobStatus.RUNNING,
        "saving": JobStatus.RUNNING,
        "cancel_requested": JobStatus.RUNNING,
        "succeeded": JobStatus.SUCCEEDED,
        "failed": JobStatus.FAILED,
        "cancelled": JobStatus.CANCELLED,
    }

    options: LocalOptions

    def __init__(self, options: ProviderOptions | Mapping[str, Any] | None = None, *,
                 api_key: str | None = None, transport: Any = None, clock: Clock = utc_now,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(options, api_key=api_key, transport=transport, clock=clock, sleep=sleep)
        self._workers: dict[str, subprocess.Popen[bytes]] = {}
        self._endpoints: dict[str, Endpoint] = {}

    @property
    def home(self) -> Path:
        """The job area (option ``home``)."""
        return self.options.home

    # files ------------------------------------------------------------------------------------------

    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        """Copy a JSONL file into the job area (after checking every line parses) and name it by content."""
        path = Path(path)
        load_examples(path, strict=True)
        data = path.read_bytes()
        file_id = "file-" + hashlib.sha256(data).hexdigest()[:24]
        target = private_folder(self.home / "files") / f"{file_id}.jsonl"
        if not target.exists():
            staging = target.with_suffix(f".tmp-{os.getpid()}")
            with os.fdopen(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
                fh.write(data)
            os.replace(staging, target)
        return UploadedFile(id=file_id, filename=path.name, bytes=len(data), purpose=purpose)

    def _file_path(self, ref: str) -> str:
        """An uploaded file id, or a path, as a path the worker can read."""
        uploaded = self.home / "files" / f"{ref}.jsonl"
        if uploaded.is_file():
            return str(uploaded)
        if Path(ref).expanduser().is_file():
            return str(Path(ref).expanduser().resolve())
        raise DatasetError(
            f"Unknown training file {ref!r}: upload it first (provider.upload(path)) or pass a path."
        )

    # jobs -------------------------------------------------------------------------------------------

    def check(self, spec: JobSpec) -> list[str]:
        """Problems that would stop ``spec`` from starting here (model, LoRA targets, memory)."""
        try:
            self._plan(spec)
        except TuneproxyError as exc:
            return [str(exc)]
        return []

    def _plan(self, spec: JobSpec) -> Any:
        from tuneproxy.local_backend.preflight import plan_run

        if spec.format not in self.capabilities.rules.formats:
            formats = ", ".join(sorted(self.capabilities.rules.formats))
            raise ConfigError(f"The local backend trains on {formats} data, not {spec.format!r}.")
        self.translate(spec.hyperparameters)
        # the core checks a spec before uploading, with no file yet: the data plays no part in the plan
        settings = settings_from_spec(
            spec, self._file_path(spec.training_file) if spec.training_file else "",
            self._file_path(spec.validation_file) if spec.validation_file else None, self.options,
        )
        return settings, plan_run(settings, self.home)

    def _job_files(self, job_id: str) -> JobFiles:
        return JobFiles(self.home / "jobs" / job_id, clock=self.clock)

    def submit(self, spec: JobSpec) -> JobRecord:
        """Check the run, write the job folder and start its worker detached from this process."""
        if not spec.training_file:
            raise DatasetError("The job has no training file: upload one (provider.upload(path)) and pass its id.")
        settings, plan = self._plan(spec)
        job_id = f"ljob-{self.clock().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
        files = self._job_files(job_id)
        private_folder(files.root.parent)
        files.root.mkdir(mode=0o700)
        # the state says a worker is on its way before job.json makes the job visible to anyone
        files.update_state(raw_status="queued", start_requested_at=files.now())
        files.append_event(f"Job created for {spec.model}; the run {plan.memory.describe()}.")
        write_json_atomic(files.path(JOB_FILE), {
            "job_id": job_id, "intent_id": spec.intent_id, "created_at": files.now(),
            "spec": spec.model_dump(mode="json"), "settings": settings.model_dump(mode="json"),
            "home": str(self.home), "options": self.options.stored(),
            "memory_estimate": plan.memory.describe(),
        })
        self._start_worker(files)
        return self.refresh(job_id)

    def _start_worker(self, files: JobFiles) -> None:
        """Start the job's worker (the state must already say ``queued`` with ``start_requested_at``)."""
        python = self.options.python or sys.executable
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        try:
            with open_private(files.path(LOG_FILE), "ab") as log:
                proc = subprocess.Popen(
                    [python, "-m", "tuneproxy.local_backend.worker", str(files.root)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,  # its own session: the job survives the client
                )
        except OSError as exc:
            message = (f"Could not start the local worker with {python!r}: {exc}. Set the option `python` to "
                       "an interpreter that has tuneproxy and its local extra installed.")
            files.append_event(message, level="error")
            files.update_state(raw_status="failed", error=message, finished_at=files.now())
            raise ConfigError(message) from None
        files.write_pid(proc.pid)  # the worker writes it too, first thing
        self._workers[files.job_id] = proc

    def resume(self, job_id: str) -> JobRecord:
        """Restart a job whose worker died (or was cancelled); it continues from its latest checkpoint."""
        record = self.refresh(job_id)
        if record.status == JobStatus.SUCCEEDED:
            raise ConfigError(f"Job {job_id} already succeeded; there is nothing to resume.")
        if not record.status.terminal:
            return record
        files = self._files(job_id)
        # while the state is still terminal nobody looks at these, so they can go first
        files.path(CANCEL_FILE).unlink(missing_ok=True)
        files.path(PID_FILE).unlink(missing_ok=True)

        def restart(state: dict[str, Any]) -> dict[str, Any] | None:
            if state.get("raw_status") not in TERMINAL:
                return None  # someone else resumed it meanwhile
            return {"raw_status": "queued", "error": None, "finished_at": None, "started_at": None,
                    "start_requested_at": files.now()}

        if files.change_state(restart)[1]:
            files.append_event("Resume requested.")
            self._start_worker(files)
        return self.refresh(job_id)

    def _files(self, job_id: str) -> JobFiles:
        files = self._job_files(job_id)
        if not files.path(JOB_FILE).is_file():
            raise JobNotFound(f"No local job {job_id!r} under {self.home / 'jobs'}. Check the id and `home`.")
        return files

    def _starting(self, state: dict[str, Any]) -> bool:
        """Whether a worker was asked to start less than :data:`START_GRACE_S` ago and has no pid yet."""
        requested = _parse_time(state.get("start_requested_at"))
        if state.get("raw_status") != "queued" or requested is None:
            return False
        return (self.clock() - requested).total_seconds() < START_GRACE_S

    def _alive(self, files: JobFiles, state: dict[str, Any]) -> bool:
        """Whether the job's worker still runs, or is still being started (reaping it if this client
        started it)."""
        pid = files.pid()
        proc = self._workers.get(files.job_id)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
        if pid is None:
            return self._starting(state)
        proc_dir = Path(f"/proc/{pid}")
        if Path("/proc/self").exists():
            try:
                stat = (proc_dir / "stat").read_text()
                cmdline = (proc_dir / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                return False
            # a zombie is dead; a live pid running something else was reused
            return stat.rsplit(")", 1)[-1].split()[0] != "Z" and files.job_id in cmdline
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def _settle(self, files: JobFiles) -> dict[str, Any]:
        """The job's state; a worker that died without a final state is recorded as failed/cancelled."""
        seen = files.state()
        if seen.get("raw_status") in TERMINAL or self._alive(files, seen):
            return seen
        pid = files.pid()
        worker = f"The local worker (pid {pid})" if pid else "The local worker (never started)"
        error = (f"{worker} stopped without reporting a final state (killed, or out of memory?). "
                 f"Resume it with LocalProvider.resume({files.job_id!r}) or submit again. "
                 f"Last log lines:\n{files.log_tail(15) or '(empty log)'}")
        cancelled = files.cancel_requested()

        def declare_dead(state: dict[str, Any]) -> dict[str, Any] | None:
            # it may have finished, or been resumed, since we looked
            if state.get("raw_status") in TERMINAL or state.get("start_requested_at") != seen.get(
                    "start_requested_at"):
                return None
            # the time it ran, up to its last report, is billable like a run that ended normally
            ran = _seconds_between(state.get("started_at"), state.get("updated_at"))
            fields: dict[str, Any] = {"finished_at": files.now(), "started_at": None,
                                      "billable_seconds": state.get("billable_seconds", 0.0) + ran}
            if cancelled:
                return {**fields, "raw_status": "cancelled"}
            return {**fields, "raw_status": "failed", "error": error}

        state, changed = files.change_state(declare_dead)
        if changed and not cancelled:
            files.append_event(error, level="error")
        return state

    def refresh(self, job_id: str) -> JobRecord:
        """The job's current state, read from its folder."""
        files = self._files(job_id)
        job, state = files.job(), self._settle(files)
        raw = state.get("raw_status", "queued")
        if raw not in TERMINAL and files.cancel_requested():
            raw = "cancel_requested"
        status = self.status(raw)
        billable: list[Quantity] = []
        if status.terminal:  # the only thing a local run bills is time (tokens are shown, not billed)
            # wall-clock hours × the devices held: each process's GPU, or each machine on CPU
            devices = state.get("billed_devices", 1)
            billable.append(Quantity(kind="gpu_hours", amount=state.get("billable_seconds", 0.0) / 3600 * devices,
                                     hardware=state.get("device")))
        detail = {key: state.get(key) for key in ("step", "total_steps", "epoch", "train_loss", "valid_loss",
                                                   "tokens_per_s", "eta_s", "trained_tokens", "processes")}
        detail.update(job_dir=str(files.root), memory_estimate=job.get("memory_estimate"))
        if status == JobStatus.SUCCEEDED:
            detail.update(adapter=str(files.path(ADAPTER_DIR)), summary=files.summary())
            if files.path(MERGED_DIR).is_dir():
                detail["merged"] = str(files.path(MERGED_DIR))
        eta_s = state.get("eta_s")  # the worker's estimate of the time left, as of its last step
        finish = (self.clock() + dt.timedelta(seconds=eta_s)
                  if status == JobStatus.RUNNING and eta_s is not None else None)
        return JobRecord(
            provider=self.name, job_id=job_id, base_model=job["spec"]["model"], status=status, raw_status=raw,
            tuned_model=f"{MODEL_PREFIX}{job_id}" if status == JobStatus.SUCCEEDED else None,
            created_at=_parse_time(job.get("created_at")), finished_at=_parse_time(state.get("finished_at")),
            estimated_finish=finish, error=state.get("error"), billable=billable, billed_usd=None,
            intent_id=job.get("intent_id"), detail=detail,
        )

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """Events newer than ``after`` (ids are zero-padded sequence numbers), oldest first."""
        files = self._files(job_id)
        return [JobEvent(**e) for e in files.events() if after is None or e["id"] > after]

    def cancel(self, job_id: str) -> JobRecord:
        """Ask the worker to stop after its current step (cancel file and SIGTERM), then follow the job for
        at most ``cancel_timeout`` seconds (with the provider's ``sleep``) and return its record."""
        files = self._files(job_id)
        record = self.refresh(job_id)
        if record.status.terminal:
            return record
        files.path(CANCEL_FILE).touch()
        pid = files.pid()
        if pid is not None and self._alive(files, files.state()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        waited = 0.0
        while True:
            record = self.refresh(job_id)
            if record.status.terminal or waited >= self.options.cancel_timeout:
                return record
            pause = min(CANCEL_POLL_S, self.options.cancel_timeout - waited)
            self.sleep(pause)
            waited += pause

    def find_job(self, intent_id: str) -> JobRecord | None:
        """The job submitted for ``intent_id``, if any (newest first)."""
        jobs = self.home / "jobs"
        if not jobs.is_dir():
            return None
        for job_dir in sorted(jobs.iterdir(), reverse=True):
            if JobFiles(job_dir).job().get("intent_id") == intent_id:
                return self.refresh(job_dir.name)
        return None

    def delete(self, job_id: str) -> None:
        """Remove a finished job's folder, adapter and checkpoints included (the ledger keeps its record).

        A job still running is refused: cancel it first."""
        record = self.refresh(job_id)
        if not record.status.terminal:
            raise ConfigError(f"Job {job_id} is still {record.raw_status}; cancel it before deleting it.")
        shutil.rmtree(self._files(job_id).root)

    # cost and models --------------------------------------------------------------------------------

    def prices(self) -> list[Price]:
        """The user's price for an hour of this machine (option ``price_per_gpu_hour``), which the core
        matches before the catalogue's to price the ``gpu_hours`` a job reports."""
        return [Price(
            provider="local", kind="gpu_hour", usd=self.options.price_per_gpu_hour, per=1, source="local",
            as_of=self.clock().date(),
            note="LocalProvider option price_per_gpu_hour: your own figure for an hour of wall-clock training "
                 "or generation on this machine (default 0).",
        )]

    def serving_cost(self, model: str) -> ServingCost:
        """This machine's time at the option ``price_per_gpu_hour`` (default 0)."""
        price = self.options.price_per_gpu_hour
        if not price:
            return ServingCost(per="free", note="on this machine; set price_per_gpu_hour to count its time",
                               label="this machine")
        return ServingCost(per="hour", usd_low=price, usd_high=price, note="this machine, at price_per_gpu_hour",
                           label="this machine")

    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """A guess of the wall-clock hours (from the tokens, model size and device) — what a local run
        bills; the core prices them with :meth:`prices`. Unknown model size: no quantity, no figure."""
        epochs = spec.hyperparameters.epochs or DEFAULT_EPOCHS
        tokens = stats.billable_tokens(epochs)
        quantities: list[Quantity] = []
        device = self.options.device
        on_gpu = device == "cuda" or (device == "auto" and Path("/dev/nvidia0").exists())
        params = guess_parameters(spec.model)
        where = "GPU" if on_gpu else "CPU"
        if params is None:
            return CostEstimate(
                provider=self.name, model=spec.model, quantities=quantities, usd=None, authoritative=False,
                basis=(f"local training on {where}: {tokens:,} tokens ({epochs} epoch(s)); the time cannot be "
                       "guessed because the model's size is unknown"),
            )
        flops = GPU_TRAINING_FLOPS if on_gpu else CPU_TRAINING_FLOPS
        one = tokens * 6 * params / flops / 3600  # hours on one device
        processes, nnodes = self.options.processes, self.options.nnodes
        devices, wall = parallel_hours(one, processes, nnodes, on_gpu)
        hours = wall * devices
        requirements = memory_requirements(params)
        if processes * nnodes > 1 and self.options.parallelism == "fsdp":
            requirements = (memory_requirements(params, shards=processes * nnodes)
                            + f"; per process, the base sharded over {processes * nnodes} (fsdp)")
        elif processes > 1:
            requirements += f"; that much per process, {processes} processes per machine"
        quantities.append(Quantity(kind="gpu_hours", amount=hours, low=hours / TIME_SPREAD,
                                   high=hours * TIME_SPREAD))
        spread = ""
        if processes * nnodes > 1:
            unit = "GPU(s)" if on_gpu else "machine(s)"
            shared = "" if on_gpu else "; the processes of one CPU machine share its cores"
            spread = (f"; {processes * nnodes} processes: {wall * 60:.1f} min of wall time on {devices} {unit} "
                      f"(data-parallel at {SCALING:.0%} efficiency{shared})")
        return CostEstimate(
            provider=self.name, model=spec.model, quantities=quantities, usd=None, authoritative=False,
            wall_time_s=wall * 3600, requirements=requirements,
            basis=(f"local training on {where}: {tokens:,} tokens ({epochs} epoch(s)) × 6 FLOP per parameter "
                   f"per token × {params:,} parameters ÷ {flops:.0e} FLOP/s (a typical effective rate on "
                   f"{where}) ≈ {one * 60:.1f} min on one {'GPU' if on_gpu else 'machine'}{spread}, good to "
                   f"about ×{TIME_SPREAD:g} either way; the hours are priced at the option price_per_gpu_hour "
                   "(default 0)"),
        )

    def endpoint(self, model: str) -> Endpoint:
        """A tuned model (``local:<job-id>`` or an adapter folder) or a base model, generating locally."""
        if model not in self._endpoints:
            self._endpoints[model] = self._make_endpoint(model)
        return self._endpoints[model]

    def _make_endpoint(self, model: str) -> Endpoint:
        from tuneproxy.local_backend.generate import LocalEndpoint

        common: dict[str, Any] = {"home": self.home, "batch_size": self.options.generation_batch_size}
        if model.startswith(MODEL_PREFIX):
            job_id = model[len(MODEL_PREFIX):]
            record = self.refresh(job_id)
            if record.status != JobStatus.SUCCEEDED:
                raise ConfigError(
                    f"Job {job_id} is {record.raw_status}; only a succeeded job has a model to use."
                )
            files = self._files(job_id)
            settings = files.job()["settings"]
            # the base as training resolved it (auto is nf4 on CUDA, but a sharded fsdp run trains a 16-bit one)
            quantization = files.summary().get("quantization") or settings["quantization"]
            return LocalEndpoint(model, base=settings["model"], adapter=files.path(ADAPTER_DIR),
                                 quantization=quantization, device=settings["device"], **common)
        common.update(quantization=self.options.quantization, device=self.options.device)
        adapter_config = Path(model).expanduser() / "adapter_config.json"
        if adapter_config.is_file():
            base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
            return LocalEndpoint(model, base=base, adapter=adapter_config.parent, **common)
        models.resolve(model)  # fail now, clearly, if the base model cannot be found
        return LocalEndpoint(model, base=model, **common)


SCALING = 0.9  # data-parallel efficiency assumed for the time guess (an all-reduce of LoRA gradients per step)


def parallel_hours(one: float, processes: int, nnodes: int, on_gpu: bool) -> tuple[int, float]:
    """(devices billed, wall-clock hours) for a run that takes ``one`` hour on one device: each process
    holds a GPU; on CPU the processes of a machine share its cores, so only more machines add speed."""
    devices = processes * nnodes if on_gpu else nnodes
    return devices, (one if devices == 1 else one / (devices * SCALING))


# GPUs by memory, for saying which ones a run fits on (GiB as sold; a run plans for SAFETY of it).
GPU_CLASSES: tuple[tuple[str, float], ...] = (("16 GB (T4)", 16), ("24 GB (L4, A10)", 24), ("40 GB (A100)", 40),
                                              ("80 GB (A100, H100)", 80), ("141 GB (H200)", 141))
ACTIVATIONS_GIB = 1.5  # activations of a short packed row, CUDA context and libraries: a rough allowance


def memory_requirements(params: int, shards: int = 1) -> str:
    """Memory a LoRA run of a ``params``-parameter model needs, roughly, and the smallest GPU it fits: 4-bit
    QLoRA (the default on CUDA) and 16-bit weights (split over ``shards`` processes under fsdp). A guess from
    the size alone; the run's own preflight measures it on the model before training."""
    from tuneproxy.local_backend.memory import NF4_BYTES_PER_PARAM, SAFETY

    bf16 = params * 2 / shards / 2**30 + ACTIVATIONS_GIB
    if shards > 1:  # fsdp shards a 16-bit base; 4-bit is not offered
        fits = next((name for name, gib in GPU_CLASSES if bf16 <= gib * SAFETY * 0.931), None)
        where = f"fits a {fits} GPU or larger" if fits else "needs more processes"
        return f"~{bf16:.1f} GiB per process in 16-bit: {where}"
    nf4 = params * NF4_BYTES_PER_PARAM / 2**30 + ACTIVATIONS_GIB
    fits = next((name for name, gib in GPU_CLASSES if nf4 <= gib * SAFETY * 0.931), None)  # GB → GiB
    where = f"fits a {fits} GPU or larger" if fits else "needs more than one GPU"
    return f"~{nf4:.1f} GiB in 4-bit QLoRA ({bf16:.1f} GiB 16-bit): {where}"


def guess_parameters(model: str) -> int | None:
    """Parameter count from the model's config.json, the bundled model's known size, a GGUF's size, or (a hub
    id not on disk: nothing is downloaded to guess) the count its name states (``Llama-3.1-8B`` → 8e9)."""
    try:
        source = models.resolve(model)
    except TuneproxyError:
        return None
    if source.kind == "hub":
        from tuneproxy.prices import parameter_count_b

        billions = parameter_count_b(model)
        return int(billions * 1e9) if billions is not None else None
    if source.kind == "gguf":
        if model.strip().lower() in models.BUNDLED_ALIASES:
            return models.BUNDLED_PARAMETERS
        return int(Path(source.location).stat().st_size * 8 / 4.5)  # ~4.5 bits per weight in common quants
    config_path = Path(source.location) / "config.json"
    if source.kind != "folder" or not config_path.is_file():
        return None
    c = json.loads(config_path.read_text())
    try:
        h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    except KeyError:
        return None
    inter = c.get("intermediate_size", 4 * h)
    embeddings = vocab * h * (1 if c.get("tie_word_embeddings", False) else 2)
    return embeddings + layers * (4 * h * h + 3 * h * inter)
