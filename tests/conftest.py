"""Shared test set-up: every test gets its own TUNEPROXY_HOME and no provider keys from the machine."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tuneproxy import registry

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

# Besides the keys: variables that would send a test to another host, or make it record or replay
# something other than what it asked for.
REDIRECTING_VARIABLES = ("OPENAI_BASE_URL", "TOGETHER_BASE_URL", "FIREWORKS_BASE_URL", "REPLICATE_BASE_URL",
                         "REPLICATE_DESTINATION",
                         "FIREWORKS_ACCOUNT_ID", "TUNEPROXY_RECORD", "TUNEPROXY_CASSETTE", "TUNEPROXY_CASSETTES",
                         # settings a config run reads from the environment (tuneproxy.config.ENVIRONMENT)
                         "TUNEPROXY_PROVIDER", "TUNEPROXY_MODEL", "TUNEPROXY_BUDGET", "TUNEPROXY_EPOCHS",
                         "TUNEPROXY_LEARNING_RATE", "TUNEPROXY_HOLDOUT")


@functools.cache
def key_variables() -> tuple[str, ...]:
    """The variable holding each registered provider's key, as the provider declares it (loading a provider
    also registers its key's variable and shape for redaction)."""
    variables = set()
    for name in registry.names():
        credentials = registry.provider_class(name).CAPABILITIES.credentials
        if credentials is not None:
            variables.add(credentials.env_var)
    return tuple(sorted(variables))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("tuneproxy-home")
    monkeypatch.setenv("TUNEPROXY_HOME", str(home))
    for var in (*key_variables(), *REDIRECTING_VARIABLES):
        monkeypatch.delenv(var, raising=False)
    return home
