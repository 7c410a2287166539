"""HTTP plumbing the SDK-backed providers share: clients on an injected transport, retries for
idempotent calls, and the mapping of SDK errors to tuneproxy's.

Nothing here imports a provider SDK; each provider passes its SDK's pieces in. The rules it enforces:

- SDK clients are built with their own retries off. An SDK retries POSTs too — job creation included,
  with no idempotency key — so a retry could pay twice. tuneproxy retries only idempotent GETs itself
  (:class:`Retrier`, tenacity), honouring ``Retry-After``.
- Every SDK error leaves as a tuneproxy error: 401/403 → :class:`AuthenticationFailed` (never showing
  the key), 404 → :class:`NotFound`, 429 → :class:`RateLimited` with the delay the service asked for,
  anything else → :class:`ProviderError` with the status code and request id. A request an offline
  replay's cassette does not hold is :class:`ReplayMismatch`, never "check the network".
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from tuneproxy.errors import (
    AuthenticationFailed,
    NotFound,
    ProviderError,
    RateLimited,
    ReplayMismatch,
    SubmissionUncertain,
    redact,
)
from tuneproxy.recording import CassetteMismatch

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
    """The delay a response asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP
    date. A value that is none of these is ignored (None), never an error."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:  # since Python 3.10 an unparseable date raises instead of returning None
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return max(parsed.timestamp() - (now if now is not None else time.time()), 0.0)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an SDK error carries, if any."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def cassette_mismatch(exc: BaseException) -> CassetteMismatch | None:
    """The replay mismatch behind an SDK error (SDKs wrap transport errors as connection errors)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, CassetteMismatch):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_transient(exc: BaseException, connection_errors: tuple[type[BaseException], ...]) -> bool:
    """Worth retrying an idempotent request: a rate limit, a 5xx, a timeout or a dropped connection
    (but never a replay mismatch: asking again cannot change the cassette)."""
    status = status_of(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    return isinstance(exc, connection_errors) and cassette_mismatch(exc) is None


class Retrier:
    """Runs idempotent calls (GETs) with tenacity: a few attempts, waiting what ``Retry-After`` says.

    ``sleep`` is injectable so tests see the waits without waiting; ``max_wait`` caps any one wait.
    """

    def __init__(self, connection_errors: tuple[type[BaseException], ...], *, attempts: int = 4,
                 max_wait: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.connection_errors = connection_errors
        self.attempts = attempts
        self.max_wait = max_wait
        self.sleep = sleep

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None))
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


def _request_id(exc: BaseException, headers_named: tuple[str, ...]) -> str | None:
    rid = getattr(exc, "request_id", None)
    if rid:
        return str(rid)
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    return next((headers[name] for name in ("x-request-id", *headers_named) if headers.get(name)), None)


def _hide(text: str, api_key: str | None) -> str:
    if api_key:
        text = text.replace(api_key, "REDACTED")
    return redact(text)


class ErrorMapper:
    """Turns one provider's SDK errors into tuneproxy errors (see the module docstring)."""

    def __init__(self, *, provider: str, display: str, env_key: str, api_key: str | None,
                 request_id_headers: tuple[str, ...] = ()) -> None:
        self.provider = provider
        self.display = display
        self.env_key = env_key
        self.api_key = api_key
        self.request_id_headers = request_id_headers

    def __call__(self, exc: BaseException, action: str) -> ProviderError:
        status = status_of(exc)
        rid = _request_id(exc, self.request_id_headers)
        where = dict(provider=self.provider, request_id=rid)
        if status in (401, 403):
            return AuthenticationFailed(
                f"{self.display} rejected the API key while trying to {action} (HTTP {status}). Check that "
                f"{self.env_key} holds a valid key for this account, then try again.", status_code=status, **where)
        message = _hide(_service_message(exc), self.api_key)
        if status == 429:
            delay = retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None))
            wait = f" It asked to wait {delay:g} s." if delay is not None else ""
            return RateLimited(f"{self.display} is rate-limiting requests to {action}: {message}.{wait}",
                               retry_after=delay, **where)
        if status == 404:
            return NotFound(f"{self.display} has no such thing while trying to {action} (HTTP 404): {message}",
                            status_code=404, raw="404", **where)
        if status is not None:
            return ProviderError(f"{self.display} refused to {action} (HTTP {status}): {message}",
                                 status_code=status, raw=str(status), **where)
        mismatch = cassette_mismatch(exc)
        if mismatch is not None:
            return ReplayMismatch(
                f"Offline replay: the request to {action} does not match the cassette (nothing was sent to "
                f"{self.display}). {mismatch} Run the exact command the cassette was recorded with, on a fresh "
                "TUNEPROXY_HOME, or unset TUNEPROXY_CASSETTE.", **where)
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return ProviderError(
            f"Could not reach {self.display} to {action}{_hide(detail, self.api_key)}. Check the network and "
            "try again.", **where)

    def uncertain(self, exc: BaseException, intent_id: str) -> SubmissionUncertain:
        """The error for a create request whose outcome is unknown: it may have created a paid job."""
        return SubmissionUncertain(
            f"The request to create the {self.display} job for intent {intent_id} may have reached the service "
            f"but no answer came back ({type(exc).__name__}). Do not resubmit: look the job up first "
            "(the provider's find_job does this), then resubmit only if it does not exist.",
            provider=self.provider, intent_id=intent_id,
        )


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
