"""Following a job: plain lines where there is no terminal (piped, CI, nohup), a live line on one, and the
backend's own ETA in both."""

from __future__ import annotations

import datetime as dt
import io
import re

import pytest
from rich.console import Console

from tests.contract.cases import OPENAI, run_happy_path
from tests.fit_helpers import SAMPLE, make_tuner
from tests.local_helpers import make_job_folder
from tuneproxy.contract import JobEvent, JobRecord, JobStatus
from tuneproxy.display import JobDisplay, duration
from tuneproxy.local_backend.jobfiles import JobFiles
from tuneproxy.local_backend.provider import LocalProvider
from tuneproxy.recording import ReplayTransport, cassette_path

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)
ESCAPE = re.compile(r"\x1b")
NO_SUCH_PID = 4_194_305  # above Linux's largest pid_max: never a real process


def record(status: JobStatus = JobStatus.RUNNING, eta_s: float | None = None) -> JobRecord:
    return JobRecord(provider="openai", job_id="ftjob-1", base_model="gpt-4o-mini", status=status,
                     raw_status=status.value,
                     estimated_finish=None if eta_s is None else T0 + dt.timedelta(seconds=eta_s))


def step(n: int, total: int | None = 100, loss: float = 1.0, valid: float | None = None) -> JobEvent:
    return JobEvent(id=f"ev-{n}", time=T0, message=f"step {n}", step=n, total_steps=total, train_loss=loss,
                    valid_loss=valid)


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False), out


def follow(display: JobDisplay, updates: list[tuple[JobRecord, list[JobEvent]]]) -> None:
    with display:
        display.stage("uploading train data to openai")
        for rec, fresh in updates:
            display(rec, fresh)


def test_without_a_terminal_each_stage_and_status_change_is_one_plain_line():
    console, out = plain_console()
    follow(JobDisplay(console, clock=lambda: T0), [
        (record(JobStatus.QUEUED), []), (record(JobStatus.QUEUED), []),
        (record(JobStatus.RUNNING), []), (record(JobStatus.RUNNING), []),
        (record(JobStatus.SUCCEEDED), []),
    ])
    assert out.getvalue().splitlines() == [
        "uploading train data to openai",
        "openai ftjob-1: queued",
        "openai ftjob-1: running",
        "openai ftjob-1: succeeded",
    ]


def test_without_a_terminal_a_progress_line_comes_every_tenth_of_the_steps_with_losses_and_eta():
    console, out = plain_console()
    running = record(eta_s=200)
    follow(JobDisplay(console, clock=lambda: T0), [(running, [step(n)]) for n in range(1, 31)])
    lines = out.getvalue().splitlines()
    assert lines == [
        "uploading train data to openai",
        "openai ftjob-1: running  step 1/100  loss 1.0000  ETA 3m 20s",
        "openai ftjob-1: running  step 10/100  loss 1.0000  ETA 3m 20s",
        "openai ftjob-1: running  step 20/100  loss 1.0000  ETA 3m 20s",
        "openai ftjob-1: running  step 30/100  loss 1.0000  ETA 3m 20s",
    ]


def test_polls_that_skip_steps_still_give_one_line_per_stretch_crossed():
    console, out = plain_console()
    follow(JobDisplay(console), [(record(), [step(3, valid=0.5)]), (record(), [step(7), step(14)]),
                                 (record(), [step(17)]), (record(), [step(55)])])
    assert [line.split("  ")[1] for line in out.getvalue().splitlines()[1:]] == [
        "step 3/100", "step 14/100", "step 55/100"]
    assert "loss 1.0000 val 0.5000" in out.getvalue()


def test_with_no_known_total_a_progress_line_comes_every_fifty_steps():
    console, out = plain_console()
    follow(JobDisplay(console), [(record(), [step(n, total=None)]) for n in range(1, 121)])
    assert [line.split("  ")[1] for line in out.getvalue().splitlines()[1:]] == [
        "step 1", "step 50", "step 100"]


def test_plain_lines_carry_no_escape_codes():
    console, out = plain_console()
    follow(JobDisplay(console, clock=lambda: T0), [(record(eta_s=90), [step(n)]) for n in range(1, 101)]
           + [(record(JobStatus.FAILED), [])])
    assert out.getvalue() and not ESCAPE.search(out.getvalue())


def test_a_disabled_display_prints_nothing_with_or_without_a_terminal():
    for terminal in (False, True):
        out = io.StringIO()
        follow(JobDisplay(Console(file=out, force_terminal=terminal), enabled=False),
               [(record(eta_s=60), [step(10)]), (record(JobStatus.SUCCEEDED), [])])
        assert out.getvalue() == ""


def test_no_eta_is_shown_when_the_backend_gives_none_the_estimate_has_passed_or_the_job_ended():
    console, out = plain_console()
    follow(JobDisplay(console, clock=lambda: T0), [
        (record(JobStatus.QUEUED), []), (record(eta_s=-30), []), (record(JobStatus.SUCCEEDED, eta_s=60), [])])
    assert "ETA" not in out.getvalue()


def test_on_a_terminal_the_live_line_shows_the_eta():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, force_interactive=True, width=160)
    follow(JobDisplay(console, clock=lambda: T0), [(record(eta_s=200), [step(10)])])
    assert "ETA 3m 20s" in out.getvalue() and "step 10/100" in out.getvalue()
    assert ESCAPE.search(out.getvalue())  # drawn live, not as plain lines


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (40, 200, 7500)] == ["40s", "3m 20s", "2h 5m"]


# where the ETA comes from ---------------------------------------------------------------------------------


def test_openai_s_estimated_finish_is_the_record_s_while_it_runs(tmp_path):
    records = run_happy_path(OPENAI, tmp_path).records
    running = [r.estimated_finish for r in records if r.status is JobStatus.RUNNING]
    assert running == [dt.datetime.fromtimestamp(1767226500, dt.timezone.utc)]
    assert records[-1].status is JobStatus.SUCCEEDED and records[-1].estimated_finish is None


def test_the_local_backend_s_estimated_finish_is_its_clock_now_plus_the_worker_s_eta(tmp_path):
    root = make_job_folder(tmp_path / "home", "ljob-1", raw_status="running", step=4, total_steps=10,
                           eta_s=90.5)
    JobFiles(root).write_pid(NO_SUCH_PID)
    provider = LocalProvider({"home": tmp_path / "home"}, clock=lambda: T0)
    provider._workers["ljob-1"] = Worker()  # noqa: SLF001 - stands in for the worker it started
    assert provider.refresh("ljob-1").estimated_finish == T0 + dt.timedelta(seconds=90.5)


def test_a_local_job_no_longer_running_has_no_estimated_finish(tmp_path):
    make_job_folder(tmp_path / "home", "ljob-1", raw_status="succeeded", eta_s=0.0,
                    finished_at=T0.isoformat(), billable_seconds=10.0)
    provider = LocalProvider({"home": tmp_path / "home"}, clock=lambda: T0)
    assert provider.refresh("ljob-1").estimated_finish is None


class Worker:
    """What Popen returns, for a worker that never runs but is still "running"."""

    pid = NO_SUCH_PID

    def poll(self):
        return None


# end to end ----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::tuneproxy.tuner.SunsetWarning", "ignore::tuneproxy.tuner.DatasetWarning")
def test_fit_with_stderr_not_a_terminal_prints_plain_progress_lines(capsys):
    tuner = make_tuner("openai", ReplayTransport(cassette_path("openai", "fit_happy_path")))
    tuner.show_progress = True
    tuner.fit(SAMPLE, holdout=0.1)
    err = capsys.readouterr().err
    job = "openai ftjob-Fq3ZtR8wLm2VnB6xKc9HdY1s"
    assert [line.split("  ETA")[0] for line in err.splitlines()] == [  # the ETA depends on today's date
        "uploading train data to openai (360 examples, 165,639 bytes)",
        "uploading validation data to openai (40 examples, 18,056 bytes)",
        "estimating and submitting to openai",
        f"{job}: running  step 45/135  loss 0.4812 val 0.5233",
        f"{job}: running  step 90/135  loss 0.1967 val 0.2410",
        f"{job}: succeeded  step 135/135  loss 0.0874 val 0.1552",
    ]
    assert not ESCAPE.search(err)
