"""Progress for long waits (a job running, a file uploading): a live rich line on a terminal, plain lines
where no one watches one (stderr piped, CI, nohup), so a log shows the job moving instead of silence."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from tuneproxy.contract import Clock, JobEvent, JobRecord, utc_now

PLAIN_LINES_PER_RUN = 10  # without a terminal, a progress line every tenth of the steps when the total is known
PLAIN_STEPS_UNKNOWN_TOTAL = 50  # and every this many steps when it is not


class JobDisplay:
    """A job's status, step of total, latest losses and the backend's ETA: one live line on a terminal;
    otherwise one plain line per stage, per status change and per stretch of steps."""

    def __init__(self, console: Console | None = None, enabled: bool = True, clock: Clock = utc_now) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.live = self.console.is_interactive or self.console.is_jupyter
        self.clock = clock
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), console=self.console, transient=False,
        )
        self.task: TaskID | None = None
        self.step: int | None = None
        self.total: int | None = None
        self.loss = ""
        self.shown_status: str | None = None  # what the last plain status line said
        self.shown_step = 0  # the step the last plain line reported

    def __enter__(self) -> JobDisplay:
        if self.enabled and self.live:
            self.progress.start()
            self.task = self.progress.add_task("starting", total=None, detail="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled and self.live:
            self.progress.stop()

    def stage(self, text: str) -> None:
        """Show what is happening before the job exists (validating, uploading, submitting)."""
        if not self.enabled:
            return
        if not self.live:
            self._line(text)
        elif self.task is not None:
            self.progress.update(self.task, description=text)

    def __call__(self, record: JobRecord, fresh: list[JobEvent]) -> None:
        self._take(fresh)
        if not self.enabled:
            return
        status = f"{record.provider} {record.job_id}: {record.status.value}"
        detail = self._detail(record)
        if self.live:
            if self.task is not None:
                self.progress.update(self.task, description=status, total=self.total, completed=self.step or 0,
                                     detail=detail)
        elif status != self.shown_status or self._steps_due():
            self.shown_status, self.shown_step = status, self.step or 0
            self._line("  ".join(part for part in (status, detail) if part))

    def _take(self, fresh: list[JobEvent]) -> None:
        """Keep the latest step, total and losses the events report."""
        for event in fresh:
            if event.step is not None:
                self.step = event.step
            if event.total_steps:
                self.total = event.total_steps
            losses = [f"{name} {value:.4f}" for name, value in
                      (("loss", event.train_loss), ("val", event.valid_loss)) if value is not None]
            if losses:
                self.loss = " ".join(losses)

    def _detail(self, record: JobRecord) -> str:
        step = "" if self.step is None else f"step {self.step}" + (f"/{self.total}" if self.total else "")
        return "  ".join(part for part in (step, self.loss, self._eta(record)) if part)

    def _eta(self, record: JobRecord) -> str:
        """The time left by the backend's own estimate; nothing when it gives none or the time has passed."""
        if record.estimated_finish is None or record.status.terminal:
            return ""
        left = (record.estimated_finish - self.clock()).total_seconds()
        return f"ETA {duration(left)}" if left >= 1 else ""

    def _steps_due(self) -> bool:
        """Whether training crossed into a new stretch of steps since the last plain line."""
        if self.step is None:
            return False
        every = max(1, -(-self.total // PLAIN_LINES_PER_RUN)) if self.total else PLAIN_STEPS_UNKNOWN_TOTAL
        return self.step // every > self.shown_step // every

    def _line(self, text: str) -> None:
        # straight to the file: no markup, colour, wrapping or cursor codes in a log
        self.console.file.write(text + "\n")
        self.console.file.flush()


def duration(seconds: float) -> str:
    """``3m 20s``, ``2h 5m``, ``40s``: a span of time as a person reads it."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"
