"""A job's directory: the only channel between the client and its detached worker process.

Both the worker and any client process (``tuneproxy jobs show`` in another terminal) may write to it, so
every read-modify-write of ``state.json`` and every append to ``events.jsonl`` holds an exclusive
``flock`` on the job's lock file; readers need no lock (``state.json`` is replaced atomically, event lines
are written whole). Every file written here is readable by its user only (0600). Nothing here imports
torch, so reading a job stays cheap. The package targets Linux and macOS (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from tuneproxy.contract import Clock, utc_now

JOB_FILE = "job.json"
STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = ".lock"
LOG_FILE = "worker.log"
PID_FILE = "worker.pid"
CANCEL_FILE = "cancel"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
CHECKPOINTS_DIR = "checkpoints"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def now_iso(clock: Clock = utc_now) -> str:
    """``clock()`` (default: UTC now) as ISO 8601."""
    return clock().isoformat()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(data, indent=1, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (``mkstemp`` makes it 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_private(path: Path, mode: str = "a", **kwargs: Any) -> IO[Any]:
    """Open ``path`` for appending (``mode`` "a" or "ab"), creating it readable by this user only (0600):
    a job's files hold its data's words (events, logs) and are nobody else's business."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), mode, **kwargs)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


class JobFiles:
    """Reads and writes one job directory. ``clock`` stamps what this writer writes."""

    def __init__(self, root: Path, clock: Clock = utc_now) -> None:
        self.root = Path(root)
        self.clock = clock
        self._counted = (0, 0)  # (bytes of events.jsonl already counted, complete lines in them)

    @property
    def job_id(self) -> str:
        return self.root.name

    def path(self, name: str) -> Path:
        return self.root / name

    def now(self) -> str:
        """This writer's clock, as ISO 8601."""
        return now_iso(self.clock)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the job's exclusive lock (across processes and threads); not re-entrant."""
        fd = os.open(self.path(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def job(self) -> dict[str, Any]:
        """What submit wrote: the spec and the resolved settings."""
        return read_json(self.path(JOB_FILE), {})

    def state(self) -> dict[str, Any]:
        """The latest state (status, step, losses, throughput...)."""
        return read_json(self.path(STATE_FILE), {})

    def update_state(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the state and write it atomically; returns the new state."""
        return self.change_state(lambda state: fields)[0]

    def change_state(self, change: Callable[[dict[str, Any]], Mapping[str, Any] | None]
                     ) -> tuple[dict[str, Any], bool]:
        """Under the lock, ask ``change(state)`` for the fields to merge (None: leave the state alone).

        Returns the state as it now is and whether it was changed — a compare-and-set, so a decision
        taken on the state (say, "not finished yet") still holds when it is written.
        """
        with self.locked():
            state = self.state()
            fields = change(dict(state))
            if fields is None:
                return state, False
            state.update(fields, updated_at=self.now())
            write_json_atomic(self.path(STATE_FILE), state)
            return state, True

    def append_event(self, message: str, level: str = "info", **metrics: Any) -> dict[str, Any]:
        """Add one event. Ids are zero-padded sequence numbers given under the lock from the file's own line
        count, so they are unique and ordered across every process that writes, and sort as strings."""
        with self.locked():
            lines, ends_cleanly = self._count_lines()
            if not ends_cleanly:  # a writer killed mid-line left a fragment: it becomes a line of its own
                lines += 1
            event = {"id": f"{lines + 1:08d}", "time": self.now(), "level": level, "message": message,
                     **{k: v for k, v in metrics.items() if v is not None}}
            line = ("" if ends_cleanly else "\n") + json.dumps(event) + "\n"
            with open_private(self.path(EVENTS_FILE), encoding="utf-8") as fh:
                fh.write(line)
        return event

    def _count_lines(self) -> tuple[int, bool]:
        """Complete lines in events.jsonl (counted incrementally; call under the lock), and whether the
        file ends with a newline."""
        offset, lines = self._counted
        try:
            with self.path(EVENTS_FILE).open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < offset:  # replaced or truncated since: count again
                    offset, lines = 0, 0
                fh.seek(offset)
                tail = fh.read()
                fh.seek(max(size - 1, 0))
                last = fh.read(1)
        except FileNotFoundError:
            self._counted = (0, 0)
            return 0, True
        lines += tail.count(b"\n")
        self._counted = (offset + len(tail), lines)
        return lines, last in (b"", b"\n")

    def events(self) -> list[dict[str, Any]]:
        """Every complete event line, oldest first."""
        try:
            lines = self.path(EVENTS_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now, or a killed writer's fragment
                continue
        return out

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the worker's log."""
        try:
            text = self.path(LOG_FILE).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def pid(self) -> int | None:
        """The worker's process id, once it has been started."""
        try:
            return int(self.path(PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def write_pid(self, pid: int) -> None:
        """Record the worker's process id (atomically: a reader never sees an empty file)."""
        write_text_atomic(self.path(PID_FILE), str(pid))

    def cancel_requested(self) -> bool:
        return self.path(CANCEL_FILE).exists()

    def summary(self) -> dict[str, Any]:
        return read_json(self.path(SUMMARY_FILE), {})
