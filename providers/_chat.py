"""A model behind an OpenAI-style ``chat.completions.create``, as a tuneproxy :class:`Endpoint`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from tuneproxy.contract import Completion, Endpoint, GenerationParams, Message, Usage, timed
from tuneproxy.errors import ProviderError, UnreadableAnswer


class LoopClients:
    """One async client per event loop, built by ``factory`` on first use in that loop: an async HTTP client's
    connections belong to the loop that opened them (each blocking ``complete`` runs its own loop and closes
    its client at the end)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    def get(self) -> Any:
        """The running loop's client."""
        loop = asyncio.get_running_loop()
        # a client whose loop has closed holds no live connection any more: forget it
        self._clients = {lp: c for lp, c in self._clients.items() if not lp.is_closed()}
        if loop not in self._clients:
            self._clients[loop] = self._factory()
        return self._clients[loop]

    async def aclose(self) -> None:
        """Close the running loop's client, if it has one."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()


class ChatEndpoint(Endpoint):
    """Chat completions on ``model`` through an async SDK client.

    ``client_factory`` builds the async client, one per event loop (:class:`LoopClients`). ``to_error`` maps
    the SDK's errors; ``price`` turns usage into dollars (the core's catalogue), or None when the price is not
    known.
    """

    def __init__(self, model: str, client_factory: Callable[[], Any], *,
                 to_error: Callable[[BaseException], ProviderError], sdk_errors: tuple[type[BaseException], ...],
                 price: Callable[[Usage], float | None] | None = None, provider: str = "") -> None:
        self.model = model
        self.provider = provider
        self._clients = LoopClients(client_factory)
        self._to_error = to_error
        self._sdk_errors = sdk_errors
        self._price = price

    def __repr__(self) -> str:
        return f"<ChatEndpoint {self.model}>"

    @staticmethod
    def request_arguments(params: GenerationParams) -> dict[str, Any]:
        """The generation settings under the chat-completions names."""
        kwargs: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": params.temperature,
                                  "top_p": params.top_p}
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        return kwargs

    async def _generate(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        client = self._clients.get()
        start = time.perf_counter()
        response = await self._request(client, messages, params)
        latency = timed(start)
        usage = Usage(prompt_tokens=getattr(response.usage, "prompt_tokens", 0) or 0,
                      completion_tokens=getattr(response.usage, "completion_tokens", 0) or 0)
        choice = response.choices[0] if response.choices else None
        return Completion(
            text=(choice.message.content or "") if choice else "",
            finish_reason=str(getattr(choice, "finish_reason", None) or "unknown"),
            usage=usage, latency_s=latency, cost_usd=self._price(usage) if self._price else None,
        )

    async def _request(self, client: Any, messages: Sequence[Message], params: GenerationParams) -> Any:
        """The SDK's answer; its errors, and an answer it cannot read, leave as tuneproxy errors (raised
        outside the ``except``: the SDK's exception holds the request and its key)."""
        error: ProviderError
        try:
            response = await client.chat.completions.create(
                model=self.model, messages=[dict(m) for m in messages], **self.request_arguments(params))
        except self._sdk_errors as exc:
            error = self._to_error(exc)
        except (ValueError, AttributeError, TypeError, KeyError) as exc:  # an answer the SDK cannot parse
            error = self._unreadable(type(exc).__name__)
        else:
            if not isinstance(response, (str, bytes)):
                return response
            error = self._unreadable("text, not JSON")
        raise error

    def _unreadable(self, what: str) -> UnreadableAnswer:
        return UnreadableAnswer(f"The answer to a completion with {self.model} was not what the API sends ({what}); "
                                "try again in a few minutes.", provider=self.provider)

    async def aclose(self) -> None:
        """Close the async client of the running loop (its connections belong to that loop)."""
        await self._clients.aclose()
