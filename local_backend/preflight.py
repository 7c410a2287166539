"""Checks made before a run starts, at submit time and again in the worker: the model can be found,
the LoRA targets exist, and the run fits in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneproxy.errors import ConfigError
from tuneproxy.local_backend import memory, models
from tuneproxy.local_backend.errors import UnknownTargetModule
from tuneproxy.local_backend.settings import TrainSettings


@dataclass(frozen=True)
class RunPlan:
    """What the settings resolve to on this machine."""

    source: models.ModelSource
    device: str
    quantization: str
    checkpointing: bool
    targets: list[str]
    memory: memory.MemoryPlan


def resolve_targets(requested: list[str] | str, available: set[str]) -> list[str]:
    """The LoRA target module names: every linear layer for 'all-linear', else the ones asked for."""
    if requested == "all-linear":
        return sorted(available)
    unknown = sorted(set(requested) - available)
    if unknown:
        raise UnknownTargetModule(
            f"LoRA target module(s) {', '.join(unknown)} match no linear layer of this model. "
            f"Its linear layers are: {', '.join(sorted(available))} (or use 'all-linear')."
        )
    return list(requested)


def check_devices(settings: TrainSettings, device: str) -> None:
    """Several processes on CUDA need a GPU each."""
    if device != "cuda" or settings.processes == 1:
        return
    import torch

    gpus = torch.cuda.device_count()
    if settings.processes > gpus:
        raise ConfigError(f"processes={settings.processes} needs {settings.processes} GPUs (one per process) but "
                          f"this machine has {gpus}; set processes to at most {gpus}, or device='cpu'.")


def plan_run(settings: TrainSettings, home: Path, *, in_rank: bool = False) -> RunPlan:
    """Resolve the settings and check them; raises a clear error if the run cannot start.

    The model is built on the meta device from its config, so no weights are downloaded or loaded. Memory is
    planned per process: on CPU the job's processes share this machine's RAM, so the check is for all of
    them, except inside a rank (``in_rank``), where the others' use already shows in what is free.
    """
    import torch

    source = models.resolve(settings.model)
    device = models.pick_device(settings.device)
    quantization = models.pick_quantization(settings.quantization, device, settings.parallelism)
    check_devices(settings, device)
    checkpointing = settings.gradient_checkpointing
    if checkpointing is None:
        checkpointing = device == "cuda"
    model = models.meta_model(models.load_config(source, home))
    targets = resolve_targets(settings.target_modules, models.linear_module_names(model))
    dtype_bytes = torch.finfo(models.compute_dtype(device)).bits // 8
    mem = memory.plan(
        model, targets=set(targets), rank=settings.lora_rank, quantization=quantization, device=device,
        dtype_bytes=dtype_bytes, row_tokens=settings.row_tokens, checkpointing=checkpointing,
        limit_gb=settings.memory_limit_gb,
        copies=settings.processes if device == "cpu" and not in_rank else 1,
        shards=settings.processes * settings.nnodes if settings.parallelism == "fsdp" else 1,
    )
    memory.ensure_fits(mem, quantization, checkpointing)
    return RunPlan(source, device, quantization, checkpointing, targets, mem)
