"""``kill -9`` of a ``fit`` process at a seeded random request — before the service answers it, or just after —
against a service on 127.0.0.1 that keeps its jobs: the rerun finds the job already paid for (one job at the
service), the ledger passes ``PRAGMA integrity_check``, and no row the killed process wrote is lost.

Two processes that start the same fit at the same moment end with one job between them, both following it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fit_helpers import MODELS, SAMPLE, before_the_sunset
from tests.reliability.fake_service import SERVICES, FakeService, Kill
from tuneproxy import Tuner, tokens
from tuneproxy.contract import JobStatus

KEY = "sk-proj-killtrialsentinel0123456789abcdef"
KEY_VARIABLE = {"openai": "OPENAI_API_KEY", "together": "TOGETHER_API_KEY"}
REQUESTS = {"openai": 9, "together": 19}  # HTTP requests of one whole fit against the fake service
TRIALS = 12  # per provider


def _trials() -> list:
    trials = []
    for provider in REQUESTS:  # the services tests/reliability/fake_service.py speaks
        rng = random.Random(f"kill-{provider}")  # seeded: a failing trial is the same trial on a rerun
        for number in range(TRIALS):
            at, before, delay = rng.randrange(REQUESTS[provider]), rng.random() < 0.5, rng.uniform(0, 0.05)
            trials.append(pytest.param(provider, at, before, delay,
                                       id=f"{provider}-{number}-request{at}-{'before' if before else 'after'}"))
    return trials


@pytest.fixture(scope="module")
def vocabulary() -> tuple[str, bytes]:
    """o200k_base as tuneproxy caches it: rebuilding it takes each new home 2 s, which is not under test."""
    url, _ = tokens._OFFICIAL["o200k_base"]
    return hashlib.sha1(url.encode()).hexdigest(), tokens._official_file("o200k_base")


@pytest.fixture
def home(isolated_home, vocabulary) -> Path:
    folder = isolated_home / "cache" / "tiktoken"
    folder.mkdir(parents=True)
    (folder / vocabulary[0]).write_bytes(vocabulary[1])
    return isolated_home


def _start(provider: str, service: FakeService, home: Path, go_file: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "TUNEPROXY_HOME": str(home), KEY_VARIABLE[provider]: KEY}
    command = [sys.executable, "-m", "tests.reliability.fit_process", provider, service.base_url]
    return subprocess.Popen(command + ([str(go_file)] if go_file else []), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(db_path: Path) -> dict[str, set[int]]:
    """Every row of every table, by rowid."""
    db = sqlite3.connect(db_path)
    try:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: {rowid for (rowid,) in db.execute(f"SELECT rowid FROM {table}")} for table in tables}
    finally:
        db.close()


def _rerun(provider: str, service: FakeService):
    tuner = Tuner(provider, MODELS[provider], epochs=3, batch_size=8, seed=42, suffix="support-bot",
                  poll_interval=0, show_progress=False, api_key=KEY, clock=before_the_sunset,
                  provider_options={"base_url": service.base_url})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whether it warns of reattaching depends on where the kill fell
        return tuner.fit(SAMPLE, holdout=0.1, reuse=True)  # a kill after the job succeeded: reuse it


@pytest.mark.parametrize(("provider", "at", "before", "delay"), _trials())
def test_a_fit_killed_at_any_request_is_rerun_into_the_one_job_it_paid_for(provider, at, before, delay,
                                                                           home):
    with SERVICES[provider]() as service:
        process = _start(provider, service, home)
        service.kill = Kill(pid=process.pid, at=at, before=before, delay_s=delay)
        process.communicate(timeout=120)
        assert process.returncode in (0, -9), process.stderr
        survived = _rows(home / "state.db")

        tuned = _rerun(provider, service)

        assert tuned.record.status is JobStatus.SUCCEEDED
        assert service.creates() == 1, f"{service.creates()} jobs at the service"
        assert tuned.record.job_id == next(iter(service.jobs))
        db = sqlite3.connect(home / "state.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM submissions WHERE state = 'submitted'").fetchone()[0] == 1
        db.close()
        after = _rows(home / "state.db")
        lost = {table: rows - after.get(table, set()) for table, rows in survived.items()}
        assert not any(lost.values()), f"rows lost: {lost}"


@pytest.mark.parametrize("provider", list(REQUESTS))
def test_two_processes_starting_the_same_fit_at_once_share_one_job(provider, home, tmp_path):
    go = tmp_path / "go"
    with SERVICES[provider]() as service:
        processes = [_start(provider, service, home, go) for _ in range(2)]
        go.touch()
        results = [process.communicate(timeout=120) for process in processes]
        for process, (_, err) in zip(processes, results):
            assert process.returncode == 0, err
        assert service.creates() == 1
        job_ids = {json.loads(out)["job_id"] for out, _ in results}
        assert job_ids == set(service.jobs)
