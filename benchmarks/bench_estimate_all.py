"""The cost desk's overhead: ``estimate --all`` end to end against ``validate`` alone, in the same run.

Prints, from one run on a generated 100,000-example chat file (the one bench_validate.py writes, ~50 MB):
  1. the baseline: tuneproxy's validation of the file alone, with exact o200k_base token counts;
  2. ours: ``Tuner.estimate_all`` on the same file — every backend's default model, each backend built,
     the data validated and counted once, then priced five ways, with serving costs;
  3. the ratio (goal: the desk adds at most 10% to validating once).
Each is timed twice, alternating, and the faster of the two kept (the file is in the page cache for all).

    python benchmarks/bench_estimate_all.py [--examples 100000] [--quick]

``--quick`` runs the same steps on a 300-example file in a few seconds: a check that the benchmark still
runs, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_validate import FULL_EXAMPLES, QUICK_EXAMPLES, make_file  # noqa: E402


def baseline(path: Path) -> float:
    from tuneproxy.dataset import validate
    from tuneproxy.tokens import TiktokenCounter

    start = time.perf_counter()
    report = validate(path, counter=TiktokenCounter("o200k_base"), check_size=False)
    assert report.stats is not None and report.stats.examples > 0
    return time.perf_counter() - start


def desk(path: Path) -> tuple[float, int]:
    from tuneproxy import Tuner

    start = time.perf_counter()
    result = Tuner.estimate_all(path)
    elapsed = time.perf_counter() - start
    assert all(r.estimate is not None for r in result.rows), [r.error for r in result.rows]
    return elapsed, len(result.rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=FULL_EXAMPLES)
    parser.add_argument("--quick", action="store_true", help="a 300-example run: checks that the benchmark runs")
    args = parser.parse_args()
    examples = QUICK_EXAMPLES if args.quick else args.examples
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("TUNEPROXY_HOME", str(Path(folder) / "home"))
        path = Path(folder) / "train.jsonl"
        make_file(path, examples)
        size_mb = path.stat().st_size / 1e6
        baseline(path)  # warm: the vocabulary loaded, the file in the page cache, the imports done
        validate_s, desk_s, rows = [], [], 0
        for _ in range(2):
            validate_s.append(baseline(path))
            elapsed, rows = desk(path)
            desk_s.append(elapsed)
    ours, base = min(desk_s), min(validate_s)
    print(f"file: {examples:,} chat examples, {size_mb:.1f} MB")
    print(f"baseline  validate alone (exact o200k_base counts): {base:.2f} s ({examples / base:,.0f} examples/s)")
    print(f"ours      estimate --all ({rows} backends, counted once): {ours:.2f} s ({examples / ours:,.0f} examples/s)")
    print(f"ratio     estimate --all / validate = {ours / base:.3f} (goal: at most 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
