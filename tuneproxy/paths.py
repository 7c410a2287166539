"""Where tuneproxy keeps its state: the one resolver every module uses, and the private folders in it."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING = "staging"


def home() -> Path:
    """``$TUNEPROXY_HOME`` (``~`` expanded), default ``~/.tuneproxy``: the ledger, local jobs and caches."""
    configured = os.environ.get("TUNEPROXY_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".tuneproxy"


def private_folder(path: Path) -> Path:
    """Create ``path``, and each of its parents that is missing, readable by this user only (0700); a
    folder that exists already keeps the permissions its owner gave it."""
    if path.is_dir():
        return path
    private_folder(path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if path.is_dir():  # made by another process meanwhile: its permissions are that process's to set
            return path
        raise
    path.chmod(0o700)  # mkdir's mode is filtered by the umask
    return path


@contextmanager
def staging_folder(label: str) -> Iterator[Path]:
    """A private folder under the home (``staging/<label>-<pid>-<random>``) for copies of data that must
    exist only while they are sent; removed on the way out. Copies left by processes that were killed
    (``kill -9`` skips the removal) are swept first. The home is one machine's (SQLite's WAL cannot be
    shared over a network), so a pid in a folder's name is a pid of this machine."""
    root = private_folder(home() / STAGING)
    _sweep(root)
    folder = private_folder(root / f"{label}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sweep(root: Path) -> None:
    """Remove the staging folders under ``root`` whose process no longer runs (a folder whose name carries
    no pid is not tuneproxy's, and is left alone)."""
    for folder in root.iterdir():
        pid = _pid_in(folder.name)
        if pid is not None and not _running(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _pid_in(name: str) -> int | None:
    parts = name.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    pid = int(parts[1])
    return pid if 0 < pid < 2**31 else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


__all__ = ["STAGING", "home", "private_folder", "staging_folder"]
