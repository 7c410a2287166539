"""Validation throughput and memory: tuneproxy against raw tiktoken and the together SDK's check_file.

Prints, from one run:
  1. tuneproxy's full validation with exact token counts (examples/s, MB/s, peak RSS), on a generated
     100,000-example chat file (~50 MB);
  2. the floor: tiktoken counting the same message texts alone, already in memory (goal: tuneproxy within
     1.5x of it);
  3. the together SDK's own ``check_file`` (UTF-8 and one JSON object per line only) on the same file;
  4. tuneproxy again on a 10x larger file: peak RSS must stay flat, not grow with the file.
Each run is a fresh subprocess so peak RSS is its own. tuneproxy checks a large file in one process per
core; its one-process figure is printed too. Peak RSS is the parent's (each worker's is about the same).

    python benchmarks/bench_validate.py [--examples 100000] [--skip-large] [--quick]

``--quick`` runs the same steps on a 300-example file (and a 3,000-example one for the 10x step) in a few
seconds: a check that the benchmark still runs, not a measurement (start-up costs dominate its figures).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

TEXT = (
    "order refund invoice charged twice account password login reset shipping delayed package "
    "tracking damaged replacement subscription cancel upgrade plan billing error crash update app "
    "feature request export report dashboard slow timeout api key rotate webhook sync mobile "
    "desktop please help urgent today yesterday again still not working thanks team support customer"
)
WORDS = TEXT.split()
FULL_EXAMPLES = 100_000
QUICK_EXAMPLES = 300


def make_file(path: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    system = "Triage the ticket and answer with one JSON object: category, priority, product, needs_human."
    with path.open("w") as handle:
        for i in range(n):
            ticket = " ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 50)))
            answer = json.dumps({"category": rng.choice(["billing", "bug", "account"]), "priority": "high",
                                 "ticket": i})
            handle.write(json.dumps({"messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": f"Ticket {i}: {ticket}"},
                                                  {"role": "assistant", "content": answer}],
                                     "metadata": {"category": "billing"}}) + "\n")


CHILD = r"""
import json, resource, sys, time
path, mode = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if mode.startswith("tuneproxy"):
    from tuneproxy.dataset import validate
    from tuneproxy.tokens import tiktoken_encoding
    tiktoken_encoding("o200k_base")  # loading the vocabulary is excluded, as for the floor
    t = time.perf_counter()
    report = validate(path, model="gpt-4o-mini", tokenizer="tiktoken", workers=1 if mode == "tuneproxy-1" else None)
    n, extra = report.stats.examples, {"ok": report.ok, "tokens": report.stats.total_tokens,
                                       "exact": report.stats.exact}
elif mode == "floor":
    from tuneproxy.tokens import tiktoken_encoding
    enc = tiktoken_encoding("o200k_base")
    texts = [m["content"] for line in open(path) for m in json.loads(line)["messages"]]
    t = time.perf_counter()  # the floor counts only the encoding, texts already in memory
    encode = enc.encode_ordinary
    tokens = sum(len(encode(s)) for s in texts)
    n, extra = len(texts) // 3, {"tokens": tokens}
else:
    from together.lib.utils.files import check_file
    report = check_file(path)
    n, extra = report.get("num_samples") or 0, {"ok": report.get("is_check_passed")}
elapsed = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": elapsed, "examples": n, "peak_rss_mb": rss, **extra}))
"""


def run(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(label: str, r: dict, mb: float) -> str:
    return (f"{label:<34} {r['seconds']:8.2f} s {r['examples'] / r['seconds']:12,.0f} ex/s "
            f"{mb / r['seconds']:8.1f} MB/s {r['peak_rss_mb']:9.1f} MB peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, help=f"default {FULL_EXAMPLES:,}; {QUICK_EXAMPLES} with --quick")
    parser.add_argument("--skip-large", action="store_true", help="skip the 10x file")
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs, same steps: checks the benchmark runs (figures not representative)")
    args = parser.parse_args()
    if args.examples is None:
        args.examples = QUICK_EXAMPLES if args.quick else FULL_EXAMPLES
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "bench.jsonl"
        make_file(small, args.examples)
        mb = small.stat().st_size / 1e6
        if args.quick:
            print("quick mode: tiny inputs, same steps; a check that the benchmark runs, not a measurement")
        print(f"file: {args.examples:,} chat examples, {mb:.1f} MB")
        run(small, "tuneproxy")  # warm: builds the offline vocabulary cache once
        ours, floor, together = run(small, "tuneproxy"), run(small, "floor"), run(small, "together")
        single = run(small, "tuneproxy-1")
        assert ours["tokens"] > 0 and ours["ok"] and ours["tokens"] == single["tokens"], (ours, single)
        assert ours["exact"], "the benchmark measures exact (tiktoken) counting"
        print(row("tuneproxy validate (exact tokens)", ours, mb))
        print(row("tuneproxy validate, one process", single, mb))
        print(row("tiktoken counting alone (floor)", floor, mb))
        print(row("together check_file (JSON only)", together, mb))
        print(f"ratio tuneproxy / tiktoken floor: {ours['seconds'] / floor['seconds']:.2f}x (goal <= 1.5x); "
              f"one process: {single['seconds'] / floor['seconds']:.2f}x")
        print(f"ratio tuneproxy / together check_file: {ours['seconds'] / together['seconds']:.2f}x")
        if not args.skip_large:
            large = Path(tmp) / "bench10x.jsonl"
            make_file(large, args.examples * 10)
            big = run(large, "tuneproxy")
            print(row(f"tuneproxy on 10x ({large.stat().st_size / 1e6:.0f} MB)", big, large.stat().st_size / 1e6))
            print(f"peak RSS 10x / 1x: {big['peak_rss_mb'] / ours['peak_rss_mb']:.2f} (flat = about 1.0)")


if __name__ == "__main__":
    main()
