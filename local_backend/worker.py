"""The detached worker process: ``python -m tuneproxy.local_backend.worker JOBDIR``.

It reads the job's settings from JOBDIR, trains, and writes status, metrics and events back into JOBDIR
for the provider to read. SIGTERM (cancel) is honoured between steps; the signal handler is installed
before the heavy imports so an early cancel is never lost. The worker records its own pid as soon as it
starts (the client writes it too, right after starting it), so a job is never left without one. What it
writes (checkpoints, the adapter, the merged model) is readable by its user only.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

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


def run_job(job_dir: Path) -> int:
    """Train the job in ``job_dir``; return the process exit code."""
    from tuneproxy.errors import TuneproxyError
    from tuneproxy.local_backend.settings import TrainSettings

    files = JobFiles(job_dir)
    started = time.monotonic()
    if not begin(files):
        print(f"job already {files.state().get('raw_status')}; nothing to do", file=sys.stderr)
        return 0
    try:
        from tuneproxy.local_backend.train import Stopped, Trainer

        settings = TrainSettings(**files.job()["settings"])
        home = Path(files.job()["home"])
        summary = Trainer(settings, files, home, should_stop=lambda: stop_requested(files)).run()
    except Stopped as exc:
        files.append_event(f"Cancelled. {exc}", level="warning")
        finish(files, "cancelled", started)
        return 0
    except TuneproxyError as exc:
        files.append_event(str(exc), level="error")
        finish(files, "failed", started, error=str(exc))
        return 1
    except Exception as exc:  # the job must end in a state, whatever broke
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        files.append_event(message, level="error")
        finish(files, "failed", started, error=message)
        return 1
    files.append_event(
        f"Succeeded: {summary['steps']} steps, {summary['tokens']} tokens in {summary['wall_seconds']:.1f}s.",
        step=summary["steps"], total_steps=summary["steps"], train_loss=summary["final_train_loss"],
        valid_loss=summary["final_valid_loss"],
    )
    finish(files, "succeeded", started)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process."""
    signal.signal(signal.SIGTERM, _request_stop)
    os.umask(0o077)  # checkpoints, the adapter and the merged model are the user's alone, like the data
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tuneproxy.local_backend.worker JOBDIR", file=sys.stderr)
        return 2
    JobFiles(Path(args[0])).write_pid(os.getpid())
    return run_job(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
