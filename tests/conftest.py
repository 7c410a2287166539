"""Shared test set-up: every test gets its own TUNEPROXY_HOME and no provider keys from the machine."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("tuneproxy-home")
    monkeypatch.setenv("TUNEPROXY_HOME", str(home))
    for var in ("OPENAI_API_KEY", "TOGETHER_API_KEY", "FIREWORKS_API_KEY", "REPLICATE_API_TOKEN",
                "OPENAI_BASE_URL", "TOGETHER_BASE_URL", "TUNEPROXY_RECORD"):
        monkeypatch.delenv(var, raising=False)
    return home
