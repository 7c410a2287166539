"""Live progress for long waits (a job running, a file uploading), drawn with rich."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tuneproxy.contract import JobEvent, JobRecord


class JobDisplay:
    """A one-line live view of a job: status, step of total, latest losses, elapsed time."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), console=console or Console(stderr=True), transient=False,
        )
        self.task = None
        self.step: int | None = None
        self.total: int | None = None
        self.loss = ""
        self.started = time.monotonic()

    def __enter__(self) -> JobDisplay:
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("starting", total=None, detail="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled:
            self.progress.stop()

    def stage(self, text: str) -> None:
        """Show what is happening before the job exists (validating, uploading, submitting)."""
        if self.enabled and self.task is not None:
            self.progress.update(self.task, description=text)

    def __call__(self, record: JobRecord, fresh: list[JobEvent]) -> None:
        for event in fresh:
            if event.step is not None:
                self.step = event.step
            if event.total_steps:
                self.total = event.total_steps
            losses = [f"{name} {value:.4f}" for name, value in
                      (("loss", event.train_loss), ("val", event.valid_loss)) if value is not None]
            if losses:
                self.loss = " ".join(losses)
        if not self.enabled or self.task is None:
            return
        step = f"step {self.step}" + (f"/{self.total}" if self.total else "") if self.step is not None else ""
        detail = "  ".join(part for part in (step, self.loss) if part)
        self.progress.update(self.task, description=f"{record.provider} {record.job_id}: {record.status.value}",
                             total=self.total, completed=self.step or 0, detail=detail)
