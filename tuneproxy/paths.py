"""Where tuneproxy keeps its state: the one resolver every module uses."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$TUNEPROXY_HOME`` (``~`` expanded), default ``~/.tuneproxy``: the ledger, local jobs and caches."""
    configured = os.environ.get("TUNEPROXY_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".tuneproxy"


__all__ = ["home"]
