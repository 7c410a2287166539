"""Finds backends by name and builds them. The core never imports a backend module directly.

Built-in backends are listed here as ``"module:Class"`` strings and imported only when asked for;
third-party backends register under the entry-point group ``tuneproxy.providers``. Defining a backend
class registers its key's variable and shape for redaction (:meth:`Provider.__init_subclass__`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import time
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from tuneproxy.contract import Clock, Endpoint, Provider, ProviderOptions, utc_now
from tuneproxy.errors import BackendNotInstalled, ConfigError, MissingCredentials

BUILTIN: dict[str, str] = {
    "openai": "tuneproxy.providers.openai:OpenAIProvider",
    "together": "tuneproxy.providers.together:TogetherProvider",
    "fireworks": "tuneproxy.providers.fireworks:FireworksProvider",
    "replicate": "tuneproxy.providers.replicate:ReplicateProvider",
    "local": "tuneproxy.local_backend.provider:LocalProvider",
}

ENTRY_POINT_GROUP = "tuneproxy.providers"

# Not a provider but a protocol: a model behind any OpenAI-compatible server (vLLM, Ollama, LM Studio).
URL_ENDPOINT = "tuneproxy.providers.compatible:compatible_endpoint"
# `tuneproxy serve`: the local backend's OpenAI-compatible server for the adapters it tuned.
SERVER = "tuneproxy.local_backend.serve:serve_from_ledger"
# `tuneproxy export`: writes a succeeded local job's adapter, merged model or GGUF.
EXPORTER = "tuneproxy.local_backend.export:export_from_ledger"


def _targets() -> dict[str, str]:
    return dict(_installed_targets())


@functools.lru_cache(maxsize=1)
def _installed_targets() -> tuple[tuple[str, str], ...]:
    """The built-in backends and the installed plugins' (read once per process: scanning every installed
    distribution's entry points takes milliseconds, and the desk asks for the list dozens of times)."""
    targets = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(ep.name, ep.value)
    return tuple(targets.items())


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
        raise ConfigError(f"Provider {name!r} could not be loaded ({exc}).") from None
    cls: type[Provider] = getattr(module, attr)
    return cls


def check_installed(name: str) -> None:
    """Raise :class:`BackendNotInstalled` when the backend needs an optional extra that is missing."""
    cls = provider_class(name)
    missing = [module for module in cls.REQUIRES if importlib.util.find_spec(module) is None]
    if missing:
        raise BackendNotInstalled(
            f"The {cls.CAPABILITIES.display_name} backend needs {', '.join(missing)}, which is not installed: "
            f"pip install 'tuneproxy[{cls.EXTRA or name}]'.")


def create(name: str, options: ProviderOptions | Mapping[str, Any] | None = None, *, api_key: str | None = None,
           require_key: bool = True, transport: Any = None, clock: Clock = utc_now,
           sleep: Callable[[float], None] = time.sleep) -> Provider:
    """Build the provider ``name`` from its options, taking its key from the environment when not given.

    ``options`` is validated by the provider's own :class:`ProviderOptions` (a wrong key or type is a
    :class:`ConfigError` naming the nearest valid one). With ``TUNEPROXY_CASSETTE=path`` set the provider
    talks to that recorded cassette instead of the network (a replay needs no real key) — how the CLI is
    tested and demonstrated offline (:func:`tuneproxy.recording.transport_from_env`).
    """
    from tuneproxy.recording import ReplayTransport, transport_from_env

    cls = provider_class(name)
    check_installed(name)
    if transport is None:
        transport = transport_from_env(name)
    credentials = cls.CAPABILITIES.credentials
    if api_key is None and credentials:
        api_key = os.environ.get(credentials.env_var)
        if api_key is None and isinstance(transport, ReplayTransport):
            api_key = "replay-key"  # a cassette answers whatever the key; none is sent anywhere
        if api_key is None and require_key:
            raise MissingCredentials(cls.CAPABILITIES.display_name, credentials.env_var)
    return cls(options, api_key=api_key, transport=transport, clock=clock, sleep=sleep)


def server() -> Callable[..., None]:
    """``tuneproxy serve``'s implementation: the local backend's OpenAI-compatible server for its tuned
    adapters (:data:`SERVER`, imported now, not before)."""
    module_name, _, attr = SERVER.partition(":")
    serve: Callable[..., None] = getattr(importlib.import_module(module_name), attr)
    return serve


def exporter() -> Callable[..., Any]:
    """``tuneproxy export``'s implementation: the local backend's exporter (:data:`EXPORTER`, imported now)."""
    module_name, _, attr = EXPORTER.partition(":")
    export: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
    return export


def url_endpoint(base_url: str, model: str, **options: Any) -> Endpoint:
    """An :class:`Endpoint` asking ``model`` at the OpenAI-compatible ``base_url`` (imported now, not before;
    ``options``: ``api_key``, ``transport``, ``timeout``)."""
    module_name, _, attr = URL_ENDPOINT.partition(":")
    build = getattr(importlib.import_module(module_name), attr)
    endpoint: Endpoint = build(base_url, model, **options)
    return endpoint
