"""Each benchmark still runs: ``--quick`` (same steps, tiny inputs) in a subprocess, figures and ratio printed.

Only that it runs and what it prints are checked; its speed is not (quick-mode figures measure nothing).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"


def run_quick(script: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, f"{script} --quick exited {out.returncode}:\n{out.stdout}\n{out.stderr[-4000:]}"
    return out.stdout


def figure(text: str, pattern: str) -> float:
    """The number ``pattern``'s first group matches in ``text``, which must be positive."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    value = float(match.group(1).replace(",", ""))
    assert value > 0, f"{pattern!r}: {value} in:\n{text}"
    return value


def test_validate_benchmark_quick():
    out = run_quick("bench_validate.py")
    for label in ("tuneproxy validate (exact tokens)", "tuneproxy validate, one process",
                  "tiktoken counting alone (floor)", "together check_file (JSON only)", "tuneproxy on 10x"):
        figure(out, rf"^{re.escape(label)}.*?\s{NUMBER} ex/s ")
    figure(out, rf"^ratio tuneproxy / tiktoken floor: {NUMBER}x")
    figure(out, rf"^ratio tuneproxy / together check_file: {NUMBER}x")
    figure(out, rf"^peak RSS 10x / 1x: {NUMBER} ")


def test_local_train_benchmark_quick():
    pytest.importorskip("torch")
    out = run_quick("bench_local_train.py")
    assert "[cpu]" in out, out
    for label in ("tuneproxy local (packed)", "transformers Trainer + peft (padded)"):
        figure(out, rf"^\s+{re.escape(label)}\s+{NUMBER}\s")  # tokens/s
    figure(out, rf"speed ratio {NUMBER}x; peak memory ratio [0-9.]+x")
    figure(out, rf"speed ratio [0-9.]+x; peak memory ratio {NUMBER}x")
    assert_scaling(out, "cpu")


def assert_scaling(out: str, device: str) -> None:
    """The 1 vs 2 process figures of a real local job: both lines, the speed-up and the same losses."""
    assert f"[{device}] local job, 1 vs 2 processes (same global batch)" in out, out
    losses = []
    for label in ("1 process", "2 processes"):
        figure(out, rf"^\s+{label}\s+{NUMBER}\s")  # tokens/s
        losses.append(figure(out, rf"^\s+{label}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+{NUMBER}$"))
    assert abs(losses[0] - losses[1]) < 1e-3, out  # one update per global batch, however it is split
    figure(out, rf"speed-up {NUMBER}x, scaling efficiency [0-9]+%")
    figure(out, rf"speed-up [0-9.]+x, scaling efficiency {NUMBER}%")


def test_local_generate_benchmark_quick():
    pytest.importorskip("torch")
    out = run_quick("bench_local_generate.py")
    assert "[cpu]" in out, out
    for label in ("tuneproxy LocalEndpoint.complete_many (batch 8)", "tuneproxy evaluation Runner",
                  "transformers generate, one at a time"):
        figure(out, rf"^\s+{re.escape(label)}\s+{NUMBER}\s")  # tokens/s
    figure(out, rf"speed ratio {NUMBER}x; runner path [0-9.]+x; peak memory ratio [0-9.]+x")
    figure(out, rf"speed ratio [0-9.]+x; runner path {NUMBER}x; peak memory ratio [0-9.]+x")
    figure(out, rf"speed ratio [0-9.]+x; runner path [0-9.]+x; peak memory ratio {NUMBER}x")
    # greedy on the same model: batching must not change the answers
    assert re.search(r"same text as the baseline: ours (\d+)/\1, runner path \1/\1", out), out


def test_eval_benchmark_quick():
    out = run_quick("bench_eval.py")
    for label in ("tuneproxy Runner (cache + ledger)", "openai SDK + asyncio.gather (baseline)"):
        figure(out, rf"^{re.escape(label)}\s+[0-9.]+ s\s+{NUMBER} answers/s\s+[0-9.]+% of bound")
    figure(out, rf"^ratio tuneproxy / baseline throughput: {NUMBER}x")
    for label in ("tuneproxy Runner", "openai SDK + gather (SDK retries 2)"):
        line = re.search(rf"^{re.escape(label)}\s+answered (\d+)/(\d+), lost (\d+), counted twice (\d+)", out,
                         re.MULTILINE)
        assert line, out
        answered, asked, lost, twice = map(int, line.groups())
        assert (answered, lost, twice) == (asked, 0, 0), line.group(0)
    figure(out, rf"^rate-limited prompts: {NUMBER} of")


def test_estimate_all_benchmark_quick():
    out = run_quick("bench_estimate_all.py")
    figure(out, rf"^baseline\s+validate alone \(exact o200k_base counts\): {NUMBER} s")
    figure(out, rf"^ours\s+estimate --all \(5 backends, counted once\): {NUMBER} s")
    figure(out, rf"^ratio\s+estimate --all / validate = {NUMBER} \(goal: at most 1.10\)")


def test_gpu_check_quick():
    pytest.importorskip("torch")
    out = run_quick("gpu_check.py")
    assert "quick mode" in out and "NOT GPU figures" in out, out
    figure_lines = [ln for ln in out.splitlines() if "tuneproxy" in ln and "baseline" in ln and "ratio" in ln]
    assert figure_lines and all(ln.startswith("[cpu] ") for ln in figure_lines), out  # never passed off as GPU
    assert re.search(r"^\[cpu\] device: cpu$", out, re.MULTILINE), out
    assert re.search(r"^\[cpu\] versions: torch \S+, transformers \S+, peft \S+, bitsandbytes ", out, re.MULTILINE), out
    for label in ("effective tokens/s", "peak memory GiB", "train seconds"):
        prefix = rf"^\[cpu\] {re.escape(label)}\s+"
        figure(out, rf"{prefix}tuneproxy {NUMBER}\s+baseline [0-9.,]+\s+ratio [0-9.]+x$")
        figure(out, rf"{prefix}tuneproxy [0-9.,]+\s+baseline {NUMBER}\s+ratio [0-9.]+x$")
        figure(out, rf"{prefix}tuneproxy [0-9.,]+\s+baseline [0-9.,]+\s+ratio {NUMBER}x$")
    # both trainers saw exactly the same examples; what each really used is printed
    assert re.search(r"^\[cpu\] both ran the same [0-9,]+ real \(non-padding\) tokens$", out, re.MULTILINE), out
    for name in ("tuneproxy", "baseline"):
        assert re.search(rf"^\[cpu\]\s+{name}\s+quantization none, .*gradient checkpointing on, optimizer AdamW",
                         out, re.MULTILINE), out
    assert re.search(r"^\[cpu\] model ~0.5B: skipped: ", out, re.MULTILINE), out
    assert_scaling(out, "cpu")  # on CPU with gloo in quick mode; on 2 GPUs with NCCL for real


def test_gpu_check_without_cuda_exits_with_a_message():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the full check would run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 2, out
    assert "CUDA is not available" in out.stderr and "--quick" in out.stderr, out.stderr
    assert "tokens/s" not in out.stdout, out.stdout  # no figure is printed


def test_serve_benchmark_quick():
    pytest.importorskip("torch")
    pytest.importorskip("uvicorn")
    pytest.importorskip("openai")
    out = run_quick("bench_serve.py")
    assert "quick mode" in out and re.search(r"^\[\w+\] answers/s", out, re.MULTILINE), out
    for label in ("tuneproxy serve, 8 concurrent AsyncOpenAI clients",
                  "in-process endpoint.complete, one at a time (baseline)",
                  "in-process endpoint.complete_many, batch 8 (reference)"):
        figure(out, rf"^\s+{re.escape(label)}\s+{NUMBER}\s")  # answers/s
    figure(out, rf"^\s+ratio serve / one-at-a-time baseline: {NUMBER}x$")
    figure(out, rf"^\s+ratio serve / in-process complete_many \(reference\): {NUMBER}x$")
    # greedy on the same model: the server's batches must not change the answers
    assert re.search(r"same text as the baseline: serve (\d+)/\1, complete_many \1/\1", out), out
