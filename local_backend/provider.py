"""The local QLoRA backend behind the same Provider contract as the managed services.

``submit`` checks the run (model, LoRA targets, memory) and starts a worker process in its own session,
so the job outlives the client. Everything about a job lives in one folder under the provider's home::

    <home>/files/<file-id>.jsonl          uploaded training/validation files (content-addressed)
    <home>/models/<name>-<size>-<mtime>/  GGUF models dequantized once into plain HF folders
    <home>/jobs/<job-id>/
        job.json        spec, resolved settings, intent id (written by submit)
        state.json      raw status, step, epoch, losses, tokens/s, ETA, error (atomic; worker writes)
        events.jsonl    one JobEvent per line
        worker.pid, worker.log, cancel (present once cancel was asked)
        checkpoints/step-NNNNNNNN/   latest checkpoint (atomic)
        adapter/        the PEFT adapter;  merged/  the merged model (option merge)
        summary.json    wall time, tokens, tokens/s, peak memory

Importing this module does not import torch: reading ``capabilities`` stays cheap.
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
from pathlib import Path
from typing import Any, ClassVar, Literal

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
    now_iso,
    write_json_atomic,
)
from tuneproxy.local_backend.settings import settings_from_spec

from tuneproxy.contract import (
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
    Stats,
    UploadedFile,
    utc_now,
)
from tuneproxy.dataset.validate import load_examples
from tuneproxy.errors import ConfigError, DatasetError, JobNotFound, TuneproxyError

MODEL_PREFIX = "local:"
CPU_TRAINING_FLOPS = 1.0e11  # effective FLOP/s a few CPU cores reach on small-model LoRA training
GPU_TRAINING_FLOPS = 1.0e14


def default_home() -> Path:
    """``$TUNEPROXY_HOME/local``, else ``~/.tuneproxy/local``."""
    root = os.environ.get("TUNEPROXY_HOME")
    return (Path(root).expanduser() if root else Path.home() / ".tuneproxy") / "local"


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


class LocalProvider(Provider):
    """Fine-tunes on this machine: QLoRA on a GPU, plain LoRA on CPU.

    Options: ``home`` (job area), ``price_per_gpu_hour`` (USD per hour of wall-clock training, default
    0), ``python`` (interpreter for workers), ``cancel_timeout`` (seconds ``cancel`` waits for the worker),
    ``generation_batch_size``; any other option is a default training setting (see
    :class:`~tuneproxy.local_backend.settings.TrainSettings`), overridden per job by ``JobSpec.options``.
    """

    name: ClassVar[str] = "local"
    capabilities: ClassVar[Capabilities] = Capabilities(
        display_name="Local (QLoRA)",
        env_key=None,
        parameters={
            "epochs": ParameterSpec(minimum=1, maximum=100),
            "learning_rate": ParameterSpec(minimum=1e-7, maximum=1e-1),
            "batch_size": ParameterSpec(minimum=1, maximum=1024, note="examples per optimizer step"),
            "lora_rank": ParameterSpec(minimum=1, maximum=512),
            "lora_alpha": ParameterSpec(minimum=1e-3, note="default 2 × lora_rank"),
            "lora_dropout": ParameterSpec(minimum=0, maximum=0.99),
            "max_seq_length": ParameterSpec(minimum=16, maximum=131072),
            "warmup_ratio": ParameterSpec(minimum=0, maximum=1),
            "seed": ParameterSpec(minimum=0),
            "suffix": ParameterSpec(note="kept as a tag on the job"),
        },
        rules=DatasetRules(formats=frozenset({"chat", "completion", "text"}), min_examples=1),
        price_per_million_training_tokens={},
        prices_as_of="local: priced by wall-clock time (price_per_gpu_hour), default 0",
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

    def __init__(self, *, api_key: str | None = None, transport: Any = None, clock: Clock = utc_now,
                 home: str | Path | None = None, price_per_gpu_hour: float = 0.0, python: str | None = None,
                 cancel_timeout: float = 60.0, generation_batch_size: int = 8, **options: Any) -> None:
        super().__init__(api_key=api_key, transport=transport, clock=clock, **options)
        self.home = Path(home).expanduser() if home else default_home()
        self.price_per_gpu_hour = float(price_per_gpu_hour)
        self.python = python or sys.executable
        self.cancel_timeout = cancel_timeout
        self.generation_batch_size = generation_batch_size
        self._workers: dict[str, subprocess.Popen[bytes]] = {}
        self._endpoints: dict[str, Endpoint] = {}

    # files ------------------------------------------------------------------------------------------

    def upload(self, path: Path, purpose: Literal["train", "validation"] = "train") -> UploadedFile:
        """Copy a JSONL file into the job area (after checking every line parses) and name it by content."""
        path = Path(path)
        load_examples(path, strict=True)
        data = path.read_bytes()
        file_id = "file-" + hashlib.sha256(data).hexdigest()[:24]
        target = self.home / "files" / f"{file_id}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            staging = target.with_suffix(f".tmp-{os.getpid()}")
            staging.write_bytes(data)
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
            self._file_path(spec.validation_file) if spec.validation_file else None, defaults=self.options,
        )
        return settings, plan_run(settings, self.home)

    def submit(self, spec: JobSpec) -> JobRecord:
        """Check the run, write the job folder and start its worker detached from this process."""
        if not spec.training_file:
            raise DatasetError("The job has no training file: upload one (provider.upload(path)) and pass its id.")
        settings, plan = self._plan(spec)
        job_id = f"ljob-{self.clock().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
        files = JobFiles(self.home / "jobs" / job_id)
        files.root.mkdir(parents=True)
        write_json_atomic(files.path(JOB_FILE), {
            "job_id": job_id, "intent_id": spec.intent_id, "created_at": self.clock().isoformat(),
            "spec": spec.model_dump(mode="json"), "settings": settings.model_dump(mode="json"),
            "home": str(self.home), "price_per_gpu_hour": self.price_per_gpu_hour,
            "memory_estimate": plan.memory.describe(),
        })
        files.update_state(raw_status="queued")
        files.append_event(f"Job created for {spec.model}; the run {plan.memory.describe()}.")
        self._start_worker(files)
        return self.refresh(job_id)

    def _start_worker(self, files: JobFiles) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        with files.path(LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(
                [self.python, "-m", "tuneproxy.local_backend.worker", str(files.root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own session: the job survives the client
            )
        files.path(PID_FILE).write_text(str(proc.pid))
        self._workers[files.job_id] = proc

    def resume(self, job_id: str) -> JobRecord:
        """Restart a job whose worker died (or was cancelled); it continues from its latest checkpoint."""
        record = self.refresh(job_id)
        if record.status == JobStatus.SUCCEEDED:
            raise ConfigError(f"Job {job_id} already succeeded; there is nothing to resume.")
        if not record.status.terminal:
            return record
        files = self._files(job_id)
        files.path(CANCEL_FILE).unlink(missing_ok=True)
        files.update_state(raw_status="queued", error=None, finished_at=None)
        files.append_event("Resume requested.")
        self._start_worker(files)
        return self.refresh(job_id)

    def _files(self, job_id: str) -> JobFiles:
        files = JobFiles(self.home / "jobs" / job_id)
        if not files.path(JOB_FILE).is_file():
            raise JobNotFound(f"No local job {job_id!r} under {self.home / 'jobs'}. Check the id and `home`.")
        return files

    def _alive(self, files: JobFiles) -> bool:
        """Whether the job's worker process still runs (reaping it if this client started it)."""
        proc = self._workers.get(files.job_id)
        if proc is not None and proc.pid == files.pid():
            return proc.poll() is None
        pid = files.pid()
        if pid is None:
            return False
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
        state = files.state()
        if state.get("raw_status") in TERMINAL or self._alive(files):
            return state
        state = files.state()  # it may have finished between the two reads
        if state.get("raw_status") in TERMINAL:
            return state
        if files.cancel_requested():
            return files.update_state(raw_status="cancelled", finished_at=now_iso())
        error = (f"The local worker (pid {files.pid()}) stopped without reporting a final state (killed, or "
                 f"out of memory?). Resume it with LocalProvider.resume({files.job_id!r}) or submit again. "
                 f"Last log lines:\n{files.log_tail(15) or '(empty log)'}")
        files.append_event(error, level="error")
        return files.update_state(raw_status="failed", error=error, finished_at=now_iso())

    def refresh(self, job_id: str) -> JobRecord:
        """The job's current state, read from its folder."""
        files = self._files(job_id)
        job, state = files.job(), self._settle(files)
        raw = state.get("raw_status", "queued")
        if raw not in TERMINAL and files.cancel_requested():
            raw = "cancel_requested"
        status = self.status(raw)
        summary = files.summary() if status == JobStatus.SUCCEEDED else {}
        billed = None
        if status.terminal:
            billed = state.get("billable_seconds", 0.0) / 3600 * job.get("price_per_gpu_hour", 0.0)
        detail = {key: state.get(key) for key in
                  ("step", "total_steps", "epoch", "train_loss", "valid_loss", "tokens_per_s", "eta_s")}
        detail.update(job_dir=str(files.root), memory_estimate=job.get("memory_estimate"))
        if status == JobStatus.SUCCEEDED:
            detail.update(adapter=str(files.path(ADAPTER_DIR)), summary=summary)
            if files.path(MERGED_DIR).is_dir():
                detail["merged"] = str(files.path(MERGED_DIR))
        return JobRecord(
            provider=self.name, job_id=job_id, model=job["spec"]["model"], status=status, raw_status=raw,
            fine_tuned_model=f"{MODEL_PREFIX}{job_id}" if status == JobStatus.SUCCEEDED else None,
            created_at=_parse_time(job.get("created_at")), finished_at=_parse_time(state.get("finished_at")),
            error=state.get("error"), trained_tokens=state.get("trained_tokens"), billed_usd=billed,
            intent_id=job.get("intent_id"), detail=detail,
        )

    def events(self, job_id: str, after: str | None = None) -> list[JobEvent]:
        """Events newer than ``after`` (ids are zero-padded sequence numbers), oldest first."""
        files = self._files(job_id)
        return [JobEvent(**e) for e in files.events() if after is None or e["id"] > after]

    def cancel(self, job_id: str) -> JobRecord:
        """Ask the worker to stop after its current step and wait (up to ``cancel_timeout``) until it has."""
        files = self._files(job_id)
        record = self.refresh(job_id)
        if record.status.terminal:
            return record
        files.path(CANCEL_FILE).touch()
        pid = files.pid()
        if pid is not None and self._alive(files):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cancel_timeout
        while time.monotonic() < deadline:
            record = self.refresh(job_id)
            if record.status.terminal:
                break
            time.sleep(0.1)
        return record

    def wait(self, job_id: str, poll_s: float = 0.5, timeout_s: float | None = None) -> JobRecord:
        """Block until the job ends (or ``timeout_s`` passes) and return its last record."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = self.refresh(job_id)
            if record.status.terminal or (deadline is not None and time.monotonic() > deadline):
                return record
            time.sleep(poll_s)

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
        """Remove a finished job's folder (adapter included)."""
        record = self.refresh(job_id)
        if not record.status.terminal:
            raise ConfigError(f"Job {job_id} is still {record.raw_status}; cancel it before deleting it.")
        shutil.rmtree(self._files(job_id).root)

    # money and models -------------------------------------------------------------------------------

    def estimate(self, stats: Stats, spec: JobSpec) -> CostEstimate:
        """Wall-clock hours (a guess from model size and device) × ``price_per_gpu_hour`` (default 0)."""
        epochs = spec.hyperparameters.epochs or spec.options.get("epochs") or self.options.get("epochs") or 3
        tokens = stats.billable_tokens(epochs)
        params = guess_parameters(spec.model)
        on_gpu = Path("/dev/nvidia0").exists() and spec.options.get("device", "auto") != "cpu"
        hours = None
        if params:
            flops = GPU_TRAINING_FLOPS if on_gpu else CPU_TRAINING_FLOPS
            hours = tokens * 6 * params / flops / 3600
        price = self.price_per_gpu_hour
        if price == 0:
            usd: float | None = 0.0
        else:
            usd = None if hours is None else hours * price
        guess = f"about {hours * 60:.1f} min" if hours is not None else "unknown time (model size unknown)"
        return CostEstimate(
            provider=self.name, model=spec.model, usd=usd, billable_tokens=tokens,
            basis=(f"local training on {'GPU' if on_gpu else 'CPU'}: {tokens} tokens, {guess} "
                   f"× ${price}/GPU-hour (set price_per_gpu_hour; local runs cost nothing by default)."),
        )

    def endpoint(self, model: str) -> Endpoint:
        """A tuned model (``local:<job-id>`` or an adapter folder) or a base model, generating locally."""
        if model not in self._endpoints:
            self._endpoints[model] = self._make_endpoint(model)
        return self._endpoints[model]

    def _make_endpoint(self, model: str) -> Endpoint:
        from tuneproxy.local_backend.generate import LocalEndpoint

        common = {"home": self.home, "batch_size": self.generation_batch_size,
                  "price_per_gpu_hour": self.price_per_gpu_hour}
        if model.startswith(MODEL_PREFIX):
            job_id = model[len(MODEL_PREFIX):]
            record = self.refresh(job_id)
            if record.status != JobStatus.SUCCEEDED:
                raise ConfigError(
                    f"Job {job_id} is {record.raw_status}; only a succeeded job has a model to use."
                )
            settings = self._files(job_id).job()["settings"]
            return LocalEndpoint(model, base=settings["model"], adapter=self._files(job_id).path(ADAPTER_DIR),
                                 quantization=settings["quantization"], device=settings["device"], **common)
        adapter_config = Path(model).expanduser() / "adapter_config.json"
        if adapter_config.is_file():
            base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
            return LocalEndpoint(model, base=base, adapter=adapter_config.parent,
                                 quantization=self.options.get("quantization", "auto"),
                                 device=self.options.get("device", "auto"), **common)
        models.resolve(model)  # fail now, clearly, if the base model cannot be found
        return LocalEndpoint(model, base=model, quantization=self.options.get("quantization", "auto"),
                             device=self.options.get("device", "auto"), **common)


def guess_parameters(model: str) -> int | None:
    """Parameter count from the model's config.json, the bundled model's known size, or a GGUF's size."""
    try:
        source = models.resolve(model)
    except TuneproxyError:
        return None
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
