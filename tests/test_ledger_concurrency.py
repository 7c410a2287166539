"""Several processes claiming the same submission at the same moment: exactly one may submit it."""

from __future__ import annotations

import multiprocessing
import queue
import time
from pathlib import Path

WORKERS = 4
ROUNDS = 4


def _claimer(folder: str, rounds: int, barrier, results) -> None:
    """One client process: each round, open a new ledger with the others (all migrate it at once), then
    claim the same request with the others (all in the same instant)."""
    try:
        from tuneproxy.ledger import Ledger

        for number in range(rounds):
            barrier.wait(timeout=20)
            ledger = Ledger(Path(folder) / f"round-{number}.db")
            barrier.wait(timeout=20)
            sub, fresh = ledger.claim_intent("openai", "gpt-4o-mini", "fp-shared", {"epochs": 3},
                                             {"base_url": "https://api.example.com"})
            results.put((number, sub.intent_id, fresh, sub.state))
            ledger.close()
    except BaseException as exc:  # reported, not lost with the process
        results.put(("error", repr(exc)))
        barrier.abort()


def test_processes_opening_a_new_ledger_and_claiming_one_request_at_once_get_one_fresh_intent(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results = context.Queue()
    workers = [context.Process(target=_claimer, args=(str(tmp_path), ROUNDS, barrier, results))
               for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    got = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < WORKERS * ROUNDS and time.monotonic() < deadline:
            try:
                got.append(results.get(timeout=1))
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    break
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    assert [g for g in got if g[0] == "error"] == []
    assert len(got) == WORKERS * ROUNDS
    for number in range(ROUNDS):
        claims = [g for g in got if g[0] == number]
        assert len(claims) == WORKERS
        assert sum(fresh for _, _, fresh, _ in claims) == 1, claims
        assert len({intent for _, intent, _, _ in claims}) == 1, claims
        assert {state for *_, state in claims} == {"pending"}
