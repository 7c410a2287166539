"""The detached worker process: ``python -m tuneproxy.local_backend.worker JOBDIR``.

It reads the job's settings from JOBDIR, trains, and writes status, metrics and events back into JOBDIR
for the provider to read. SIGTERM (cancel) is honoured between steps; the signal handler is installed
before the heavy imports so an early cancel is never lost. The worker records its own pid as soon as it
starts (the client writes it too, right after starting it), so a job is never left without one. What it
writes (checkpoints, the adapter, the merged model) is readable by its user only.

A job of several processes (``processes`` > 1 or ``nnodes`` > 1) is trained by ranks that torchrun's
elastic agent starts: the worker runs the agent in its own process (so its pid, cancel and death stay
what they are for one process) and each rank runs ``worker --rank JOBDIR``
(:mod:`~tuneproxy.local_backend.distributed`). Rank 0 writes the job's outcome; when a rank dies, the
agent stops the others and the worker records the job as failed, naming the rank, with the log's last
lines. On each further machine of a several-node job, ``worker --join JOBDIR`` runs that machine's agent.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tuneproxy.local_backend import distributed  # no torch: cheap before the SIGTERM handler
from tuneproxy.local_backend.jobfiles import TERMINAL, JobFiles

_stop = False


def _request_stop(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def stop_requested(files: JobFiles) -> bool:
    """True once SIGTERM arrived or the cancel file exists."""
    return _stop or files.cancel_requested()


def finish(files: JobFiles, status: str, started: float, error: str | None = None) -> None:
    """Write the final state; billable time accumulates across resumed runs."""
    elapsed = time.monotonic() - started
    files.change_state(lambda state: {
        "raw_status": status, "error": error, "finished_at": files.now(),
        "billable_seconds": state.get("billable_seconds", 0.0) + elapsed,
    })


def begin(files: JobFiles) -> bool:
    """Mark the job as loading, unless it already ended (a client gave up on this worker before it
    started, or it was cancelled): then leave the recorded outcome alone and return False."""
    def start(state: dict[str, Any]) -> dict[str, Any] | None:
        if state.get("raw_status") in TERMINAL:
            return None
        return {"raw_status": "loading_model", "started_at": files.now(), "error": None}

    return files.change_state(start)[1]


def settings_of(files: JobFiles) -> Any:
    """The run's settings, as submit wrote them."""
    from tuneproxy.local_backend.settings import TrainSettings

    return TrainSettings(**files.job()["settings"])


def run_job(job_dir: Path) -> int:
    """Train the job in ``job_dir`` (in this process, or through torchrun for several); return the exit
    code."""
    files = JobFiles(job_dir)
    started = time.monotonic()
    if not begin(files):
        print(f"job already {files.state().get('raw_status')}; nothing to do", file=sys.stderr)
        return 0
    try:
        settings = settings_of(files)
    except Exception as exc:  # a job.json this version cannot read
        finish(files, "failed", started, error=f"Cannot read the job's settings: {exc}")
        return 1
    if distributed.is_distributed(settings):
        return launch(files, settings, started)
    return train(files, settings, started)


def train(files: JobFiles, settings: Any, started: float, group: distributed.Group = distributed.SINGLE) -> int:
    """Train as one process, or as one rank of several (``group``); rank 0 records the outcome."""
    from tuneproxy.errors import TuneproxyError

    main_rank = group.is_main
    try:
        from tuneproxy.local_backend.train import Stopped, Trainer

        summary = Trainer(settings, files, Path(files.job()["home"]), should_stop=lambda: stop_requested(files),
                          group=group).run()
    except Stopped as exc:
        if main_rank:
            files.append_event(f"Cancelled. {exc}", level="warning")
            finish(files, "cancelled", started)
        return 0
    except TuneproxyError as exc:  # the same on every rank (data, settings, memory): rank 0 says it
        if main_rank:
            files.append_event(str(exc), level="error")
            finish(files, "failed", started, error=str(exc))
        else:  # in the log, should this rank alone have met it
            print(f"rank {group.rank}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the job must end in a state, whatever broke
        traceback.print_exc()
        if group.distributed:  # perhaps only a peer's death seen from here: the launcher names the rank
            return 1
        message = f"{type(exc).__name__}: {exc}"
        files.append_event(message, level="error")
        finish(files, "failed", started, error=message)
        return 1
    if not main_rank:
        return 0
    files.append_event(
        f"Succeeded: {summary['steps']} steps, {summary['tokens']} tokens in {summary['wall_seconds']:.1f}s.",
        step=summary["steps"], total_steps=summary["steps"], train_loss=summary["final_train_loss"],
        valid_loss=summary["final_valid_loss"],
    )
    finish(files, "succeeded", started)
    return 0


def run_rank(job_dir: Path) -> int:
    """One rank of a several-process job, started by torchrun."""
    from tuneproxy.local_backend import models

    files = JobFiles(job_dir)
    # the job's time runs from when its worker began it (the agent's start-up is billable too)
    begun = files.state().get("started_at")
    since = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(begun)).total_seconds() if begun else 0.0
    started = time.monotonic() - max(0.0, since)
    settings = settings_of(files)
    group = distributed.join(models.pick_device(settings.device))
    try:
        return train(files, settings, started, group)
    finally:
        distributed.leave()


def launch(files: JobFiles, settings: Any, started: float, joining: bool = False) -> int:
    """Run torchrun's agent for the job's ranks on this machine and wait for them. When a rank fails, the
    agent stops the others; the job is then recorded failed (unless rank 0 recorded an outcome first),
    naming the rank and its exit, with the log's last lines. A machine that ``joining`` a several-node job
    records nothing: the first machine's worker does."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ.update(distributed.rank_environment(settings))
    if stop_requested(files):  # cancelled while starting: the agent would replace our SIGTERM handler
        if not joining:
            finish(files, "cancelled", started)
        return 0
    outcome, code = None, 0
    try:
        torchrun(distributed.torchrun_args(settings, files.root, files.job_id))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        outcome, code = (f"Rank {rank} of the job's processes (pid {failure.pid}) {how}; the others were "
                         f"stopped. Resume it with LocalProvider.resume({files.job_id!r}) (it continues from "
                         f"its latest checkpoint). Last log lines:\n{files.log_tail(15)}"), 1
    except SignalException:  # cancel: the agent has stopped every rank
        outcome = "cancelled"
    except Exception as exc:  # the rendezvous or the agent itself failed
        traceback.print_exc()
        outcome, code = f"torchrun could not run the job's processes: {type(exc).__name__}: {exc}", 1
    if joining:
        return code
    if outcome is None and files.state().get("raw_status") not in TERMINAL:
        outcome, code = "The job's processes ended without recording an outcome; see worker.log.", 1
    if outcome is not None:
        conclude(files, outcome, started)
    return code


def conclude(files: JobFiles, outcome: str, started: float) -> None:
    """Record ``outcome`` (cancelled, or a failure's message) unless rank 0 recorded one already."""
    if files.state().get("raw_status") in TERMINAL:
        return
    if outcome == "cancelled" or files.cancel_requested():
        files.append_event("Cancelled.", level="warning")
        finish(files, "cancelled", started)
    else:
        files.append_event(outcome, level="error")
        finish(files, "failed", started, error=outcome)


USAGE = "usage: python -m tuneproxy.local_backend.worker [--rank | --join] JOBDIR"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process (and of each rank, ``--rank``, and each further machine of a
    several-node job, ``--join``)."""
    signal.signal(signal.SIGTERM, _request_stop)
    os.umask(0o077)  # checkpoints, the adapter and the merged model are the user's alone, like the data
    args = sys.argv[1:] if argv is None else argv
    mode = args[0] if args and args[0] in (distributed.RANK_FLAG, distributed.JOIN_FLAG) else None
    paths = args[1:] if mode else args
    if len(paths) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    job_dir = Path(paths[0])
    if mode == distributed.RANK_FLAG:
        return run_rank(job_dir)
    if mode == distributed.JOIN_FLAG:
        files = JobFiles(job_dir)
        return launch(files, settings_of(files), time.monotonic(), joining=True)
    JobFiles(job_dir).write_pid(os.getpid())
    return run_job(job_dir)


if __name__ == "__main__":
    sys.exit(main())
