"""The local backend's training settings: portable hyperparameters plus backend options, as data.

Importing this module is cheap (no torch): the provider validates a job's settings at submit time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneproxy.contract import JobSpec
from tuneproxy.errors import ConfigError


class TrainSettings(BaseModel):
    """Everything one local fine-tuning run needs. Defaults suit a few hundred short chat examples."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Local HF folder, .gguf file, bundled alias or hub id.")
    training_file: str = Field(description="Path of the training JSONL.")
    validation_file: str | None = Field(None, description="Path of the holdout JSONL (optional).")

    epochs: int = Field(3, ge=1, description="Passes over the training data.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (after warmup).")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    lora_rank: int = Field(16, ge=1, description="LoRA rank r.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 × rank.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    max_seq_length: int = Field(1024, ge=16, description="Longer examples are truncated to this.")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Fraction of steps with linear warmup.")
    seed: int = Field(42, ge=0, description="Seeds LoRA init, data order and dropout.")

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

    @property
    def alpha(self) -> float:
        """LoRA alpha, defaulting to twice the rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    @property
    def row_tokens(self) -> int:
        """Tokens per packed row."""
        return self.pack_tokens or self.max_seq_length


BACKEND_OPTIONS: tuple[str, ...] = tuple(
    name for name in TrainSettings.model_fields
    if name not in {"model", "training_file", "validation_file"}
)


def settings_from_spec(spec: JobSpec, training_path: str, validation_path: str | None,
                       defaults: dict[str, Any] | None = None) -> TrainSettings:
    """Build the run's settings: provider defaults, then the spec's options, then its hyperparameters."""
    given = spec.hyperparameters.given()
    given.pop("suffix", None)
    values: dict[str, Any] = {**(defaults or {}), **spec.options, **given}
    values.update(model=spec.model, training_file=training_path, validation_file=validation_path)
    try:
        return TrainSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"Invalid local training settings ({problems}). Backend options are: "
            f"{', '.join(BACKEND_OPTIONS)}."
        ) from None
