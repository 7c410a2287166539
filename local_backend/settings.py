"""The local backend's settings, as data: its provider options and each run's training settings.

:class:`LocalOptions` is the provider's typed options (``Tuner(provider_options=...)``, ``-o KEY=VALUE``, the
config file): where jobs live, what an hour of this machine costs, and the training settings that are the
backend's own (:class:`TrainingOptions`). Portable hyperparameters (epochs, learning_rate, ...) are never
options: they come only from ``JobSpec.hyperparameters``. :func:`settings_from_spec` combines the two into
one run's :class:`TrainSettings`.

Importing this module is cheap (no torch): the provider validates a job's settings at submit time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneproxy import paths
from tuneproxy.contract import JobSpec, ProviderOptions
from tuneproxy.errors import config_error_from


class TrainingOptions(BaseModel):
    """Training settings that are the local backend's own, not portable hyperparameters.

    They are provider options (:class:`LocalOptions`), copied into every run's :class:`TrainSettings`.
    """

    model_config = ConfigDict(extra="forbid")

    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Linear layer names to adapt (e.g. ['q_proj', 'v_proj']) or 'all-linear'."
    )
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto", description="'nf4' = QLoRA (4-bit NF4, double quant); 'none' = plain LoRA; auto: nf4 on CUDA."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train; auto picks CUDA.")
    gradient_checkpointing: bool | None = Field(None, description="Default: on with CUDA, off on CPU.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    pack_tokens: int | None = Field(
        None, ge=16, description="Tokens per packed row; default max_seq_length."
    )
    eval_every: int = Field(20, ge=1, description="Validation loss every N steps (and at the end).")
    save_every: int = Field(50, ge=1, description="Checkpoint every N steps.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    merge: bool = Field(False, description="Also export a merged full model next to the adapter.")
    memory_limit_gb: float | None = Field(
        None, gt=0, description="Memory to plan against instead of the detected GPU memory or RAM."
    )
    processes: int = Field(
        1, ge=1, le=64, description="Training processes on this machine (one per GPU on CUDA), data-parallel "
                                    "through torchrun; default 1."
    )
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp", description="How several processes share the work: 'ddp' = each holds the whole base; 'fsdp' = "
                           "the base's weights are sharded across the processes (16/32-bit base only)."
    )
    nnodes: int = Field(1, ge=1, le=1024, description="Machines taking part; more than 1 needs rdzv_endpoint.")
    rdzv_endpoint: str | None = Field(
        None, description="host:port where the machines of a several-node job meet (torchrun's c10d rendezvous)."
    )

    @model_validator(mode="after")
    def _nodes_meet_somewhere(self) -> TrainingOptions:
        if self.parallelism == "fsdp" and self.quantization == "nf4":
            raise ValueError("parallelism='fsdp' shards a 16/32-bit base; it does not take quantization='nf4' "
                             "(bitsandbytes' 4-bit weights are not sharded here): use parallelism='ddp' with nf4 "
                             "(a 4-bit base fits one GPU for most models), or quantization='none'")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes={self.nnodes} needs rdzv_endpoint='host:port', a port on the first machine "
                             "that every machine can reach")
        if self.rdzv_endpoint is not None:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"rdzv_endpoint {self.rdzv_endpoint!r} is not host:port (e.g. '10.0.0.1:29400')")
        return self


TRAINING_OPTIONS: tuple[str, ...] = tuple(TrainingOptions.model_fields)


class TrainSettings(TrainingOptions):
    """Everything one local fine-tuning run needs. Defaults suit a few hundred short chat examples."""

    model: str = Field(description="Local HF folder, .gguf file, bundled alias or hub id.")
    training_file: str = Field(description="Path of the training JSONL.")
    validation_file: str | None = Field(None, description="Path of the holdout JSONL (optional).")

    # portable hyperparameters (tuneproxy.contract.Hyperparameters), with this backend's defaults
    epochs: int = Field(3, ge=1, description="Passes over the training data.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (after warmup).")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    lora_rank: int = Field(16, ge=1, description="LoRA rank r.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 × rank.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    max_seq_length: int = Field(1024, ge=16, description="Longer examples are truncated to this.")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Fraction of steps with linear warmup.")
    seed: int = Field(42, ge=0, description="Seeds LoRA init, data order and dropout.")

    @property
    def alpha(self) -> float:
        """LoRA alpha, defaulting to twice the rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    @property
    def row_tokens(self) -> int:
        """Tokens per packed row."""
        return self.pack_tokens or self.max_seq_length


def default_home() -> Path:
    """``$TUNEPROXY_HOME/local`` (default ``~/.tuneproxy/local``)."""
    return paths.home() / "local"


class _ProcessOptions(ProviderOptions):
    """The options about this machine and its worker processes (listed first)."""

    home: Path = Field(default_factory=default_home,
                       description="Folder holding uploads, models and jobs; default $TUNEPROXY_HOME/local "
                                   "(~/.tuneproxy/local).")
    price_per_gpu_hour: float = Field(
        0.0, ge=0, description="What an hour of this machine costs you, in USD, per hour of wall-clock "
                               "training; default 0 (your own hardware costs nothing here).")
    python: str | None = Field(None, description="Interpreter that runs the worker processes; default the one "
                                                 "running tuneproxy.")
    cancel_timeout: float = Field(60.0, ge=0, description="Seconds cancel() waits for the worker to stop.")
    generation_batch_size: int = Field(8, ge=1, description="Conversations an endpoint generates at once.")

    @field_validator("home", mode="after")
    @classmethod
    def _expand(cls, home: Path) -> Path:
        # absolute, so a job submitted from one folder can be followed from another (the ledger keeps it)
        try:
            return home.expanduser().resolve()
        except (RuntimeError, OSError) as exc:  # "~someone" with no such user; a symlink loop
            raise ValueError(f"cannot use {str(home)!r} as the jobs folder ({exc}); give an existing "
                             "user's ~ or a plain path") from None


class LocalOptions(TrainingOptions, _ProcessOptions):
    """The local backend's options: the job area, the machine's price, worker settings, and the default
    training settings that are not portable hyperparameters (the same fields as :class:`TrainingOptions`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# portable hyperparameters that do not change the run (kept on the job as given)
NOT_TRAINED: frozenset[str] = frozenset({"suffix"})


def settings_from_spec(spec: JobSpec, training_path: str, validation_path: str | None,
                       options: LocalOptions) -> TrainSettings:
    """Build the run's settings: the provider's training options, then the spec's hyperparameters."""
    values: dict[str, Any] = options.model_dump(include=set(TRAINING_OPTIONS))
    values.update({k: v for k, v in spec.hyperparameters.given().items() if k not in NOT_TRAINED})
    values.update(model=spec.model, training_file=training_path, validation_file=validation_path)
    try:
        return TrainSettings(**values)
    except ValidationError as exc:
        raise config_error_from(exc, "Invalid local training settings",
                                "Portable hyperparameters are set on the job; the local backend's own "
                                f"settings are provider options ({', '.join(TRAINING_OPTIONS)}).") from None
