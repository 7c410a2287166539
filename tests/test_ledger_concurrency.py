"""Several processes claiming the same submission at the same moment: exactly one may submit it; the
others are told it is in progress while its claimer runs, and may reconcile it once the claimer died."""

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
        from tuneproxy.ledger import Ledger, SubmissionInProgress

        for number in range(rounds):
            barrier.wait(timeout=20)
            ledger = Ledger(Path(folder) / f"round-{number}.db")
            barrier.wait(timeout=20)
            try:
                sub, fresh = ledger.claim_intent("openai", "gpt-4o-mini", "fp-shared", {"epochs": 3},
                                                 {"base_url": "https://api.example.com"})
                results.put((number, sub.intent_id, fresh, sub.state))
            except SubmissionInProgress as exc:
                results.put((number, str(exc), "in progress", None))
            barrier.wait(timeout=20)  # every claimer still runs while the others claim
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
        assert [fresh for _, _, fresh, _ in claims].count(True) == 1, claims
        assert [fresh for _, _, fresh, _ in claims].count("in progress") == WORKERS - 1, claims
        [(_, intent, _, state)] = [c for c in claims if c[2] is True]
        assert state == "pending"
        assert all(intent in message for _, message, fresh, _ in claims if fresh == "in progress")


def _claim_and_die(path: str) -> None:
    from tuneproxy.ledger import Ledger

    Ledger(path).claim_intent("openai", "gpt-4o-mini", "fp-shared", {}, {})
    # the process ends here without releasing its claim, as a client killed mid-upload does


def test_an_intent_whose_claimer_died_is_taken_over_for_reconciling(tmp_path):
    from tuneproxy.ledger import Ledger

    context = multiprocessing.get_context("spawn")
    dying = context.Process(target=_claim_and_die, args=(str(tmp_path / "state.db"),))
    dying.start()
    dying.join(timeout=60)
    assert dying.exitcode == 0
    sub, fresh = Ledger(tmp_path / "state.db").claim_intent("openai", "gpt-4o-mini", "fp-shared", {}, {})
    assert fresh is False and sub.state == "pending"
