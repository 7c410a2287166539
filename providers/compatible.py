"""Any OpenAI-compatible chat server (vLLM, Ollama, LM Studio, a colleague's server) as an :class:`Endpoint`.

It speaks through the openai SDK's ``AsyncOpenAI`` pointed at ``base_url``, with the SDK's own retries
off, and its errors leave exactly as the OpenAI provider's do (:class:`RateLimited` with the delay asked
for, :class:`UnreadableAnswer`, a :class:`ProviderError` with the HTTP status): the same
:class:`ChatEndpoint` and :class:`ErrorMapper`. Nothing is known about its prices, so costs stay unknown.
"""

from __future__ import annotations

import os
from typing import Any

from tuneproxy.contract import Endpoint
from tuneproxy.errors import register_secret, register_secret_value

from ._chat import ChatEndpoint
from ._http import ErrorMapper, http_clients

ENV_KEY = "TUNEPROXY_ENDPOINT_API_KEY"
# The SDK refuses to build a client without a key; a server that checks none ignores this one.
PLACEHOLDER_KEY = "no-key"
NAME = "compatible"

register_secret(ENV_KEY)


def compatible_endpoint(base_url: str, model: str, *, api_key: str | None = None, transport: Any = None,
                        timeout: float = 120.0) -> Endpoint:
    """An endpoint that asks ``model`` at the OpenAI-compatible ``base_url`` (e.g. ``http://localhost:8000/v1``).

    The key is ``api_key``, else ``$TUNEPROXY_ENDPOINT_API_KEY``, else a placeholder the server ignores;
    it is scrubbed from every message. ``transport``: an httpx2 transport to talk through (tests).
    """
    import openai

    key = api_key or os.environ.get(ENV_KEY) or PLACEHOLDER_KEY
    if key != PLACEHOLDER_KEY:  # the placeholder is no secret: scrubbing it would garble ordinary text
        register_secret_value(key)
    errors = ErrorMapper(provider=NAME, display=base_url, env_key=ENV_KEY, api_key=key)

    def client() -> Any:
        _, async_http = http_clients("httpx2", transport, timeout)
        return openai.AsyncOpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0,
                                  http_client=async_http)

    return ChatEndpoint(model, client, to_error=lambda exc: errors(exc, f"generate with {model}"),
                        sdk_errors=(openai.APIError,), provider=NAME)


__all__ = ["ENV_KEY", "compatible_endpoint"]
