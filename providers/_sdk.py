"""What the SDK-backed providers share: HTTP clients on an injected transport, retries for idempotent
calls, error mapping, time parsing and a chat endpoint.

Nothing here imports a provider SDK; each provider passes its SDK's pieces in. The rules it enforces:

- SDK clients are built with ``max_retries=0``. An SDK retries POSTs too — job creation included, with
  no idempotency key — so a retry could pay twice. tuneproxy retries only idempotent GETs itself
  (:class:`Retrier`, tenacity), honouring ``Retry-After``.
- Every SDK error leaves as a tuneproxy error: 401/403 → :class:`AuthenticationFailed` (never showing
  the key), anything else → :class:`ProviderError` with the status code and request id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from tuneproxy.contract import Completion, Endpoint, JobSpec, Message, Provider, Usage, timed
from tuneproxy.errors import (
    AuthenticationFailed,
    MissingCredentials,
    ProviderError,
    SubmissionUncertain,
    redact,
)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
OUTCOME_UNKNOWN = frozenset({408})  # with any 5xx: a create answered so may still have made the job


def http_clients(library: str, transport: Any, timeout: float) -> tuple[Any, Any]:
    """A sync and an async client of ``library`` ("httpx" or "httpx2") on ``transport``.

    Returns ``(None, None)`` without a transport, so the SDK builds its own default clients.
    """
    if transport is None:
        return None, None
    lib = __import__(library)
    return (lib.Client(transport=transport, timeout=timeout),
            lib.AsyncClient(transport=transport, timeout=timeout))


# --------------------------------------------------------------------------- retries


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """The delay a response asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as a date."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(parsed.timestamp() - (now if now is not None else time.time()), 0.0)


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException, connection_errors: tuple[type[BaseException], ...]) -> bool:
    """Worth retrying an idempotent request: a rate limit, a 5xx, a timeout or a dropped connection."""
    status = _status_of(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    return isinstance(exc, connection_errors)


class Retrier:
    """Runs idempotent calls (GETs) with tenacity: a few attempts, waiting what ``Retry-After`` says.

    ``sleep`` is injectable so tests see the waits without waiting; ``max_wait`` caps any one wait.
    """

    def __init__(
        self,
        connection_errors: tuple[type[BaseException], ...],
        *,
        attempts: int = 4,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connection_errors = connection_errors
        self.attempts = attempts
        self.max_wait = max_wait
        self.sleep = sleep

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        response = getattr(exc, "response", None)
        asked = retry_after_seconds(getattr(response, "headers", None))
        if asked is None:
            asked = 0.5 * 2 ** (state.attempt_number - 1)  # the SDKs' own backoff
        return min(asked, self.max_wait)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried on transient failures; the last failure is re-raised as is."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda e: is_transient(e, self.connection_errors)),
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(fn)


# --------------------------------------------------------------------------- errors


def _service_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", None) or exc)


def _request_id(exc: BaseException) -> str | None:
    rid = getattr(exc, "request_id", None)
    if rid:
        return str(rid)
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    return headers.get("x-request-id") or headers.get("x-together-request-id") or None


def map_error(
    exc: BaseException, *, provider: str, display: str, env_key: str, action: str,
    api_key: str | None = None,
) -> ProviderError:
    """The tuneproxy error for an SDK error raised while doing ``action``."""
    status = _status_of(exc)
    rid = _request_id(exc)
    if status in (401, 403):
        return AuthenticationFailed(
            f"{display} rejected the API key while trying to {action} (HTTP {status}). Check that "
            f"{env_key} holds a valid key for this account, then try again.",
            provider=provider, status_code=status, request_id=rid,
        )
    if status is not None:
        message = _hide(_service_message(exc), api_key)
        return ProviderError(
            f"{display} refused to {action} (HTTP {status}): {message}",
            provider=provider, status_code=status, raw=str(status), request_id=rid,
        )
    cause = exc.__cause__ or exc.__context__
    detail = f" ({type(cause).__name__}: {cause})" if cause else ""
    return ProviderError(
        f"Could not reach {display} to {action}{_hide(detail, api_key)}. Check the network and try again.",
        provider=provider, request_id=rid,
    )


def uncertain_submission(
    exc: BaseException, *, provider: str, display: str, intent_id: str
) -> SubmissionUncertain:
    """The error for a create request whose outcome is unknown: it may have created a paid job."""
    return SubmissionUncertain(
        f"The request to create the {display} job for intent {intent_id} may have reached the service "
        f"but no answer came back ({type(exc).__name__}). Do not resubmit: look the job up first "
        "(the provider's find_job does this), then resubmit only if it does not exist.",
        provider=provider, intent_id=intent_id,
    )


def _hide(text: str, api_key: str | None) -> str:
    if api_key:
        text = text.replace(api_key, "REDACTED")
    return redact(text)


# --------------------------------------------------------------------------- conversions


def to_datetime(value: Any) -> dt.datetime | None:
    """A timezone-aware datetime from unix seconds, an ISO string or a datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def intent_tag(intent_id: str) -> str:
    """A short, name-safe form of an intent id, carried in job names where metadata is not available."""
    return "tp" + re.sub(r"[^a-z0-9]", "", intent_id.lower())[:10]


def price_for(model: str, table: Mapping[str, float]) -> float | None:
    """The price of ``model`` from ``table``, by the longest key that prefixes the model name."""
    for key in sorted(table, key=len, reverse=True):
        if model.startswith(key) or model.split("/")[-1].startswith(key):
            return table[key]
    return None


# --------------------------------------------------------------------------- endpoint


class ChatEndpoint(Endpoint):
    """A model behind an OpenAI-style ``chat.completions.create`` of an async SDK client.

    ``client_factory`` builds the async client; one is kept per event loop, because an async HTTP
    client's connections belong to the loop that opened them (``complete`` runs a new loop each call).
    """

    def __init__(
        self,
        model: str,
        client_factory: Callable[[], Any],
        *,
        to_error: Callable[[BaseException], Exception],
        sdk_errors: tuple[type[BaseException], ...],
        price_in_out: tuple[float, float] | None = None,
    ) -> None:
        self.model = model
        self._factory = client_factory
        self._to_error = to_error
        self._sdk_errors = sdk_errors
        self._price = price_in_out
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client_for_loop(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = self._factory(), loop
        return self._client

    async def acomplete(self, messages: Sequence[Message], **params: Any) -> Completion:
        """One chat completion: the reply text, token usage, latency and (when priced) cost."""
        client = self._client_for_loop()
        start = time.perf_counter()
        try:
            response = await client.chat.completions.create(
                model=self.model, messages=[dict(m) for m in messages], **params
            )
        except self._sdk_errors as exc:
            raise self._to_error(exc) from None
        latency = timed(start)
        usage = Usage(
            prompt_tokens=getattr(response.usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(response.usage, "completion_tokens", 0) or 0,
        )
        text = (response.choices[0].message.content or "") if response.choices else ""
        return Completion(text=text, usage=usage, latency_s=latency, cost_usd=self._cost(usage))

    async def aclose(self) -> None:
        """Close the async client of the running loop (its connections belong to that loop)."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
            self._client, self._loop = None, None

    def _cost(self, usage: Usage) -> float | None:
        if self._price is None:
            return None
        price_in, price_out = self._price
        return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1_000_000


# --------------------------------------------------------------------------- provider base


class SDKProvider(Provider):
    """A provider that speaks to its service through a vendor SDK.

    Options (keyword arguments after ``api_key``/``transport``/``clock``):
    ``base_url`` (default: the SDK's, or its environment variable), ``timeout`` (seconds, default 120),
    ``retry_attempts`` (default 4) and ``retry_max_wait`` (seconds, default 60) for idempotent reads,
    ``sleep`` (the retry wait function; tests pass a recorder), ``strict_responses`` (validate every
    response against the SDK's types; for checking fixtures).
    """

    # Which SDK and HTTP library, set by each subclass: ("openai", "OpenAI", "AsyncOpenAI", "httpx2").
    SDK: tuple[str, str, str, str]
    _client: Any = None

    def _client_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the SDK client besides the HTTP client and retries."""
        raise NotImplementedError

    def _build(self, asynchronous: bool) -> Any:
        module_name, sync_name, async_name, library = self.SDK
        module = __import__(module_name)
        sync_http, async_http = http_clients(library, self.transport, float(self.options.get("timeout", 120.0)))
        cls = getattr(module, async_name if asynchronous else sync_name)
        # SDK retries off: they would retry a job-creating POST with no idempotency key
        return cls(max_retries=0, http_client=async_http if asynchronous else sync_http, **self._client_kwargs())

    @property
    def client(self) -> Any:
        """The SDK's sync client on the injected transport (built on first use)."""
        if self._client is None:
            self._client = self._build(asynchronous=False)
        return self._client

    def _async_client(self) -> Any:
        """A fresh async client (the chat endpoint makes one per event loop)."""
        return self._build(asynchronous=True)

    def _sdk_errors(self) -> tuple[type[BaseException], tuple[type[BaseException], ...]]:
        """(the SDK's root API error, its connection/timeout errors)."""
        raise NotImplementedError

    @property
    def _retrier(self) -> Retrier:
        _, connection = self._sdk_errors()
        return Retrier(
            connection,
            attempts=int(self.options.get("retry_attempts", 4)),
            max_wait=float(self.options.get("retry_max_wait", 60.0)),
            sleep=self.options.get("sleep", time.sleep),
        )

    def _require_key(self) -> str:
        if not self.api_key:
            raise MissingCredentials(self.capabilities.display_name, self.capabilities.env_key or "")
        return self.api_key

    def _error(self, exc: BaseException, action: str) -> ProviderError:
        return map_error(
            exc, provider=self.name, display=self.capabilities.display_name,
            env_key=self.capabilities.env_key or "", action=action, api_key=self.api_key,
        )

    def _read(self, action: str, fn: Callable[[], T]) -> T:
        """An idempotent call (GET): retried on transient failures, errors mapped."""
        api_error, _ = self._sdk_errors()
        try:
            return self._retrier.call(fn)
        except api_error as exc:
            raise self._error(exc, action) from None

    def _write(self, action: str, fn: Callable[[], T]) -> T:
        """A call that changes state (POST): sent once, never retried here, errors mapped."""
        api_error, _ = self._sdk_errors()
        try:
            return fn()
        except api_error as exc:
            raise self._error(exc, action) from None

    def _create(self, spec: JobSpec, fn: Callable[[], T]) -> T:
        """The paid create: sent once; a lost answer becomes :class:`SubmissionUncertain`."""
        api_error, connection = self._sdk_errors()
        try:
            return fn()
        except connection as exc:
            raise uncertain_submission(exc, provider=self.name, display=self.capabilities.display_name,
                                       intent_id=spec.intent_id) from None
        except api_error as exc:
            if _status_of(exc) in OUTCOME_UNKNOWN or (_status_of(exc) or 0) >= 500:
                # a gateway timeout or server error may come after the job was made: treat as lost
                raise uncertain_submission(exc, provider=self.name, display=self.capabilities.display_name,
                                           intent_id=spec.intent_id) from None
            raise self._error(exc, f"create the job for intent {spec.intent_id}") from None
