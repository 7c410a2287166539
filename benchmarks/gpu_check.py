"""GPU check: the local backend's CUDA path against transformers ``Trainer`` + peft, in the same run.

On one CUDA GPU, for the bundled SmolLM2-135M-Instruct (``smollm2-135m-instruct``) and, when one is
present locally, a ~0.5B model (``--model DIR`` or ``$TUNEPROXY_GPU_CHECK_MODEL``, else Qwen2.5-0.5B-Instruct
if it is in the Hugging Face cache), it trains the same chat examples for a bounded number of steps with:

  * tuneproxy's own trainer (``tuneproxy.local_backend.train.Trainer``, what the job worker runs) with
    ``quantization="nf4"`` (4-bit NF4, double quantization), bf16 autocast, gradient checkpointing,
    paged 8-bit AdamW (tuneproxy's choice on CUDA) and packed rows without padding;
  * the baseline: transformers ``Trainer`` + peft on the same model loaded the same way (NF4, double
    quantization, ``prepare_model_for_kbit_training``), ``bf16=True``, gradient checkpointing,
    ``optim="paged_adamw_8bit"``, the same LoRA, schedule and examples, each batch padded to its longest
    example (the default collator behaviour);

each in its own process, and prints effective (non-padding) tokens/s of training and peak GPU memory
(``torch.cuda.max_memory_allocated``), each beside the baseline with the ratio, plus the device, the
library versions, what each run really used (4-bit layers, double quantization, checkpointing,
optimizer class), and the local backend's data-parallel mode: the first model trained as a real local job
with 1 and with 2 processes (torchrun, NCCL, one GPU each) when 2 GPUs are visible — tokens/s, the speed-up
and the scaling efficiency — or a line saying why it did not run. Bounded: ``--steps`` optimizer steps of 8
examples per model (default 40), one epoch; meant to finish well under 5 minutes on one modern GPU.

    python benchmarks/gpu_check.py [--steps 40] [--model DIR] [--quick]

Without CUDA it exits 2 with a message, except with ``--quick``: the same steps on CPU with the tiny
random Llama of bench_local_train.py, 4 steps, plain LoRA in fp32 (NF4, bf16 autocast and paged 8-bit
AdamW are CUDA-only), every line tagged ``[cpu]``: a check that this script runs, not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local_train import SETTINGS, build_inputs, peak, report_scaling, run_job  # noqa: E402

BUNDLED = "smollm2-135m-instruct"
SIZED_ENV = "TUNEPROXY_GPU_CHECK_MODEL"
SIZED_HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"  # used only if already in the local Hugging Face cache
BATCH = SETTINGS["batch_size"]
QUICK_STEPS = 4
CHILD_TIMEOUT_S = 240
GOAL_S = 300
BASELINE = "transformers Trainer + peft (padded batches)"


def hyperparameters(quick: bool) -> dict[str, Any]:
    """bench_local_train's settings; on the GPU, longer rows (real tokenizers split the words finely)."""
    return {**SETTINGS, "max_seq_length": 512 if quick else 1024}


# ---------------------------------------------------------------------------------------------- children


def cuda_features(model: Any, nf4: bool) -> dict[str, Any]:
    """What a trained model really uses: 4-bit layers, double quantization, gradient checkpointing."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    four_bit = 0
    if nf4:
        import bitsandbytes as bnb

        four_bit = sum(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    qconfig = getattr(base.config, "quantization_config", None)
    double = getattr(qconfig, "bnb_4bit_use_double_quant", None)
    if double is None and isinstance(qconfig, dict):
        double = qconfig.get("bnb_4bit_use_double_quant")
    return {"linear4bit": four_bit, "double_quant": bool(double),
            "checkpointing": bool(getattr(base, "is_gradient_checkpointing", False))}


def run_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    """tuneproxy's trainer, as the job worker runs it; the optimizer it builds is recorded, not changed."""
    import torch

    from tuneproxy.local_backend import train
    from tuneproxy.local_backend.jobfiles import JobFiles
    from tuneproxy.local_backend.settings import TrainSettings

    seen: dict[str, str] = {}
    build_optimizer = train.build_optimizer

    def recording(model: Any, settings: Any, device: str) -> Any:
        optimizer = build_optimizer(model, settings, device)
        seen["optimizer"] = type(optimizer).__name__
        return optimizer

    train.build_optimizer = recording
    settings = TrainSettings(model=cfg["model"], training_file=cfg["data"], quantization=cfg["quantization"],
                             device=cfg["device"], gradient_checkpointing=True, save_every=10**6,
                             eval_every=10**6, **cfg["hyper"])
    job = Path(cfg["work"]) / "ours-job"
    job.mkdir()
    trainer = train.Trainer(settings, JobFiles(job), Path(cfg["home"]))
    summary = trainer.run()
    context = train.autocast(cfg["device"])  # the context each training step runs under
    autocast = "bf16" if isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16 \
        else "none (fp32)"
    return {"tokens": summary["tokens"], "seconds": summary["train_seconds"], "steps": summary["steps"],
            "examples": summary["examples"], "peak": peak(cfg["device"]), "final_loss": summary["final_train_loss"],
            "quantization": summary["quantization"], "optimizer": seen.get("optimizer", "?"),
            "autocast": autocast, "layout": f"packed rows of <= {settings.row_tokens} tokens",
            **cuda_features(trainer.model, summary["quantization"] == "nf4")}


def run_baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    """transformers Trainer + peft with the same model loading, LoRA, precision, optimizer and examples."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tuneproxy.dataset.validate import load_examples
    from tuneproxy.local_backend import models
    from tuneproxy.local_backend.collate import encode_chat

    hyper, device, nf4 = cfg["hyper"], cfg["device"], cfg["quantization"] == "nf4"
    location = cfg["location"]
    tokenizer = models.load_tokenizer(location)
    rows = []
    for ex in load_examples(cfg["data"], strict=True):
        enc = encode_chat(tokenizer, ex.messages(), hyper["max_seq_length"])
        if enc.trained_tokens:  # tuneproxy skips the same examples (no assistant token left)
            rows.append({"input_ids": enc.input_ids, "labels": enc.labels,
                         "attention_mask": [1] * len(enc.input_ids)})
    model = models.load_model(location, quantization=cfg["quantization"], device=device)
    gc_kwargs = {"use_reentrant": False}
    if nf4:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    torch.manual_seed(hyper["seed"])
    model = get_peft_model(model, LoraConfig(r=hyper["lora_rank"], lora_alpha=hyper["lora_alpha"],
                                             lora_dropout=hyper["lora_dropout"], target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    steps = math.ceil(len(rows) / BATCH) * hyper["epochs"]
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(Path(cfg["work"]) / "baseline-out"), per_device_train_batch_size=BATCH,
        num_train_epochs=hyper["epochs"], learning_rate=hyper["learning_rate"], lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.05 * steps), max_grad_norm=1.0, weight_decay=0.0,
        optim="paged_adamw_8bit" if device == "cuda" else "adamw_torch",
        gradient_checkpointing=True, gradient_checkpointing_kwargs=gc_kwargs,
        logging_steps=10**6, save_strategy="no", report_to=[], seed=hyper["seed"],
        use_cpu=device == "cpu", bf16=bf16, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    return {"tokens": sum(len(r["input_ids"]) for r in rows) * hyper["epochs"], "seconds": seconds,
            "steps": result.global_step, "examples": len(rows), "peak": peak(device),
            "final_loss": result.training_loss, "quantization": cfg["quantization"],
            "optimizer": type(optimizer).__name__, "autocast": "bf16" if bf16 else "none (fp32)",
            "layout": "batches padded to their longest example", **cuda_features(model, nf4)}


def child(which: str, cfg_path: Path) -> None:
    """Run one trainer in this process and print its figures as JSON (last line)."""
    cfg = json.loads(cfg_path.read_text())
    figures = (run_ours if which == "ours" else run_baseline)(cfg)
    print(json.dumps(figures))


def measure(which: str, cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir()
    cfg_path = run_dir / "config.json"
    cfg_path.write_text(json.dumps({**cfg, "work": str(run_dir)}))
    try:
        out = subprocess.run([sys.executable, __file__, "--child", which, "--config", str(cfg_path)],
                             capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"gpu_check: {which} run on {cfg['label']} took over {CHILD_TIMEOUT_S} s; "
                         "lower --steps") from None
    if out.returncode != 0:
        raise SystemExit(f"gpu_check: {which} run on {cfg['label']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ parent


def versions() -> str:
    import peft
    import torch
    import transformers

    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except Exception as exc:  # not installed, or fails to load without CUDA
        bnb = f"not available ({type(exc).__name__})"
    return (f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
            f"bitsandbytes {bnb}")


def sized_model(arg: str | None) -> tuple[str | None, str]:
    """The ~0.5B model to check, or None with the reason it is skipped."""
    given = arg or os.environ.get(SIZED_ENV)
    if given:
        path = Path(given).expanduser()
        if (path / "config.json").is_file() or (path.is_file() and path.suffix.lower() == ".gguf"):
            return str(path.resolve()), f"{path.name} ({given})"
        return None, f"{given!r} is not a model folder (no config.json) or .gguf file"
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(SIZED_HUB_ID, local_files_only=True)
    except Exception:
        return None, (f"none given and {SIZED_HUB_ID} is not in the Hugging Face cache; pass --model DIR "
                      f"or set {SIZED_ENV}")
    return folder, f"{SIZED_HUB_ID} (Hugging Face cache)"


def line(tag: str, label: str, ours: float, base: float, fmt: str) -> None:
    print(f"{tag} {label:<19} tuneproxy {ours:{fmt}}   baseline {base:{fmt}}   ratio {ours / base:.2f}x")


def report(tag: str, label: str, device: str, ours: dict[str, Any], base: dict[str, Any]) -> None:
    memory = "torch.cuda.max_memory_allocated" if device == "cuda" else "process peak RSS"
    print(f"\n{tag} model {label}: {ours['steps']} steps x batch {BATCH}, 1 epoch, {ours['examples']} examples; "
          f"peak memory = {memory} of each run's own process")
    for name, f in (("tuneproxy", ours), ("baseline", base)):
        print(f"{tag}   {name:<9} quantization {f['quantization']}, 4-bit layers {f['linear4bit']}, "
              f"double quant {'yes' if f['double_quant'] else 'no'}, autocast {f['autocast']}, "
              f"gradient checkpointing {'on' if f['checkpointing'] else 'off'}, optimizer {f['optimizer']}, "
              f"{f['layout']}")
    line(tag, "effective tokens/s", ours["tokens"] / ours["seconds"], base["tokens"] / base["seconds"], ",.0f")
    line(tag, "peak memory GiB", ours["peak"] / 2**30, base["peak"] / 2**30, ".3f")
    line(tag, "train seconds", ours["seconds"], base["seconds"], ".2f")
    print(f"{tag} {'final train loss':<19} tuneproxy {ours['final_loss']:.4f}   baseline {base['final_loss']:.4f}")
    same = "the same" if ours["tokens"] == base["tokens"] else "DIFFERENT token counts:"
    print(f"{tag} both ran {same} {ours['tokens']:,} real (non-padding) tokens"
          + ("" if ours["tokens"] == base["tokens"] else f" vs {base['tokens']:,}"))


def data_parallel(tag: str, device: str, work: Path, location: str, quantization: str, hyper: dict) -> None:
    """The first model as a real local job with 1 and with 2 processes (2 GPUs; gloo on CPU with --quick)."""
    import torch

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if device == "cuda" and gpus < 2:
        print(f"{tag} data-parallel on 2 GPUs: not run, {gpus} GPU visible (two are needed)")
        return
    inputs = work / "data-parallel"
    inputs.mkdir()
    (inputs / "model").symlink_to(location)
    (inputs / "train.jsonl").symlink_to(work / "train.jsonl")
    one = run_job(work, inputs, device, 1, quantization=quantization, hyperparameters=hyper)
    two = run_job(work, inputs, device, 2, quantization=quantization, hyperparameters=hyper)
    report_scaling(device, one, two)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help=f"optimizer steps per model (default 40; {QUICK_STEPS} with --quick)")
    parser.add_argument("--model", help=f"a ~0.5B model folder to check as well (or ${SIZED_ENV})")
    parser.add_argument("--quick", action="store_true",
                        help="CPU, tiny model, a few steps: checks the script runs (not GPU figures)")
    parser.add_argument("--child", choices=["ours", "baseline"])
    parser.add_argument("--config", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.config)
        return

    started = time.perf_counter()
    import torch

    if not args.quick and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}). This check needs an NVIDIA GPU with a CUDA build of torch and "
              "bitsandbytes; `--quick` runs the same steps on CPU as a smoke test (not GPU figures).",
              file=sys.stderr)
        sys.exit(2)
    device = "cpu" if args.quick else "cuda"
    tag = f"[{device}]"
    steps = args.steps or (QUICK_STEPS if args.quick else 40)
    hyper = hyperparameters(args.quick)
    quantization = "none" if args.quick else "nf4"

    if args.quick:
        print(f"{tag} quick mode: CPU, tiny random Llama, {steps} steps; checks the script runs, NOT GPU figures")
        print(f"{tag} device: cpu")
    else:
        print(f"{tag} device: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, "
              f"bf16 {'supported' if torch.cuda.is_bf16_supported() else 'NOT supported: fp32 autocast'}, "
              f"{torch.cuda.device_count()} GPU(s) visible)")
    print(f"{tag} versions: {versions()}")
    if args.quick:
        print(f"{tag} settings: plain LoRA fp32 (NF4 double quantization, bf16 autocast and paged 8-bit AdamW "
              "are CUDA-only), gradient checkpointing on, packing on")
    else:
        print(f"{tag} settings: QLoRA NF4 + double quantization, bf16 autocast, gradient checkpointing, paged "
              "8-bit AdamW (tuneproxy picks it on CUDA: no setting), packing (pack_tokens = max_seq_length)")
    print(f"{tag} LoRA r={hyper['lora_rank']} alpha={hyper['lora_alpha']} all-linear, batch {BATCH}, "
          f"max_seq_length {hyper['max_seq_length']}, lr {hyper['learning_rate']}, cosine, 1 epoch")
    print(f"{tag} baseline = {BASELINE}; ratio = tuneproxy / baseline "
          "(tokens/s: higher is better; memory and seconds: lower is better)")

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        tiny = {"hidden": 64, "layers": 2}
        build_inputs(work, steps * BATCH, **tiny)  # the chat examples (and, for --quick, the tiny model)
        home = work / "home"
        checks: list[tuple[str, str | None, str]] = []  # (label, model for tuneproxy, why skipped)
        first = ""  # the first model checked: the data-parallel run trains it again
        if args.quick:
            checks.append((f"tiny random Llama (hidden {tiny['hidden']}, {tiny['layers']} layers)",
                           str(work / "model"), ""))
            checks.append(("~0.5B", None, "not run in quick mode (CPU)"))
        else:
            checks.append((BUNDLED, BUNDLED, ""))
            model, why = sized_model(args.model)
            checks.append((why if model else "~0.5B", model, why))
        for label, model, why in checks:
            if model is None:
                print(f"\n{tag} model {label}: skipped: {why}")
                continue
            from tuneproxy.local_backend import models

            # the bundled GGUF is dequantized once here, into the home both runs share
            location = models.materialize(models.resolve(model), home)
            cfg = {"label": label, "model": model, "location": location, "data": str(work / "train.jsonl"),
                   "home": str(home), "device": device, "quantization": quantization, "hyper": hyper}
            slug = "".join(c if c.isalnum() else "-" for c in label)[:40]
            base = measure("baseline", cfg, work / f"{slug}-baseline")
            ours = measure("ours", cfg, work / f"{slug}-ours")
            report(tag, label, device, ours, base)
            first = first or location
        print()
        data_parallel(tag, device, work, first, quantization, hyper)
    elapsed = time.perf_counter() - started
    print(f"{tag} finished in {elapsed:.0f} s (goal: under {GOAL_S} s on one GPU)")


if __name__ == "__main__":
    main()
