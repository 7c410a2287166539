"""The error hierarchy. Every message says what went wrong and what to do next.

One root, :class:`TuneproxyError`, so callers (and the CLI) can catch everything tuneproxy raises in one
place. Messages never contain secrets: :func:`redact` is applied to anything that came from a service.
"""

from __future__ import annotations

import os
import re
from typing import Any

# The environment variables that hold provider keys: their values are removed wherever they appear,
# whatever shape the key has (a Together key can be plain hex, which no pattern would catch). Each
# provider declares its own variable and key shape (``Capabilities.credentials``); defining a Provider
# class registers them here (``Provider.__init_subclass__``), so this module names no service.
KEY_VARIABLES: set[str] = set()
# Query parameters of presigned URLs that grant access (S3/GCS signatures, credentials, tokens).
_SIGNED_QUERY = re.compile(r"(?i)([?&](?:[\w.-]*(?:signature|credential|token|key|sig))=)[^&#\s\"']+")

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9_\-\.=]{8,}"),
    re.compile(r"(?i)(api[_-]?key[\"'=:\s]+)[A-Za-z0-9_\-\.]{8,}"),
]


# Keys handed to providers directly (not through the environment): scrubbed by value too.
_SECRET_VALUES: set[str] = set()


def register_secret_value(value: str) -> None:
    """Scrub this exact key from every message from now on (a key given as ``api_key=``)."""
    if len(value) >= 8:
        _SECRET_VALUES.add(value)


def register_secret(env_var: str, key_pattern: str | None = None) -> None:
    """Scrub the value of ``env_var``, and anything shaped like ``key_pattern``, from every message."""
    KEY_VARIABLES.add(env_var)
    if key_pattern and all(p.pattern != key_pattern for p in _SECRET_PATTERNS):
        _SECRET_PATTERNS.insert(0, re.compile(key_pattern))


def redact(text: str) -> str:
    """Replace API keys (by shape, and the environment's own key values), bearer tokens and the
    signatures of presigned URLs with ``REDACTED``."""
    values = {os.environ.get(variable) or "" for variable in KEY_VARIABLES} | _SECRET_VALUES
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 8:
            text = text.replace(value, "REDACTED")
    for pattern in _SECRET_PATTERNS:
        replacement = (lambda m: m.group(1) + "REDACTED") if pattern.groups else "REDACTED"
        text = pattern.sub(replacement, text)
    return _SIGNED_QUERY.sub(lambda m: m.group(1) + "REDACTED", text)


class TuneproxyError(Exception):
    """Root of every error tuneproxy raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self)


class DatasetError(TuneproxyError):
    """The data cannot be read or failed validation."""

    def __init__(self, message: str, findings: list | None = None) -> None:
        super().__init__(message)
        self.findings = findings or []


class DataFileUnreadable(DatasetError):
    """The data file is missing, a directory, or cannot be opened: a usage error, not bad data."""

    exit_code = 2


class ConfigError(TuneproxyError):
    """A setting, argument or hyperparameter is wrong or missing."""

    exit_code = 2


class MissingCredentials(ConfigError):
    """The environment variable holding a provider's key is not set."""

    def __init__(self, provider: str, env_var: str) -> None:
        super().__init__(
            f"No API key for {provider}: set the environment variable {env_var} "
            f"(for example `export {env_var}=...`) and try again."
        )
        self.provider = provider
        self.env_var = env_var


class UnsupportedParameter(ConfigError):
    """A portable hyperparameter the chosen provider cannot honour."""


class LifecycleNotBuilt(ConfigError):
    """Submitting to this service is not built yet in this version of tuneproxy."""


class BackendNotInstalled(ConfigError):
    """The backend needs an optional extra that is not installed."""


def config_error_from(exc: Any, what: str, hint: str = "") -> ConfigError:
    """One :class:`ConfigError` for a pydantic ``ValidationError``: every problem, by field name."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
    return ConfigError(f"{what}: {problems}.{(' ' + hint) if hint else ''}")


class ProviderError(TuneproxyError):
    """A service refused or failed a request, or a job ended in failure.

    Carries the provider name, the HTTP status (if any), the service's own code or raw job status, and
    the request id, so a support ticket can quote them.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        raw: str | None = None,
        request_id: str | None = None,
    ) -> None:
        parts = [message]
        if request_id:
            parts.append(f"(request id {request_id})")
        super().__init__(" ".join(parts))
        self.provider = provider
        self.status_code = status_code
        self.raw = raw
        self.request_id = request_id


class AuthenticationFailed(ProviderError):
    """The service rejected the API key (HTTP 401/403)."""


class RateLimited(ProviderError):
    """The service asked us to slow down (HTTP 429); ``retry_after`` is the delay it asked for, if any."""

    def __init__(self, message: str, *, provider: str, retry_after: float | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message, provider=provider, status_code=429, raw="429", request_id=request_id)
        self.retry_after = retry_after


class UnreadableAnswer(ProviderError):
    """The service answered with something that is not what its API sends (an HTML page, cut-off JSON)."""


class ServiceUnreachable(ProviderError):
    """The request never got an answer (a dropped connection, a timeout)."""


class NotFound(ProviderError):
    """The service has no such job, file, model or deployment (HTTP 404)."""


class ReplayMismatch(ProviderError):
    """A replayed run sent a request its cassette does not hold (offline replay, not the network)."""


class SubmissionUncertain(ProviderError):
    """A create request may have made a (paid) job but no answer came back: find it before resubmitting."""

    def __init__(self, message: str, *, provider: str, intent_id: str) -> None:
        super().__init__(message, provider=provider)
        self.intent_id = intent_id


class JobFailed(ProviderError):
    """A fine-tuning job ended in ``failed``; the message is the service's own."""


class BudgetExceeded(TuneproxyError):
    """The cost estimate is above the budget the user set."""


class NotConfirmed(TuneproxyError):
    """The user declined the estimate when asked to confirm it: nothing was uploaded or paid."""


class ProviderSunset(ProviderError):
    """The provider no longer accepts new jobs of this kind."""


class LedgerUnusable(ConfigError):
    """The ledger file cannot be used as it is (damaged, someone else's database, read-only, too new)."""


class JobNotFound(TuneproxyError):
    """No job with that id in the ledger."""

    exit_code = 2
