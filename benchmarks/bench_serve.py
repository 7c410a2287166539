"""``tuneproxy serve`` under concurrent clients vs the same local endpoint called in-process, in the same run.

Same model, prompts (chat tickets from fixtures/datasets/sample.jsonl, cut before their answer), greedy,
the same ``max_tokens``. Prints answers per second (and generated tokens) for:
  1. ours: the real ``tuneproxy serve --base MODEL`` (uvicorn, in its own process, on 127.0.0.1), asked by
     8 concurrent clients (the OpenAI SDK's ``AsyncOpenAI``, in this process) until every prompt is answered;
     its request batcher generates the requests that arrive together in one batch (each answer's
     ``x-tuneproxy-batch-size`` header says how big its batch was; their mean and counts are printed);
  2. the baseline: what a user without the server does, the same local endpoint (``LocalProvider.endpoint``,
     as the server builds it) called in-process with ``complete``, one request at a time;
  3. for reference, not a baseline: the same endpoint's in-process ``complete_many`` on all prompts at once
     (batch 8): the batching ceiling, with no HTTP and no waiting for requests to gather;
then the ratio of ours to the baseline (and to the reference), and how many answers match the baseline's
text. Each path runs in its own process, after a warm-up (one request, then a batch), with the model loaded,
and is timed three times, the fastest pass kept: on the tiny model a pass takes about a second, and other
work on the cores moves single passes a lot. The goal: the server answers several times faster than
one-at-a-time in-process calls despite HTTP and JSON, and comes near the in-process batch. On a CPU the
clients share the cores with the server, which the figures include.

The model is the tiny random Llama bench_local_generate.py builds (hidden 64, 2 layers, a word-level
tokenizer covering the prompts). ``--model smollm2-135m-instruct`` runs the bundled real model instead
(converted once into ``$TUNEPROXY_HOME/models``, as the demo does): slow on a CPU (over 8 minutes on 2 cores
with ``--requests 48``, most of it the one-at-a-time baseline).

    python benchmarks/bench_serve.py [--requests 96] [--max-tokens 32] [--clients 8] [--model PATH] [--quick]

``--quick`` runs the same steps on 8 requests of 8 tokens, in about half a minute on CPU (mostly starting
processes): a check that the benchmark still runs, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local_generate import MODEL, build_tiny_model, bundled_model_folder, write_items  # noqa: E402

FULL = {"requests": 96, "max_tokens": 32}
QUICK = {"requests": 8, "max_tokens": 8}
PATHS = {
    "serve": "tuneproxy serve, {clients} concurrent AsyncOpenAI clients",
    "sequential": "in-process endpoint.complete, one at a time (baseline)",
    "batched": "in-process endpoint.complete_many, batch 8 (reference)",
}
STARTUP_S = 120
REPEATS = 3  # each path is timed three times and the fastest kept: other work on the cores skews a pass


def endpoint(model_dir: Path):
    """The local endpoint for ``model_dir`` as ``tuneproxy serve`` builds it (the local provider's)."""
    from tuneproxy.registry import create

    ep = create("local").endpoint(str(model_dir))
    ep.load()
    return ep


def child(which: str, model_dir: Path, items_file: Path, max_tokens: int) -> None:
    """Run one in-process path in this process and print its figures as JSON."""
    from tuneproxy.contract import Completion, GenerationParams

    ep = endpoint(model_dir)
    prompts = [item["messages"] for item in json.loads(items_file.read_text())]
    params = GenerationParams(max_tokens=max_tokens, temperature=0)
    ep.complete(prompts[0], max_tokens=2, temperature=0)  # warm-up: one prompt, then a batch
    ep.complete_many(prompts[:8], max_tokens=2, temperature=0)
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        if which == "sequential":
            outcomes = [ep.complete(p, params) for p in prompts]
        else:
            outcomes = ep.complete_many(prompts, params)
        times.append(time.perf_counter() - started)
    seconds = min(times)
    assert all(isinstance(o, Completion) for o in outcomes), outcomes
    print(json.dumps({"answers": len(outcomes), "seconds": seconds, "device": ep.load()[2],
                      "tokens": sum(o.usage.completion_tokens for o in outcomes), "texts": [o.text for o in outcomes]}))


def measure_in_process(which: str, args: argparse.Namespace, work: Path, env: dict) -> dict:
    command = [sys.executable, __file__, "--child", which, "--model-dir", str(args.model_dir),
               "--work", str(work), "--max-tokens", str(args.max_tokens)]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def ask_all(base_url: str, model: str, prompts: list, max_tokens: int, clients: int) -> dict:
    """Every prompt answered by ``clients`` concurrent clients, each taking the next prompt when done."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

    async def one(messages: list, tokens: int) -> tuple[object, int]:
        """The reply, and the size of the batch the server generated it in (the answer's header says)."""
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages,
                                                                     max_tokens=tokens, temperature=0)
        return raw.parse(), int(raw.headers["x-tuneproxy-batch-size"])

    await one(prompts[0], 2)  # warm-up: one request (the server loads the model), then a burst
    await asyncio.gather(*(one(p, 2) for p in prompts[:clients]))
    replies: dict[int, object] = {}
    batch_sizes: list[int] = []  # per answer, over every timed pass

    async def worker(queue: asyncio.Queue[int]) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            replies[i], size = await one(prompts[i], max_tokens)
            batch_sizes.append(size)

    times = []
    for _ in range(REPEATS):
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(prompts)):
            queue.put_nowait(i)
        started = time.perf_counter()
        await asyncio.gather(*(worker(queue) for _ in range(clients)))
        times.append(time.perf_counter() - started)
    seconds = min(times)
    await client.close()
    ordered = [replies[i] for i in range(len(prompts))]
    return {"answers": len(ordered), "seconds": seconds,
            "tokens": sum(r.usage.completion_tokens for r in ordered),
            "texts": [r.choices[0].message.content for r in ordered], "batch_sizes": batch_sizes}


def measure_serve(args: argparse.Namespace, items_file: Path, env: dict, work: Path) -> dict:
    """Start ``tuneproxy serve --base MODEL`` in its own process, ask it everything, stop it."""
    import httpx

    port = free_port()
    command = [sys.executable, "-c", "from tuneproxy.cli import main; main()", "serve", "--base",
               str(args.model_dir), "--port", str(port)]
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                raise SystemExit(f"tuneproxy serve exited {server.returncode}:\n{(work / 'serve.log').read_text()}")
            try:
                models = httpx.get(f"{base_url}/models", timeout=2).json()["data"]
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit("tuneproxy serve did not start") from None
                time.sleep(0.1)
        prompts = [item["messages"] for item in json.loads(items_file.read_text())]
        return asyncio.run(ask_all(base_url, models[0]["id"], prompts, args.max_tokens, args.clients))
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def report(args: argparse.Namespace, runs: dict, device: str, threads: int) -> None:
    print(f"\n[{device}] answers/s, {args.requests} requests, greedy, max_tokens {args.max_tokens}, "
          f"torch threads {threads}")
    print(f"  {'':<58}{'answers/s':>10}{'seconds':>9}{'tokens':>8}")
    for which, label in PATHS.items():
        f = runs[which]
        label = label.format(clients=args.clients)
        print(f"  {label:<58}{f['answers'] / f['seconds']:>10.2f}{f['seconds']:>9.2f}{f['tokens']:>8}")
    speed = {which: f["answers"] / f["seconds"] for which, f in runs.items()}
    print(f"  ratio serve / one-at-a-time baseline: {speed['serve'] / speed['sequential']:.2f}x")
    print(f"  ratio serve / in-process complete_many (reference): {speed['serve'] / speed['batched']:.2f}x")
    base = runs["sequential"]["texts"]
    same = {which: sum(a == b for a, b in zip(runs[which]["texts"], base, strict=True))
            for which in ("serve", "batched")}
    print(f"  same text as the baseline: serve {same['serve']}/{args.requests}, "
          f"complete_many {same['batched']}/{args.requests}")
    sizes = runs["serve"]["batch_sizes"]
    counts = ", ".join(f"{size}: {sizes.count(size)}" for size in sorted(set(sizes), reverse=True))
    print(f"  server batch size per answer: mean {sum(sizes) / len(sizes):.2f} (batch size: answers {counts})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help=f"default {FULL['requests']}; {QUICK['requests']} with --quick")
    parser.add_argument("--max-tokens", type=int,
                        help=f"default {FULL['max_tokens']}; {QUICK['max_tokens']} with --quick")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the server (default 8)")
    parser.add_argument("--model", help=f"a model folder or {MODEL} (default: a tiny random Llama)")
    parser.add_argument("--quick", action="store_true",
                        help="few short requests, same steps: checks the benchmark runs (figures not representative)")
    parser.add_argument("--child", choices=["sequential", "batched"])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model_dir, args.work / "items.json", args.max_tokens)
        return
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    import torch

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        items = write_items(work / "items.json", args.requests)
        if args.quick:
            print("quick mode: tiny inputs, same steps; a check that the benchmark runs, not a measurement")
        if args.model is None:
            texts = [m["content"] for item in items for m in item.messages]
            args.model_dir = build_tiny_model(work / "model", texts)
            print("model: random Llama hidden 64, 2 layers, word-level tokenizer")
        elif args.model.strip().lower() == MODEL:
            args.model_dir = bundled_model_folder()
            print(f"model: {MODEL} (bundled GGUF, dequantized), plain weights")
        else:
            args.model_dir = Path(args.model).resolve()
            print(f"model: {args.model_dir}")
        # a fresh home: an empty ledger, the local backend's defaults; offline
        env = {**os.environ, "TUNEPROXY_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        load = os.getloadavg()[0]
        runs = {which: measure_in_process(which, args, work, env) for which in ("sequential", "batched")}
        runs["serve"] = measure_serve(args, work / "items.json", env, work)
        report(args, runs, runs["sequential"]["device"], threads)
        # other processes on the cores skew every figure: say how busy the machine was
        print(f"  machine load average (1 min) {load:.1f} before, {os.getloadavg()[0]:.1f} after, "
              f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
