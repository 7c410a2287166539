"""The evaluation runner's throughput and reliability, against a plain asyncio.gather over the openai SDK.

Prints, from one run, against a loopback OpenAI-compatible server (tests/fake_chat_server.py, in its
own process) that answers every request after a fixed latency:
  1. tuneproxy's Runner (a compatible endpoint, the answer cache in a fresh ledger, every answer saved as
     it arrives) asking N prompts at concurrency C: answers/s, and its share of the bound C / latency
     (goal >= 90%);
  2. the baseline, measured the same way on the same server: the openai SDK's AsyncOpenAI, one
     asyncio.gather under an asyncio.Semaphore(C), nothing saved; and the ratio of the two;
  3. both again where 10% of the prompts get a 429 (Retry-After) on their first request: how many were
     answered, lost (goal 0) and answered twice by the server (goal 0). The baseline keeps the SDK's own
     retries (its default, 2), as a user of the SDK would.

    python benchmarks/bench_eval.py [--requests 2000] [--concurrency 32] [--latency 0.05] [--quick]

``--quick`` runs the same steps with 64 requests at concurrency 8 in about a second: a check that the
benchmark runs, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tuneproxy.contract import GenerationParams
from tuneproxy.evaluation.model import Item
from tuneproxy.evaluation.runner import Runner
from tuneproxy.ledger import Ledger
from tuneproxy.providers.compatible import compatible_endpoint

SERVER = Path(__file__).resolve().parent.parent / "tests" / "fake_chat_server.py"  # shared with the tests
PARAMS = GenerationParams(max_tokens=32)
RATE_LIMITED_SHARE = 0.1


class Server:
    """The fake chat server in its own process, so its work does not share the measured client's CPU."""

    def __init__(self, latency: float, first_429_share: float = 0.0, retry_after: float = 0.05) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), "--latency", str(latency), "--first-429-share", str(first_429_share),
             "--retry-after", str(retry_after)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats") as response:
            return json.loads(response.read())

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


def prompts(label: str, n: int) -> list[str]:
    return [f"{label} question {i}: what is the status of ticket {i * 7919 % 10007}?" for i in range(n)]


def ours(base_url: str, texts: list[str], concurrency: int, ledger_dir: Path) -> tuple[float, list[bool]]:
    """Seconds the Runner took, and which prompts it answered."""
    items = [Item(id=f"item-{i}", messages=[{"role": "user", "content": t}], reference="") for i, t in enumerate(texts)]
    ledger = Ledger(ledger_dir / f"{texts[0].split()[0]}.db")
    runner = Runner(ledger, concurrency=concurrency, show_progress=False)
    start = time.perf_counter()
    answers = runner.run("bench", compatible_endpoint(base_url, "bench-model"), "bench", items, PARAMS)
    elapsed = time.perf_counter() - start
    ledger.close()
    return elapsed, [a.ok for a in answers]


def baseline(base_url: str, texts: list[str], concurrency: int, sdk_retries: int) -> tuple[float, list[bool]]:
    """Seconds a plain asyncio.gather over AsyncOpenAI took, and which prompts it answered."""
    import openai

    async def everything() -> list[bool]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="no-key", max_retries=sdk_retries)
        gate = asyncio.Semaphore(concurrency)

        async def one(text: str) -> bool:
            async with gate:
                try:
                    await client.chat.completions.create(
                        model="bench-model", messages=[{"role": "user", "content": text}], max_tokens=32,
                        temperature=0.0, top_p=1.0)
                    return True
                except openai.APIError:
                    return False

        try:
            return list(await asyncio.gather(*(one(t) for t in texts)))
        finally:
            await client.close()

    start = time.perf_counter()
    answered = asyncio.run(everything())
    return time.perf_counter() - start, answered


def throughput_row(label: str, seconds: float, n: int, bound: float) -> str:
    rate = n / seconds
    return f"{label:<38} {seconds:7.2f} s {rate:9.1f} answers/s {100 * rate / bound:6.1f}% of bound"


def reliability_row(label: str, seconds: float, texts: list[str], answered: list[bool], server: Server) -> str:
    counts = server.stats()["answered"]
    twice = sum(1 for t in texts if counts.get(t, 0) > 1)
    lost = sum(1 for t, ok in zip(texts, answered) if not ok or counts.get(t, 0) == 0)
    return (f"{label:<38} answered {sum(answered)}/{len(texts)}, lost {lost}, counted twice {twice}, "
            f"{seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="default 2,000; 64 with --quick")
    parser.add_argument("--concurrency", type=int, help="default 16; 8 with --quick")
    parser.add_argument("--latency", type=float, default=0.05, help="the server's seconds per answer")
    parser.add_argument("--quick", action="store_true",
                        help="few requests, same steps: checks the benchmark runs (figures not representative)")
    args = parser.parse_args()
    n = args.requests or (64 if args.quick else 2000)
    c = args.concurrency or (8 if args.quick else 16)
    bound = c / args.latency
    if args.quick:
        print("quick mode: few requests, same steps; a check that the benchmark runs, not a measurement")
    print(f"loopback server: {args.latency * 1000:g} ms per answer, {n:,} requests at concurrency {c}: "
          f"bound {bound:,.0f} answers/s")
    with tempfile.TemporaryDirectory() as tmp, Server(args.latency) as server:
        warm = prompts("warm", 2 * c)
        ours(server.base_url, warm, c, Path(tmp))
        baseline(server.base_url, warm, c, sdk_retries=0)
        alone, _ = baseline(server.base_url, prompts("alone", 20), 1, sdk_retries=0)
        print(f"one request at a time: {alone / 20 * 1000:.1f} ms each (the server's latency and the round trip)")
        our_s, our_ok = ours(server.base_url, prompts("ours", n), c, Path(tmp))
        base_s, base_ok = baseline(server.base_url, prompts("sdk", n), c, sdk_retries=0)
        assert all(our_ok) and all(base_ok), "every request is answered when nothing fails"
        print(throughput_row("tuneproxy Runner (cache + ledger)", our_s, n, bound))
        print(throughput_row("openai SDK + asyncio.gather (baseline)", base_s, n, bound))
        print(f"ratio tuneproxy / baseline throughput: {base_s / our_s:.2f}x")

    print(f"with {RATE_LIMITED_SHARE:.0%} of prompts answered 429 (Retry-After 0.05 s) on their first request:")
    with tempfile.TemporaryDirectory() as tmp, Server(args.latency, RATE_LIMITED_SHARE) as server:
        texts = prompts("ours429", n)
        seconds, answered = ours(server.base_url, texts, c, Path(tmp))
        print(reliability_row("tuneproxy Runner", seconds, texts, answered, server))
        texts = prompts("sdk429", n)
        seconds, answered = baseline(server.base_url, texts, c, sdk_retries=2)
        print(reliability_row("openai SDK + gather (SDK retries 2)", seconds, texts, answered, server))
        requests = server.stats()["requests"]
        limited = sum(1 for t in prompts("ours429", n) + texts if requests.get(t, 0) > 1)
        print(f"rate-limited prompts: {limited} of {2 * n}")


if __name__ == "__main__":
    main()
