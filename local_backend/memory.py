"""How much memory a run needs, against what the machine has — checked before any training starts.

The estimate is made on the model built on the meta device (shapes only): weights at their precision,
the LoRA parameters with their gradients and optimizer state, activations for one packed row, and the
logits of the trained positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneproxy.local_backend.errors import WillNotFit

GIB = 1024**3
NF4_BYTES_PER_PARAM = 0.53  # 4 bits plus double-quantized block scales
RUNTIME_OVERHEAD = {"cpu": int(1.0 * GIB), "cuda": int(0.5 * GIB)}  # libraries / CUDA context
SAFETY = 0.9  # plan to use at most this share of what is available


@dataclass(frozen=True)
class MemoryPlan:
    """A memory estimate in bytes, and what it was compared with."""

    weights: int
    lora: int
    optimizer: int
    activations: int
    overhead: int
    available: int
    where: str
    copies: int = 1  # processes sharing ``available`` (several training processes on one CPU machine)

    @property
    def total(self) -> int:
        """Bytes one process needs."""
        return self.weights + self.lora + self.optimizer + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total * self.copies <= SAFETY * self.available

    def describe(self) -> str:
        """The figures in GiB, in one line."""
        def g(n: int) -> str:
            return f"{n / GIB:.2f}"
        each = " per process" if self.copies > 1 else ""
        shared = f" × {self.copies} processes = {g(self.total * self.copies)} GiB" if self.copies > 1 else ""
        return (f"needs ~{g(self.total)} GiB{each} (weights {g(self.weights)}, LoRA {g(self.lora)}, gradients and "
                f"optimizer {g(self.optimizer)}, activations {g(self.activations)}, "
                f"runtime {g(self.overhead)}){shared}"
                f" vs {g(self.available)} GiB available on {self.where}")


def lora_parameters(model: Any, targets: set[str], rank: int) -> int:
    """LoRA parameter count: rank × (in + out) for each targeted linear layer."""
    import torch

    output = model.get_output_embeddings()
    total = 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and module is not output and leaf in targets:
            total += rank * (module.in_features + module.out_features)
    return total


def weight_bytes(model: Any, quantization: str, dtype_bytes: int) -> int:
    """Base weights: linear layers at 4 bits under nf4 (the rest kept in fp32 for training), else dtype."""
    import torch

    if quantization != "nf4":
        return sum(p.numel() for p in model.parameters()) * dtype_bytes
    output = model.get_output_embeddings()
    linear = {id(m.weight): m.weight.numel() for m in model.modules()
              if isinstance(m, torch.nn.Linear) and m is not output}
    quantized = sum(linear.values())
    rest = sum(p.numel() for p in model.parameters() if id(p) not in linear)
    return int(quantized * NF4_BYTES_PER_PARAM) + rest * 4


def activation_bytes(config: Any, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    """Activations kept for backward for one packed row of ``tokens``, plus the trained logits."""
    hidden = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * hidden)
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    per_layer = tokens * (24 * hidden + 4 * inter) * dtype_bytes + heads * tokens * tokens * dtype_bytes
    kept = tokens * hidden * dtype_bytes * layers + per_layer if checkpointing else per_layer * layers
    logits = tokens * config.vocab_size * 4 * 3  # fp32 logits, softmax and their gradient
    return kept + logits


def available_memory(device: str, limit_gb: float | None) -> tuple[int, str]:
    """Bytes free on the GPU (CUDA) or in system RAM (CPU), unless a limit is given."""
    if limit_gb is not None:
        return int(limit_gb * GIB), f"the configured memory_limit_gb={limit_gb}"
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free, f"GPU {torch.cuda.get_device_name()}"
    return system_ram_available(), "system RAM"


def system_ram_available() -> int:
    """MemAvailable from /proc/meminfo, or total physical memory where that file does not exist."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def plan(model: Any, *, targets: set[str], rank: int, quantization: str, device: str, dtype_bytes: int,
         row_tokens: int, checkpointing: bool, limit_gb: float | None, copies: int = 1,
         shards: int = 1) -> MemoryPlan:
    """The memory estimate for training ``model`` (meta or real) with these settings, for each of ``copies``
    processes sharing the memory (on a GPU each process has its own device: ``copies`` is 1), with the base's
    weights split into ``shards`` (fsdp: every process holds its share; the output layer stays whole)."""
    lora = lora_parameters(model, targets, rank)
    optimizer_bytes_per_param = 4 + (2 if device == "cuda" else 8)  # gradient + AdamW state (8-bit on GPU)
    available, where = available_memory(device, limit_gb)
    return MemoryPlan(
        weights=weight_bytes(model, quantization, dtype_bytes) // shards,
        lora=lora * 4,
        optimizer=lora * optimizer_bytes_per_param,
        activations=activation_bytes(model.config, row_tokens, dtype_bytes, checkpointing),
        overhead=RUNTIME_OVERHEAD.get(device, 0),
        available=available,
        where=where,
        copies=copies,
    )


def ensure_fits(memory: MemoryPlan, quantization: str, checkpointing: bool) -> None:
    """Refuse a run that will not fit, with the numbers and what to change."""
    if memory.fits:
        return
    advice = ["lower max_seq_length (or pack_tokens)"]
    if memory.copies > 1:
        advice.insert(0, f"run fewer processes than {memory.copies} on this machine")
    if quantization != "nf4":
        advice.insert(0, "use quantization='nf4' (4-bit base weights)")
    if not checkpointing:
        advice.append("turn on gradient_checkpointing")
    advice.append("lower lora_rank, or pick a smaller model")
    raise WillNotFit(
        f"This run will not fit in memory: it {memory.describe()}. To fit, " + "; ".join(advice) + "."
    )
