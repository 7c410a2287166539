"""Where tuneproxy keeps its state: the one resolver every module uses."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$TUNEPROXY_HOME`` (``~`` expanded), default ``~/.tuneproxy``: the ledger, local jobs and caches."""
    configured = os.environ.get("TUNEPROXY_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".tuneproxy"


def private_folder(path: Path) -> Path:
    """Create ``path`` (and its parents) readable by this user only (0700) if it does not exist yet; an
    existing folder keeps the permissions its owner gave it."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
    return path


__all__ = ["home", "private_folder"]
