"""The copies of training data and the local job area are private to their user, and a copy left by a
killed process is swept; two identical local fits at once start one worker; a local job killed and
resumed leaves one billed row, at the final figure."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fit_helpers import SAMPLE, make_tuner
from tests.local_helpers import build_model_folder, ticket_records, ticket_words, write_jsonl
from tuneproxy import JobStatus, Ledger, Tuner, cli
from tuneproxy.contract import JobRecord
from tuneproxy.ledger import SubmissionInProgress
from tuneproxy.local_backend.provider import LocalProvider
from tuneproxy.recording import ReplayTransport, cassette_path
from tuneproxy.tuner import ReattachedWarning

NO_SUCH_PID = 4_194_305  # above Linux's largest pid_max (and macOS's): never a real process


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def shared_with_others(root: Path) -> list[str]:
    """Everything under ``root`` (``root`` included) that anyone but its owner may read or enter."""
    paths = [root, *root.rglob("*")]
    return [f"{p.relative_to(root.parent)} {mode(p):o}" for p in paths if not p.is_symlink() and mode(p) & 0o077]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "model", ticket_words())


def kill_workers(local_home: Path) -> None:
    """SIGKILL the workers of the jobs under ``local_home`` (only ours: never a reused pid)."""
    for pid_file in local_home.glob("jobs/*/worker.pid"):
        try:
            pid = int(pid_file.read_text())
            if pid_file.parent.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


# the copy a fit uploads -------------------------------------------------------------------------------

pytestmark = [pytest.mark.filterwarnings("ignore::tuneproxy.tuner.SunsetWarning"),
              pytest.mark.filterwarnings("ignore::tuneproxy.tuner.DatasetWarning")]


def spy_on_uploads(tuner: Tuner) -> list[tuple[Path, int, int, int]]:
    """(path, its mode, its folder's, the staging root's) of each file the tuner hands to the provider."""
    seen: list[tuple[Path, int, int, int]] = []
    upload = tuner.provider.upload

    def spy(path, purpose="train"):
        seen.append((path, mode(path), mode(path.parent), mode(path.parent.parent)))
        return upload(path, purpose)

    tuner.provider.upload = spy  # type: ignore[method-assign]
    return seen


def test_the_copy_a_fit_uploads_is_private_under_the_home_and_removed_after(isolated_home):
    tuner = make_tuner("together", ReplayTransport(cassette_path("together", "fit_happy_path")))
    seen = spy_on_uploads(tuner)
    tuner.fit(SAMPLE, holdout=0.1, wait=False)
    assert [(m, folder, root) for _, m, folder, root in seen] == [(0o600, 0o700, 0o700)] * 2  # train, validation
    assert all(path.is_relative_to(isolated_home / "staging") for path, *_ in seen)
    assert not any(path.exists() or path.parent.exists() for path, *_ in seen)


def test_a_copy_left_by_a_killed_fit_is_swept_by_the_next_and_a_running_ones_kept(isolated_home):
    staging = isolated_home / "staging"
    killed = staging / f"0a1b2c3d-{NO_SUCH_PID}-feedbeef"
    running = staging / f"0a1b2c3d-{os.getpid()}-feedbeef"
    for folder in (killed, running):
        folder.mkdir(parents=True)
        (folder / "train.jsonl").write_text('{"text": "personal data"}\n')
    make_tuner("together", ReplayTransport(cassette_path("together", "fit_happy_path"))).fit(
        SAMPLE, holdout=0.1, wait=False)
    assert not killed.exists()
    assert (running / "train.jsonl").is_file()


# the local job area -----------------------------------------------------------------------------------


def test_a_local_upload_is_private_to_its_user(tmp_path):
    provider = LocalProvider({"home": tmp_path / "new" / "local"})
    uploaded = provider.upload(write_jsonl(tmp_path / "train.jsonl", ticket_records(4)))
    assert shared_with_others(tmp_path / "new") == []
    assert (provider.home / "files" / f"{uploaded.id}.jsonl").is_file()


def test_a_local_jobs_files_are_private_to_their_user_what_the_worker_wrote_included(tmp_path, model_dir):
    tuner = Tuner("local", str(model_dir), epochs=1, batch_size=8, lora_rank=4, show_progress=False,
                  poll_interval=0.05, provider_options={"home": str(tmp_path / "local"), "save_every": 1})
    try:
        job = tuner.fit(ticket_records(8), wait=False)
        assert job.wait().status is JobStatus.SUCCEEDED
    finally:
        kill_workers(tmp_path / "local")
    names = {p.name for p in (tmp_path / "local" / "jobs" / job.id).iterdir()}
    assert {"job.json", "state.json", "events.jsonl", ".lock", "worker.pid", "worker.log", "adapter"} <= names
    assert shared_with_others(tmp_path / "local") == []


# two identical fits at once -----------------------------------------------------------------------------

RACER = """
import json, os, sys, time, warnings
from pathlib import Path
from tuneproxy import Tuner
from tuneproxy.ledger import SubmissionInProgress

model, data, folder, name = sys.argv[1:]
warnings.simplefilter("ignore")
tuner = Tuner("local", model, epochs=50, batch_size=8, lora_rank=4, show_progress=False, poll_interval=0)
tuner.estimate(data)  # loads what the fit needs first, so that both fits start the same instant
Path(folder, name + ".ready").touch()
while not Path(folder, "go").exists():
    time.sleep(0.001)
try:
    result = {"job": tuner.fit(data, wait=False).id}
except SubmissionInProgress as exc:
    result = {"in progress": str(exc)}
Path(folder, name + ".json").write_text(json.dumps(result))
os._exit(0)  # the worker runs on in its own session; skip tearing down torch
"""


def test_two_identical_local_fits_at_once_start_one_worker(tmp_path, isolated_home, model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", ticket_records(16))
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(model_dir), str(data), str(tmp_path), name],
                               env={**os.environ, "TUNEPROXY_HOME": str(isolated_home)}) for name in "ab"]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"{name}.ready").exists() for name in "ab"):
            assert time.monotonic() < deadline and all(r.poll() is None for r in racers), "a fit did not get ready"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        assert [r.wait(60) for r in racers] == [0, 0]
        results = [json.loads((tmp_path / f"{name}.json").read_text()) for name in "ab"]
        jobs = list((isolated_home / "local" / "jobs").iterdir())
        assert len(jobs) == 1  # one job folder: one worker
        job_id = jobs[0].name
        assert results == [{"job": job_id}, {"job": job_id}]  # the second waited for the first and follows its job
        ledger = Ledger()
        assert [r["job_id"] for r in ledger.db.execute("SELECT job_id FROM submissions WHERE state = 'submitted'")] \
            == [job_id]
        assert [job.job_id for job in ledger.jobs()] == [job_id]
    finally:
        for racer in racers:
            racer.kill()
        kill_workers(isolated_home / "local")


class LateLedger(Ledger):
    """A ledger whose claim comes after ``meanwhile()``: another fit of the same request that lands between
    this fit's look for an earlier job and its claim."""

    def __init__(self, meanwhile) -> None:
        super().__init__()
        self.meanwhile = meanwhile

    def claim_intent(self, *args, **kwargs):
        self.meanwhile()
        return super().claim_intent(*args, **kwargs)


def test_a_local_fit_that_lands_between_anothers_look_and_its_claim_is_not_submitted_again(
        tmp_path, isolated_home, model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", ticket_records(16))

    def tuner(**seams) -> Tuner:
        return Tuner("local", str(model_dir), epochs=50, batch_size=8, lora_rank=4, show_progress=False,
                     poll_interval=0, **seams)

    first: list[str] = []
    try:
        late = tuner(ledger=LateLedger(lambda: first.append(tuner().fit(data, wait=False).id)))
        with pytest.warns(ReattachedWarning, match="this same request"):
            outcome = late.fit(data, wait=False).id  # it follows the first one's job
        assert [p.name for p in (isolated_home / "local" / "jobs").iterdir()] == first
        assert outcome == first[0]
    finally:
        kill_workers(isolated_home / "local")


def test_a_claim_unless_running_names_the_running_job_of_the_same_request():
    ledger = Ledger()
    submission, _ = ledger.claim_intent("local", "m", "fp", {})
    ledger.save_job(JobRecord(provider="local", job_id="ljob-1", base_model="m", status=JobStatus.RUNNING,
                              raw_status="running", intent_id=submission.intent_id))
    ledger.mark_submission(submission.intent_id, "submitted", job_id="ljob-1")
    ledger.release_claim(submission.intent_id)
    with pytest.raises(SubmissionInProgress, match="ljob-1"):
        ledger.claim_intent("local", "m", "fp", {}, unless_running=True)
    assert ledger.claim_intent("local", "m", "fp", {})[1] is True  # what --new / resubmit=True asks for


def test_a_claim_unless_running_is_fresh_once_the_same_requests_job_ended():
    ledger = Ledger()
    submission, _ = ledger.claim_intent("local", "m", "fp", {})
    ledger.save_job(JobRecord(provider="local", job_id="ljob-1", base_model="m", status=JobStatus.FAILED,
                              raw_status="failed", intent_id=submission.intent_id))
    ledger.mark_submission(submission.intent_id, "submitted", job_id="ljob-1")
    ledger.release_claim(submission.intent_id)
    assert ledger.claim_intent("local", "m", "fp", {}, unless_running=True)[1] is True


# a killed job resumed -----------------------------------------------------------------------------------


def billed_rows(job_id: str) -> list[tuple[float, float]]:
    return [(c.quantity, c.usd) for c in Ledger().costs(job_id=job_id) if c.kind == "billed"]


def run_cli(capsys, *args: str) -> int:
    sys.argv = ["tuneproxy", *args]
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    capsys.readouterr()
    return exit_info.value.code


def test_a_killed_local_job_resumed_keeps_one_billed_row_at_the_final_figure(tmp_path, model_dir, capsys):
    local_home = tmp_path / "local"
    tuner = Tuner("local", str(model_dir), epochs=5, batch_size=8, lora_rank=4, learning_rate=1e-2,
                  poll_interval=0.05, show_progress=False,
                  provider_options={"home": str(local_home), "save_every": 1, "price_per_gpu_hour": 2.0})
    try:
        job = tuner.fit(ticket_records(32), wait=False)
        job_dir = local_home / "jobs" / job.id
        deadline = time.monotonic() + 120
        while not any((job_dir / "checkpoints").glob("step-*")):
            assert time.monotonic() < deadline and not job.refresh().status.terminal
            time.sleep(0.05)
        os.kill(int((job_dir / "worker.pid").read_text()), signal.SIGKILL)
        assert job.wait().status is JobStatus.FAILED
        [(first_hours, first_usd)] = billed_rows(job.id)
        assert first_hours > 0 and first_usd == pytest.approx(first_hours * 2.0)

        assert run_cli(capsys, "jobs", "resume", job.id) == 0
        assert run_cli(capsys, "jobs", "wait", job.id, "--poll-interval", "0.05", "--json") == 0
        [(hours, usd)] = billed_rows(job.id)
        assert hours > first_hours and usd == pytest.approx(hours * 2.0)
        assert Ledger().job(job.id).status is JobStatus.SUCCEEDED
    finally:
        kill_workers(local_home)
