"""Finds backends by name. The core never imports a backend module directly.

Built-in backends are listed here as ``"module:Class"`` strings and imported only when asked for;
third-party backends register under the entry-point group ``tuneproxy.providers``.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from tuneproxy.contract import Provider
from tuneproxy.errors import ConfigError, MissingCredentials

BUILTIN: dict[str, str] = {
    "openai": "tuneproxy.providers.openai:OpenAIProvider",
    "together": "tuneproxy.providers.together:TogetherProvider",
    "fireworks": "tuneproxy.providers.fireworks:FireworksProvider",
    "replicate": "tuneproxy.providers.replicate:ReplicateProvider",
    "local": "tuneproxy.local_backend.provider:LocalProvider",
}

ENTRY_POINT_GROUP = "tuneproxy.providers"


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(ep.name, ep.value)
    return targets


def names() -> list[str]:
    """Every provider name that can be asked for."""
    return sorted(_targets())


def provider_class(name: str) -> type[Provider]:
    """The Provider class registered as ``name`` (imported now, not before)."""
    targets = _targets()
    if name not in targets:
        raise ConfigError(f"Unknown provider {name!r}. Choose one of: {', '.join(sorted(targets))}.")
    module_name, _, attr = targets[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " Install the local extra: pip install 'tuneproxy[local]'." if name == "local" else ""
        raise ConfigError(f"Provider {name!r} could not be loaded ({exc}).{hint}") from None
    return getattr(module, attr)


CASSETTE_ENV = "TUNEPROXY_CASSETTE"


def _cassette_transport(name: str, path: str) -> Any:
    """Replay (or, with ``TUNEPROXY_RECORD=1``, record) every request of this run through one cassette."""
    from tuneproxy.recording import RECORD_ENV, RecordingTransport, ReplayTransport

    if os.environ.get(RECORD_ENV) == "1":
        return RecordingTransport(path, provider=name, scenario=Path(path).stem,
                                  description=f"{name} {Path(path).stem}, recorded through the CLI")
    return ReplayTransport(path)


def create(name: str, *, api_key: str | None = None, require_key: bool = True, **options: Any) -> Provider:
    """Build the provider ``name``, taking its key from the environment when not given.

    With ``TUNEPROXY_CASSETTE=path`` set, the provider talks to that recorded cassette instead of the
    network (a replay needs no real key) — how the CLI is tested and demonstrated offline.
    """
    cls = provider_class(name)
    env_key = cls.capabilities.env_key
    cassette = os.environ.get(CASSETTE_ENV)
    replaying = bool(cassette) and os.environ.get("TUNEPROXY_RECORD") != "1"
    if cassette and "transport" not in options:
        options["transport"] = _cassette_transport(name, cassette)
    if api_key is None and env_key:
        api_key = os.environ.get(env_key) or ("replay-key" if replaying else None)
        if api_key is None and require_key:
            raise MissingCredentials(cls.capabilities.display_name, env_key)
    try:
        return cls(api_key=api_key, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid setting for provider {name!r}: {exc}. Check the -o/--option values "
                          "(`tuneproxy providers` lists what each provider takes).") from None
