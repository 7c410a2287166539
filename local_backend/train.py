"""The training loop: LoRA/QLoRA on packed, assistant-only-labelled chat examples.

One optimizer step takes ``batch_size`` examples in a seeded order, packs them into unpadded rows and
accumulates their gradients, normalising by the number of trained tokens in the step, so packing never
changes the update. Checkpoints (LoRA weights, optimizer, scheduler, RNG) are written atomically; a
restarted run picks up the latest one and replays the same data order from the next step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneproxy.dataset.examples import Example
from tuneproxy.dataset.validate import load_examples
from tuneproxy.errors import DatasetError
from tuneproxy.local_backend import models
from tuneproxy.local_backend.collate import IGNORE, Encoded, collate_row, encode_chat, pack_rows
from tuneproxy.local_backend.distributed import SINGLE, Group, shard, shard_base, share_held
from tuneproxy.local_backend.jobfiles import ADAPTER_DIR, CHECKPOINTS_DIR, MERGED_DIR, SUMMARY_FILE, JobFiles
from tuneproxy.local_backend.preflight import RunPlan, plan_run
from tuneproxy.local_backend.settings import TrainSettings


class Stopped(Exception):
    """Training stopped early because a stop was requested (cancel)."""


def encode_all(tokenizer: Any, examples: Sequence[Example], max_length: int) -> tuple[list[Encoded], int]:
    """Encode every example; drop (and count) those left with no trained token after truncation."""
    encoded = [encode_chat(tokenizer, ex.messages(), max_length) for ex in examples]
    kept = [e for e in encoded if e.trained_tokens]
    return kept, len(encoded) - len(kept)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a function of (seed, epoch) only, so a resumed run replays it."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1_000_003 * epoch)
    return torch.randperm(n, generator=generator).tolist()


def step_batch(examples: Sequence[Encoded], settings: TrainSettings, step: int) -> list[Encoded]:
    """The examples of optimizer step ``step`` (1-based)."""
    per_epoch = math.ceil(len(examples) / settings.batch_size)
    epoch, index = divmod(step - 1, per_epoch)
    order = epoch_order(len(examples), settings.seed, epoch)
    chosen = order[index * settings.batch_size:(index + 1) * settings.batch_size]
    return [examples[i] for i in chosen]


def _uses_plain_logits(config: Any) -> bool:
    """Whether logits are just ``lm_head(hidden)`` (no soft-capping or scaling), so we may compute
    them for trained positions only."""
    return not any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))


def loss_sum(model: Any, batch: dict[str, Any], device: str) -> Any:
    """Summed cross-entropy over a row's trained positions.

    Logits are computed only where a label exists: with a large vocabulary the output layer is a good
    part of a small model's compute, and most positions (prompt tokens) carry no loss.
    """
    import torch.nn.functional as F

    input_ids = batch["input_ids"].to(device)
    position_ids = batch["position_ids"].to(device)
    targets = batch["targets"].to(device)
    keep = targets != IGNORE
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _uses_plain_logits(base.config):
        hidden = base.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        logits = base.get_output_embeddings()(hidden.last_hidden_state[keep])
    else:
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[keep]
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def autocast(device: str) -> Any:
    """bf16 autocast on a GPU that supports it; nothing on CPU."""
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def row_tokens_of(rows: Sequence[Sequence[Encoded]]) -> int:
    return sum(len(e) for row in rows for e in row)


def validation_loss(model: Any, rows: Sequence[Sequence[Encoded]], device: str, group: Group = SINGLE,
                    in_step: bool = False) -> float:
    """Mean loss per trained token over the holdout rows (each rank scores its share of them). ``in_step``
    (a sharded base): every rank runs as many passes as the busiest, the extra ones counting for nothing."""
    import torch

    model.eval()
    total, count = 0.0, 0
    mine = shard(rows, group.rank, group.world)
    passes = group.most(len(mine)) if in_step else len(mine)
    with torch.no_grad(), autocast(device):
        for i in range(passes):
            row = mine[i] if i < len(mine) else rows[0]
            loss = float(loss_sum(model, collate_row(row), device))
            if i < len(mine):
                total += loss
                count += sum(e.trained_tokens for e in row)
    model.train()
    total, count = group.sum([total, count])
    return total / max(count, 1)


def build_lora(model: Any, settings: TrainSettings, run: RunPlan) -> Any:
    """Wrap the base model with LoRA adapters (k-bit preparation first under nf4)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if run.quantization == "nf4":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=run.checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    elif run.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    config = LoraConfig(
        r=settings.lora_rank, lora_alpha=settings.alpha, lora_dropout=settings.lora_dropout,
        target_modules=run.targets, task_type="CAUSAL_LM",
    )
    torch.manual_seed(settings.seed)  # LoRA A matrices are drawn at random
    with models.peft_quietly():
        return get_peft_model(model, config)


def build_optimizer(model: Any, settings: TrainSettings, device: str) -> Any:
    """Paged 8-bit AdamW on a GPU, fp32 AdamW on CPU."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


@dataclass
class Progress:
    """Counters carried across a resume."""

    step: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    train_seconds: float = 0.0
    train_loss: float | None = None
    valid_loss: float | None = None


def checkpoint_dirs(files: JobFiles) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones are hidden temp folders)."""
    root = files.path(CHECKPOINTS_DIR)
    return sorted(p for p in root.glob("step-*") if (p / "state.pt").is_file()) if root.is_dir() else []


def save_checkpoint(files: JobFiles, model: Any, optimizer: Any, scheduler: Any, progress: Progress) -> Path:
    """Write a checkpoint atomically (temp folder, then rename) and drop the older ones."""
    import torch

    root = files.path(CHECKPOINTS_DIR)
    root.mkdir(exist_ok=True)
    final = root / f"step-{progress.step:08d}"
    staging = root / f".step-{progress.step:08d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    state = {
        "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": json.dumps(random.getstate()),
    }
    torch.save(state, staging / "state.pt")
    (staging / "progress.json").write_text(json.dumps(progress.__dict__))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    for old in checkpoint_dirs(files)[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> Progress:
    """Restore LoRA weights, optimizer, scheduler and RNG from ``path``."""
    import torch

    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    python_state = json.loads(state["python_rng"])
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    return Progress(**json.loads((path / "progress.json").read_text()))


def peak_memory(device: str) -> tuple[int, str]:
    """Peak bytes: allocated on the GPU, or the worker's peak resident set size on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(), "GPU memory allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def save_adapter(model: Any, tokenizer: Any, target: Path) -> None:
    """Save the PEFT adapter (and tokenizer) atomically."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def export_merged(location: str, adapter: Path, target: Path, device: str) -> None:
    """Merge the adapter into an unquantized copy of the base and save it as a plain model folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(location, dtype=models.compute_dtype(device))
    with models.peft_quietly():
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def never() -> bool:
    return False


@dataclass
class Trainer:
    """One run in one job directory. ``should_stop`` is polled between steps (cancel)."""

    settings: TrainSettings
    files: JobFiles
    home: Path
    should_stop: Callable[[], bool] = never
    on_step: Callable[[int], None] | None = None
    group: Group = SINGLE  # this process's rank among the job's processes (distributed); rank 0 reports
    model: Any = field(default=None, init=False, repr=False)  # the trained PeftModel, after run()

    def run(self) -> dict[str, Any]:
        """Train to the end (or resume to it) and return the run summary (rank 0 also writes the adapter,
        the state and the events; the other ranks only train)."""
        started = time.perf_counter()
        run = plan_run(self.settings, self.home, in_rank=self.group.distributed)
        ranks = f", {self.group.world} processes" if self.group.distributed else ""
        if self.sharded:
            ranks += " with the base sharded across them (fsdp)"
        self._event(
            f"Plan: {run.device}{ranks}, quantization {run.quantization}, LoRA r={self.settings.lora_rank} on "
            f"{', '.join(run.targets)}; memory {run.memory.describe()}."
        )
        self._seed()
        location = models.materialize(run.source, self.home)
        tokenizer = models.load_tokenizer(location)
        train_set, valid_rows = self._data(tokenizer)
        model = models.load_model(
            location, quantization=run.quantization, device=run.device, source=run.source
        )
        model = build_lora(model, self.settings, run)
        model.train()
        self.group.broadcast_parameters([p for p in model.parameters() if p.requires_grad])
        if self.sharded:
            shard_base(model)
        optimizer = build_optimizer(model, self.settings, run.device)
        total = self.total_steps(len(train_set))
        scheduler = self._scheduler(optimizer, total)
        progress = self._resume(model, optimizer, scheduler)
        if self.group.distributed:  # dropout differs between ranks, as the data does
            import torch

            torch.manual_seed(self.settings.seed + 1_000_003 * self.group.rank + progress.step)
        if self.group.is_main:
            # a machine-hour per node on CPU (the processes share it); a device-hour per process on GPUs
            devices = self.group.world if run.device == "cuda" else self.settings.nnodes
            self.files.update_state(raw_status="running", step=progress.step, total_steps=total,
                                    device=run.device, processes=self.group.world, billed_devices=devices)
        self._loop(model, optimizer, scheduler, train_set, valid_rows, run, progress, total)
        self.model = model
        if not self.group.is_main:
            return {}
        adapter = self.files.path(ADAPTER_DIR)
        save_adapter(model, tokenizer, adapter)
        if self.settings.merge:
            self.files.update_state(raw_status="saving")
            export_merged(location, adapter, self.files.path(MERGED_DIR), run.device)
        return self._summary(run, progress, total, len(train_set), time.perf_counter() - started)

    @property
    def sharded(self) -> bool:
        """Whether the base's weights are sharded across the ranks (parallelism 'fsdp')."""
        return self.settings.parallelism == "fsdp" and self.group.distributed

    def _event(self, message: str, level: str = "info", **metrics: Any) -> None:
        """An event of the job, written by rank 0 only."""
        if self.group.is_main:
            self.files.append_event(message, level=level, **metrics)

    def total_steps(self, n_examples: int) -> int:
        total = self.settings.epochs * math.ceil(n_examples / self.settings.batch_size)
        return min(total, self.settings.max_steps) if self.settings.max_steps else total

    def _seed(self) -> None:
        import torch

        random.seed(self.settings.seed)
        torch.manual_seed(self.settings.seed)

    def _data(self, tokenizer: Any) -> tuple[list[Encoded], list[list[Encoded]]]:
        s = self.settings
        train_set, dropped = encode_all(tokenizer, load_examples(s.training_file, strict=True), s.max_seq_length)
        if dropped:
            self._event(
                f"{dropped} training example(s) have no assistant token to train on after truncation to "
                f"{s.max_seq_length} tokens; skipped.", level="warning",
            )
        if not train_set:
            raise DatasetError("No training example has an assistant turn to learn from (check weights).")
        valid_rows: list[list[Encoded]] = []
        if s.validation_file:
            valid, _ = encode_all(tokenizer, load_examples(s.validation_file, strict=True), s.max_seq_length)
            valid_rows = pack_rows(valid, s.row_tokens)
        return train_set, valid_rows

    def _scheduler(self, optimizer: Any, total: int) -> Any:
        from transformers import get_cosine_schedule_with_warmup

        warmup = math.ceil(self.settings.warmup_ratio * total)
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)

    def _resume(self, model: Any, optimizer: Any, scheduler: Any) -> Progress:
        checkpoints = checkpoint_dirs(self.files)
        if not checkpoints:
            return Progress()
        progress = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        self._event(f"Resumed from checkpoint at step {progress.step}.", step=progress.step)
        return progress

    def _loop(self, model: Any, optimizer: Any, scheduler: Any, train_set: list[Encoded],
              valid_rows: list[list[Encoded]], run: RunPlan, progress: Progress, total: int) -> None:
        import torch

        s = self.settings
        per_epoch = math.ceil(len(train_set) / s.batch_size)
        session_start, session_tokens = time.perf_counter(), 0
        group = self.group
        trainable = [p for p in model.parameters() if p.requires_grad]
        for step in range(progress.step + 1, total + 1):
            if group.any(self.should_stop()):  # every rank stops at the same step
                raise Stopped(f"Stopped at step {progress.step} of {total}.")
            step_start = time.perf_counter()
            batch = step_batch(train_set, s, step)
            labelled = sum(e.trained_tokens for e in batch)  # over the global batch: every rank knows it
            rows = pack_rows(shard(batch, group.rank, group.world), s.row_tokens)
            # a sharded base gathers each layer's weights with every rank: all run as many passes
            passes = group.most(len(rows)) if self.sharded else len(rows)
            loss_total = 0.0
            for i in range(passes):
                with autocast(run.device):
                    loss = loss_sum(model, collate_row(rows[i] if i < len(rows) else batch[:1]), run.device)
                if i >= len(rows):
                    loss = loss * 0.0  # a pass that keeps this rank in step, and counts for nothing
                (loss / labelled).backward()
                loss_total += float(loss.detach())
            loss_total, tokens = group.sum_gradients(trainable, [loss_total, row_tokens_of(rows)])
            tokens = int(tokens)
            torch.nn.utils.clip_grad_norm_(trainable, s.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            session_tokens += tokens
            progress.step, progress.tokens = step, progress.tokens + tokens
            progress.trained_tokens += labelled
            progress.train_seconds += time.perf_counter() - step_start
            progress.train_loss = loss_total / labelled
            if valid_rows and (step % s.eval_every == 0 or step == total):
                progress.valid_loss = validation_loss(model, valid_rows, run.device, group, in_step=self.sharded)
            if not group.is_main:
                continue
            self._report(progress, total, per_epoch, session_tokens, time.perf_counter() - session_start,
                         step_lr=scheduler.get_last_lr()[0], evaluated=bool(valid_rows) and (
                             step % s.eval_every == 0 or step == total))
            if self.on_step:
                self.on_step(step)
            if step % s.save_every == 0 and step < total:
                save_checkpoint(self.files, model, optimizer, scheduler, progress)

    def _report(self, progress: Progress, total: int, per_epoch: int, session_tokens: int,
                session_seconds: float, step_lr: float, evaluated: bool) -> None:
        tokens_per_s = session_tokens / session_seconds if session_seconds > 0 else None
        per_step = progress.train_seconds / progress.step
        eta = (total - progress.step) * per_step
        epoch = progress.step / per_epoch
        metrics = {"step": progress.step, "total_steps": total, "epoch": round(epoch, 4),
                   "train_loss": progress.train_loss,
                   "valid_loss": progress.valid_loss if evaluated else None}
        message = f"step {progress.step}/{total}: loss {progress.train_loss:.4f}"
        if evaluated:
            message += f", valid loss {progress.valid_loss:.4f}"
        self.files.append_event(message + f", lr {step_lr:.2e}", **metrics)
        self.files.update_state(
            step=progress.step, total_steps=total, epoch=epoch, train_loss=progress.train_loss,
            valid_loss=progress.valid_loss, tokens_per_s=tokens_per_s, eta_s=eta,
            trained_tokens=progress.tokens,
        )

    def _summary(self, run: RunPlan, progress: Progress, total: int, n_examples: int,
                 wall_s: float) -> dict[str, Any]:
        peak, peak_kind = peak_memory(run.device)
        summary = {
            "wall_seconds": wall_s,
            "train_seconds": progress.train_seconds,
            "steps": total,
            "examples": n_examples,
            "tokens": progress.tokens,
            "trained_tokens": progress.trained_tokens,
            "tokens_per_s": progress.tokens / progress.train_seconds if progress.train_seconds else None,
            "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind,
            "final_train_loss": progress.train_loss,
            "final_valid_loss": progress.valid_loss,
            "device": run.device,
            "processes": self.group.world,  # peak memory is rank 0's, per process; tokens are every rank's
            "parallelism": "fsdp" if self.sharded else "ddp" if self.group.distributed else None,
            "parameter_share": share_held(self.model),  # of the model's parameters, what rank 0 held
            "quantization": run.quantization,
            "target_modules": run.targets,
            "memory_estimate_bytes": run.memory.total,
            "merged": bool(self.settings.merge),
        }
        (self.files.path(SUMMARY_FILE)).write_text(json.dumps(summary, indent=1))
        return summary
