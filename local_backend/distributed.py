"""Data-parallel training over several processes, GPUs or machines, through ``torch.distributed``.

A job with ``processes`` > 1 (or ``nnodes`` > 1) is launched by torchrun's elastic agent
(:func:`torchrun_args`): the job's worker process runs the agent, which starts one rank per process with
``python -m tuneproxy.local_backend.worker --rank JOBDIR``. Every rank loads the model, builds the same
LoRA adapter (from the same seed, then broadcast from rank 0) and computes each optimizer step's global
batch — the same examples a single process would take — and trains on its share of it
(:func:`shard`). After the step's backward passes one all-reduce sums the LoRA gradients, the loss and
the token count (:meth:`Group.sum_gradients`), so every rank takes the same optimizer step, and the
update equals a single process's over the same global batch.

Why not the ``DistributedDataParallel`` wrapper: the trainer computes logits at trained positions only,
calling the decoder and the output layer directly (around the wrapper's ``forward``, which DDP's
reducer needs), and ranks hold different numbers of packed rows per step (DDP needs the same number of
synchronised backward passes everywhere). LoRA's gradients are a few megabytes, so one flat all-reduce
per step costs little next to the step itself.

Rank 0 alone writes the job's state, events, checkpoints and adapter. A stop (cancel) is agreed between
steps (:meth:`Group.any`), so every rank stops at the same step and none is left waiting in a collective.

Importing this module does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RANK_FLAG = "--rank"  # the worker's argument for a rank started by torchrun
JOIN_FLAG = "--join"  # the worker's argument on each further node of a several-machine job


def is_distributed(settings: Any) -> bool:
    """Whether the run's settings ask for more than one process."""
    return settings.processes > 1 or settings.nnodes > 1


def torchrun_args(settings: Any, job_dir: Path, job_id: str) -> list[str]:
    """torchrun's arguments for the job: one node (``--standalone``), or ``nnodes`` joined through a c10d
    rendezvous at ``rdzv_endpoint`` named after the job. No restarts: a dead rank fails the job, and
    ``resume`` starts it again from its latest checkpoint."""
    args = [f"--nproc-per-node={settings.processes}", "--max-restarts=0", "--monitor-interval=0.5"]
    if settings.nnodes > 1:
        args += [f"--nnodes={settings.nnodes}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={settings.rdzv_endpoint}", f"--rdzv-id={job_id}"]
    else:
        args.append("--standalone")
    return [*args, "-m", "tuneproxy.local_backend.worker", RANK_FLAG, str(job_dir)]


def rank_environment(settings: Any) -> dict[str, str]:
    """Environment for the ranks: the CPU threads shared out between the processes on this node (torchrun
    would otherwise give each rank one thread), unless the user set ``OMP_NUM_THREADS`` already."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // settings.processes))}


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share of ``items``: every ``world``-th one from position ``rank``."""
    return list(items[rank::world])


@dataclass(frozen=True)
class Group:
    """This process's place among the job's ranks; one process alone is rank 0 of 1 and no call
    communicates."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the job's state, events, checkpoints and adapter."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if not self.distributed:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the ranks."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_gradients(self, params: Sequence[Any], extras: Sequence[float]) -> list[float]:
        """Sum the gradients of ``params`` over the ranks in place (a rank that had no row this step
        counts zeros), with ``extras`` carried in the same all-reduce; returns the summed extras."""
        if not self.distributed:
            return list(extras)
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads]
                         + [torch.tensor(list(extras), dtype=torch.float32, device=grads[0].device)])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
        return flat[offset:].tolist()

    def most(self, value: int) -> int:
        """The largest ``value`` over the ranks."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64, device=self._device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def broadcast_parameters(self, params: Sequence[Any]) -> None:
        """Make every rank's ``params`` rank 0's."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)

    def _device(self) -> Any:
        import torch
        import torch.distributed as dist

        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Group()


def shard_base(model: Any) -> None:
    """FSDP (``fully_shard``) over the frozen base of a PEFT ``model``: each decoder layer, then the decoder,
    is sharded across the ranks and gathered only while it computes. The LoRA parameters (trained, a few MB)
    and the output layer stay whole on every rank (``ignored_params``): the LoRA gradients are summed by
    :meth:`Group.sum_gradients`, checkpoints and the adapter are saved as with one process, and the trainer
    may call the output layer on trained positions only, outside the decoder. Each rank must then run the same
    number of decoder passes per step (the layers gather their weights collectively): the trainer pads a
    rank's rows with passes that count for nothing."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model()
    decoder = base.get_decoder()
    whole = {p for p in model.parameters() if p.requires_grad}
    whole.update(base.get_output_embeddings().parameters())  # tied models share it with the input embedding
    layer_classes = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in decoder.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise RuntimeError(f"parallelism='fsdp' cannot find the decoder layers of {type(base).__name__}")
    for layer in layers:
        fully_shard(layer, ignored_params=whole)
    fully_shard(decoder, ignored_params=whole)


def join(device: str) -> Group:
    """Join the job's process group from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL between GPUs, gloo on CPU."""
    import torch
    import torch.distributed as dist

    group = Group(rank=int(os.environ["RANK"]), world=int(os.environ["WORLD_SIZE"]),
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        torch.cuda.set_device(group.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", group.local_rank))
    else:
        dist.init_process_group("gloo")
    return group


def leave() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share_held(model: Any) -> float:
    """The share of the model's parameters this rank holds: 1 when nothing is sharded."""
    from torch.distributed.tensor import DTensor

    held = total = 0
    for p in model.parameters():
        total += p.numel()
        held += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return held / total if total else 1.0
