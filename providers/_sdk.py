"""The base of the providers that speak to their service through a vendor SDK.

:class:`SDKProvider` owns the SDK clients (built on the injected transport, the SDK's own retries off),
the one way every call goes out (:meth:`SDKProvider._call`: reads retried, writes sent once, errors
mapped) and the paid create (a lost answer becomes :class:`SubmissionUncertain`, to be reconciled, never
resubmitted). A provider whose SDK is not built like the Stainless ones (``cls(api_key=..., http_client=...,
max_retries=0)``) overrides :meth:`SDKProvider.make_client`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import httpx
import httpx2
from pydantic import Field

from tuneproxy.contract import GenerationParams, JobSpec, Provider, ProviderOptions, Quantity, Usage
from tuneproxy.errors import (
    MissingCredentials,
    ProviderError,
    ServiceUnreachable,
    TuneproxyError,
    UnreadableAnswer,
    redact,
)
from tuneproxy.recording import CassetteMismatch

from ._chat import ChatEndpoint
from ._http import OUTCOME_UNKNOWN, ErrorMapper, Retrier, http_clients, status_of

T = TypeVar("T")

# Transport errors of both HTTP libraries: an SDK lets them through where it talks HTTP outside its client.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)

__all__ = ["SDKOptions", "SDKProvider", "ChatEndpoint", "GenerationParams"]


class SDKOptions(ProviderOptions):
    """Settings every SDK-backed provider takes."""

    base_url: str | None = Field(None, description="The API's base URL (default: the SDK's, or its environment "
                                                   "variable).")
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one HTTP response.")
    retry_attempts: int = Field(4, ge=1, le=10, description="Tries of an idempotent read (GET) before giving up.")
    retry_max_wait: float = Field(60.0, ge=0, description="Longest wait between two tries, in seconds.")
    strict_responses: bool = Field(False, description="Validate every response against the SDK's types "
                                                      "(for checking recorded fixtures).")


class SDKProvider(Provider):
    """A provider that speaks to its service through a vendor SDK (see the module docstring)."""

    Options: ClassVar[type[ProviderOptions]] = SDKOptions
    # Which SDK and HTTP library: ("openai", "OpenAI", "AsyncOpenAI", "httpx2").
    SDK: ClassVar[tuple[str, str, str, str]]
    # Response headers besides x-request-id that carry the service's request id.
    REQUEST_ID_HEADERS: ClassVar[tuple[str, ...]] = ()
    _client: Any = None

    @property
    def settings(self) -> SDKOptions:
        """The options, typed as :class:`SDKOptions`."""
        assert isinstance(self.options, SDKOptions)
        return self.options

    # ------------------------------------------------------------------ clients

    def client_arguments(self) -> dict[str, Any]:
        """Constructor arguments of the SDK client besides the HTTP client and retries."""
        return {"api_key": self._require_key(), "base_url": self.settings.base_url,
                "_strict_response_validation": self.settings.strict_responses}

    def make_client(self, asynchronous: bool) -> Any:
        """The SDK's sync (or async) client on the injected transport, with the SDK's retries off (they
        would retry a job-creating POST with no idempotency key). Override for a non-Stainless SDK."""
        module_name, sync_name, async_name, library = self.SDK
        module = __import__(module_name)
        sync_http, async_http = http_clients(library, self.transport, self.settings.timeout)
        cls = getattr(module, async_name if asynchronous else sync_name)
        return cls(max_retries=0, http_client=async_http if asynchronous else sync_http, **self.client_arguments())

    @property
    def client(self) -> Any:
        """The SDK's sync client (built on first use)."""
        if self._client is None:
            self._client = self.make_client(asynchronous=False)
        return self._client

    def sdk_errors(self) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
        """(the SDK's root API error, its connection/timeout errors)."""
        raise NotImplementedError

    def _require_key(self) -> str:
        if not self.api_key:
            caps = self.capabilities
            raise MissingCredentials(caps.display_name, caps.env_key or "the provider's key variable")
        return self.api_key

    # ------------------------------------------------------------------ calls

    @property
    def error(self) -> ErrorMapper:
        """Maps this provider's SDK errors to tuneproxy's."""
        caps = self.capabilities
        return ErrorMapper(provider=self.name, display=caps.display_name, env_key=caps.env_key or "",
                           api_key=self.api_key, request_id_headers=self.REQUEST_ID_HEADERS)

    def _guarded(self, action: str, fn: Callable[[], T]) -> Callable[[], T]:
        """``fn`` with what an SDK lets through turned into tuneproxy errors: an answer it cannot read (an
        HTML page, cut-off JSON: the SDK hands back text or fails parsing) → :class:`UnreadableAnswer`; a
        transport error outside its own error types (Together's presigned-URL upload) →
        :class:`ServiceUnreachable`. Both are transient for a read and "outcome unknown" for a create."""
        api_error, _ = self.sdk_errors()
        display = self.capabilities.display_name

        def call() -> T:
            error: ProviderError
            try:
                result = fn()
            except (api_error, TuneproxyError):
                raise
            except CassetteMismatch as exc:  # a replay's transport error the SDK let through
                error = self.error(exc, action)
            except TRANSPORT_ERRORS as exc:
                error = ServiceUnreachable(f"Could not reach {display} to {action} ({type(exc).__name__}: "
                                           f"{redact(str(exc))}). Check the network and try again.",
                                           provider=self.name)
            except (ValueError, AttributeError, TypeError, KeyError, AssertionError) as exc:
                error = self._unreadable(action, f"{type(exc).__name__}: {exc}")
            else:
                if not isinstance(result, (str, bytes)):
                    return result
                error = self._unreadable(action, f"text instead of JSON: {str(result)[:80]!r}")
            raise error  # outside the except: no link to the SDK's exception, which holds the request

        return call

    def _unreadable(self, action: str, what: str) -> UnreadableAnswer:
        return UnreadableAnswer(f"{self.capabilities.display_name} answered the request to {action} with something "
                                f"its API does not send ({redact(what)}); it may be having trouble. Try again "
                                "in a few minutes.", provider=self.name)

    def _call(self, action: str, fn: Callable[[], T], *, retry: bool) -> T:
        """One call to the service. ``retry``: an idempotent read, retried on transient failures (an
        unreadable answer included); else sent once. Every SDK error leaves mapped."""
        api_error, connection = self.sdk_errors()
        guarded = self._guarded(action, fn)
        try:
            if not retry:
                return guarded()
            return Retrier((*connection, UnreadableAnswer, ServiceUnreachable), attempts=self.settings.retry_attempts,
                           max_wait=self.settings.retry_max_wait, sleep=self.sleep).call(guarded)
        except api_error as exc:
            mapped = self.error(exc, action)
        raise mapped  # outside the except: no link to the SDK's exception, which holds the request

    def _create(self, spec: JobSpec, fn: Callable[[], T]) -> T:
        """The paid create: sent once; a lost answer becomes :class:`SubmissionUncertain`."""
        api_error, connection = self.sdk_errors()
        action = f"create the job for intent {spec.intent_id}"
        mapped: ProviderError
        try:
            return self._guarded(action, fn)()
        except (UnreadableAnswer, ServiceUnreachable) as exc:  # it may have made the job: find it first
            mapped = self.error.uncertain(exc, spec.intent_id)
        except connection as exc:
            mapped = self.error(exc, action)
            if mapped.__class__ is ProviderError:  # no answer (a replay mismatch is not a lost answer)
                mapped = self.error.uncertain(exc, spec.intent_id)
        except api_error as exc:
            status = status_of(exc) or 0
            # a gateway timeout or server error may come after the job was made: treat as lost
            lost = status in OUTCOME_UNKNOWN or status >= 500
            mapped = self.error.uncertain(exc, spec.intent_id) if lost else self.error(exc, action)
        raise mapped  # outside the except: no link to the SDK's exception, which holds the request

    # ------------------------------------------------------------------ inference

    def chat_endpoint(self, model: str, errors: Sequence[type[BaseException]] = (), *,
                      priced: bool = True) -> ChatEndpoint:
        """A chat-completions endpoint on ``model`` through a fresh async client per event loop; each
        completion is priced from the catalogue's inference prices for ``model`` (``priced=False``: the
        catalogue's rows do not apply to this model, so the cost stays unknown)."""
        api_error, _ = self.sdk_errors()
        endpoint = ChatEndpoint(model, lambda: self.make_client(asynchronous=True),
                                to_error=lambda exc: self.error(exc, f"generate with {model}"),
                                sdk_errors=(api_error, *errors),
                                price=self._usage_price(model) if priced else None, provider=self.name)
        # rate-limit waits go through the provider's one sleep, off the event loop
        endpoint.sleep = lambda seconds: asyncio.to_thread(self.sleep, seconds)  # type: ignore[method-assign]
        return endpoint

    def _usage_price(self, model: str) -> Callable[[Usage], float | None]:
        def price(usage: Usage) -> float | None:
            from tuneproxy.prices import price_quantities

            return price_quantities(self.name, model, [
                Quantity(kind="input_tokens", amount=usage.prompt_tokens),
                Quantity(kind="output_tokens", amount=usage.completion_tokens),
            ]).usd

        return price
