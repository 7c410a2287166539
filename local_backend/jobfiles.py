"""A job's directory: the only channel between the client and its detached worker process.

The worker writes; the provider reads. ``state.json`` is replaced atomically, ``events.jsonl`` only
grows. Nothing here imports torch, so reading a job stays cheap.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "worker.log"
PID_FILE = "worker.pid"
CANCEL_FILE = "cancel"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
CHECKPOINTS_DIR = "checkpoints"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def now_iso() -> str:
    """UTC now as ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).isoformat()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=str)
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


class JobFiles:
    """Reads and writes one job directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._event_total: int | None = None  # counted once, then kept: one writer at a time

    @property
    def job_id(self) -> str:
        return self.root.name

    def path(self, name: str) -> Path:
        return self.root / name

    def job(self) -> dict[str, Any]:
        """What submit wrote: the spec and the resolved settings."""
        return read_json(self.path(JOB_FILE), {})

    def state(self) -> dict[str, Any]:
        """The worker's latest state (status, step, losses, throughput...)."""
        return read_json(self.path(STATE_FILE), {})

    def update_state(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the state and write it atomically."""
        state = self.state()
        state.update(fields, updated_at=now_iso())
        write_json_atomic(self.path(STATE_FILE), state)
        return state

    def append_event(self, message: str, level: str = "info", **metrics: Any) -> dict[str, Any]:
        """Add one event; ids are zero-padded sequence numbers, so they sort as strings."""
        if self._event_total is None:
            self._event_total = self._event_count()
        self._event_total += 1
        event = {"id": f"{self._event_total:08d}", "time": now_iso(), "level": level,
                 "message": message, **{k: v for k, v in metrics.items() if v is not None}}
        with self.path(EVENTS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
        return event

    def _event_count(self) -> int:
        try:
            with self.path(EVENTS_FILE).open("rb") as fh:
                return sum(1 for _ in fh)
        except FileNotFoundError:
            return 0

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
            except json.JSONDecodeError:  # a line being written right now
                break
        return out

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the worker's log."""
        try:
            text = self.path(LOG_FILE).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def pid(self) -> int | None:
        try:
            return int(self.path(PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def cancel_requested(self) -> bool:
        return self.path(CANCEL_FILE).exists()

    def summary(self) -> dict[str, Any]:
        return read_json(self.path(SUMMARY_FILE), {})
