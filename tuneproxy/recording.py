"""Recorded HTTP exchanges (cassettes) and the transports that replay, record and break them.

Every provider SDK takes an injected HTTP client, and every HTTP client takes a *transport*: one object
with ``handle_request`` (sync) and ``handle_async_request`` (async). That is the only seam tuneproxy uses
— nothing is monkeypatched. The transports here work with both ``httpx`` (together, fireworks,
replicate) and ``httpx2`` (openai 3.x): they subclass both libraries' base classes and answer each
request with a response from the request's own library.

- :class:`ReplayTransport` serves a cassette's interactions in order and fails loudly, naming the
  expected and the actual request, when the client asks for something else.
- :class:`RecordingTransport` forwards to a real transport and writes what passed, with secrets redacted.
- :class:`LostResponseTransport` forwards a request and then raises a read timeout, as when the
  service acted on a request but its answer never arrived.

Set ``TUNEPROXY_RECORD=1`` (with real keys) and :func:`transport_for` records instead of replaying.
The one place a run chooses between the network, a replay and a recording is :func:`transport_from_env`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import os
import re
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import httpx
import httpx2
from pydantic import BaseModel, ConfigDict, Field

from tuneproxy.errors import redact

CASSETTE_ROOT = Path(__file__).resolve().parent.parent / "fixtures" / "cassettes"
"""Where provider cassettes live: ``<root>/<provider>/<scenario>.json`` (override: TUNEPROXY_CASSETTES)."""

RECORD_ENV = "TUNEPROXY_RECORD"

# Request headers worth keeping: they say who asked and in what form. Everything else is SDK noise
# (user agent, platform, retry counters) that would make cassettes churn on every SDK release.
_KEPT_REQUEST_HEADERS = frozenset({"authorization", "content-type", "accept", "idempotency-key"})
# ...and any header that says which organization or project a request bills to (services name it their own way)
_KEPT_REQUEST_HEADER_ENDINGS = ("-organization", "-project")
# Response headers that describe the transfer, not the answer; the body is stored decoded.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-encoding", "content-length", "transfer-encoding", "connection", "keep-alive", "set-cookie"}
)
_SECRET_HEADER = re.compile(r"(?i)(authorization|api[-_]?key|token|secret|cookie)")


# --------------------------------------------------------------------------- cassette schema


class JsonBody(BaseModel):
    """A JSON body, stored parsed so a reader sees the structure."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_: Any = Field(alias="json")


class TextBody(BaseModel):
    """A body that is text but not JSON."""

    model_config = ConfigDict(extra="forbid")

    text: str


class FilePart(BaseModel):
    """One file of a multipart form, summarised: its bytes are the user's data, not the protocol."""

    model_config = ConfigDict(extra="forbid")

    name: str
    filename: str
    content_type: str | None = None
    bytes: int
    sha256: str


class MultipartBody(BaseModel):
    """A multipart form: its plain fields verbatim and a summary of each file."""

    model_config = ConfigDict(extra="forbid")

    fields: dict[str, str] = Field(default_factory=dict)
    files: list[FilePart] = Field(default_factory=list)


class MultipartWrapper(BaseModel):
    """Wrapper so a cassette reads ``"body": {"multipart": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    multipart: MultipartBody


class BinaryBody(BaseModel):
    """Raw bytes (an uploaded file), summarised by size and digest."""

    model_config = ConfigDict(extra="forbid")

    bytes: int
    sha256: str


Body = JsonBody | TextBody | MultipartWrapper | BinaryBody


class RecordedRequest(BaseModel):
    """What the client sent."""

    model_config = ConfigDict(extra="forbid")

    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: Body | None = None

    def describe(self) -> str:
        """One line a person can compare with another request."""
        text = f"{self.method} {self.url}"
        if isinstance(self.body, JsonBody):
            text += " " + json.dumps(self.body.json_, sort_keys=True)
        return text


class RecordedResponse(BaseModel):
    """What the service answered."""

    model_config = ConfigDict(extra="forbid")

    status: int
    headers: dict[str, str] = Field(default_factory=dict)
    body: Body | None = None

    def content(self) -> bytes:
        """The body as bytes on the wire."""
        if isinstance(self.body, JsonBody):
            return json.dumps(self.body.json_).encode()
        if isinstance(self.body, TextBody):
            return self.body.text.encode()
        return b""


class Interaction(BaseModel):
    """One request and the response it got."""

    model_config = ConfigDict(extra="forbid")

    request: RecordedRequest
    response: RecordedResponse


class Cassette(BaseModel):
    """One scenario: an ordered list of HTTP interactions, and where they came from."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    provider: str
    scenario: str
    source: Literal["recorded", "authored from API reference"]
    description: str
    recorded_at: str | None = None
    interactions: list[Interaction] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path | str) -> Cassette:
        """Read and validate a cassette file."""
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: Path | str) -> None:
        """Write the cassette as indented JSON (diffable, readable)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.model_dump(by_alias=True, exclude_none=True), indent=2, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")


def cassette_path(provider: str, scenario: str) -> Path:
    """Where the cassette for ``provider``/``scenario`` lives."""
    root = Path(os.environ.get("TUNEPROXY_CASSETTES") or CASSETTE_ROOT)
    return root / provider / f"{scenario}.json"


class CassetteMismatch(AssertionError, httpx2.TransportError, httpx.TransportError):
    """The client sent a request the cassette does not expect (or left some unplayed).

    An assertion for tests, and a transport error of both HTTP libraries, so every SDK wraps it the way it
    wraps a failed request (openai only wraps httpx2's own errors) and tuneproxy maps it in one place."""


# --------------------------------------------------------------------------- capturing requests


def library_of(message: Any) -> ModuleType:
    """``httpx`` or ``httpx2``: whichever library built this request or response."""
    return importlib.import_module(type(message).__module__.partition(".")[0])


def _redact_headers(headers: Any, keep: frozenset[str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if keep is not None and lower not in keep and not lower.endswith(_KEPT_REQUEST_HEADER_ENDINGS):
            continue
        if keep is None and lower in _DROPPED_RESPONSE_HEADERS:
            continue
        if _SECRET_HEADER.search(lower) and "tokens" not in lower:
            scheme = value.split(" ", 1)[0] if " " in value else ""
            value = f"{scheme} REDACTED".strip()
        out[lower] = redact(value)
    return out


def _multipart(content: bytes, content_type: str) -> MultipartBody:
    """Parse a multipart/form-data body into fields and file summaries."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    body = MultipartBody()
    if not match:
        return body
    for part in content.split(b"--" + match.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        # Each part is CRLF, headers, CRLF CRLF, data, CRLF: strip exactly those, never the data's own.
        part = part.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, _, data = part.partition(b"\r\n\r\n")
        head_text = head.decode("utf-8", "replace")
        name = re.search(r'name="([^"]*)"', head_text)
        filename = re.search(r'filename="([^"]*)"', head_text)
        ctype = re.search(r"(?im)^content-type:\s*(.+)$", head_text)
        if filename:
            body.files.append(FilePart(
                name=name.group(1) if name else "", filename=filename.group(1),
                content_type=ctype.group(1).strip() if ctype else None,
                bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            ))
        elif name:
            body.fields[name.group(1)] = redact(data.decode("utf-8", "replace"))
    return body


def _body(content: bytes, content_type: str, *, binary_unless_typed: bool) -> Body | None:
    """Summarise a body: JSON parsed, text verbatim, multipart and raw bytes summarised."""
    if not content:
        return None
    if "multipart/form-data" in content_type:
        return MultipartWrapper(multipart=_multipart(content, content_type))
    if "json" in content_type or (not content_type and content[:1] in (b"{", b"[")):
        try:
            return JsonBody(json=json.loads(redact(content.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    if binary_unless_typed and ("octet-stream" in content_type or not content_type):
        return BinaryBody(bytes=len(content), sha256=hashlib.sha256(content).hexdigest())
    try:
        return TextBody(text=redact(content.decode("utf-8")))
    except UnicodeDecodeError:
        return BinaryBody(bytes=len(content), sha256=hashlib.sha256(content).hexdigest())


def capture_request(request: Any) -> RecordedRequest:
    """A redacted record of an httpx/httpx2 request (its body must already be read)."""
    return RecordedRequest(
        method=request.method,
        url=redact(str(request.url)),
        headers=_redact_headers(request.headers, _KEPT_REQUEST_HEADERS),
        body=_body(request.content, request.headers.get("content-type", ""), binary_unless_typed=True),
    )


def capture_response(response: Any) -> RecordedResponse:
    """A redacted record of an httpx/httpx2 response (its body must already be read)."""
    return RecordedResponse(
        status=response.status_code,
        headers=_redact_headers(response.headers),
        body=_body(response.content, response.headers.get("content-type", ""), binary_unless_typed=False),
    )


def _url_key(url: str) -> tuple[str, str, str, list[tuple[str, str]]]:
    parts = urlsplit(redact(url))  # a cassette holds presigned URLs with their signatures redacted
    return parts.scheme, parts.netloc, parts.path, sorted(parse_qsl(parts.query, keep_blank_values=True))


def mismatch(expected: RecordedRequest, actual: RecordedRequest) -> str | None:
    """Why ``actual`` does not match ``expected`` (method, URL with query, JSON body), or None."""
    if expected.method.upper() != actual.method.upper():
        return "method differs"
    if _url_key(expected.url) != _url_key(actual.url):
        return "URL differs"
    if isinstance(expected.body, JsonBody):
        if not isinstance(actual.body, JsonBody):
            return "expected a JSON body"
        if expected.body.json_ != actual.body.json_:
            return "JSON body differs"
    return None


# --------------------------------------------------------------------------- transports


class _DualTransport(httpx.BaseTransport, httpx.AsyncBaseTransport, httpx2.BaseTransport,
                     httpx2.AsyncBaseTransport):
    """Base for transports that serve httpx and httpx2 clients, sync and async, from one object.

    Subclasses implement :meth:`_exchange` (sync) and may override :meth:`_aexchange`. Every
    request seen is appended to :attr:`log`, redacted, in order.
    """

    def __init__(self) -> None:
        self.log: list[RecordedRequest] = []
        self._lock = threading.Lock()

    def handle_request(self, request: Any) -> Any:
        """Serve one request from a sync client."""
        request.read()
        return self._exchange(request)

    async def handle_async_request(self, request: Any) -> Any:
        """Serve one request from an async client."""
        await request.aread()
        return await self._aexchange(request)

    def _exchange(self, request: Any) -> Any:
        raise NotImplementedError

    async def _aexchange(self, request: Any) -> Any:
        return self._exchange(request)

    def requests(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """The logged requests, optionally only those with this method and URL path."""
        return [
            r for r in self.log
            if (method is None or r.method == method) and (path is None or urlsplit(r.url).path == path)
        ]


class ReplayTransport(_DualTransport):
    """Answers requests from a cassette, in order; a request that does not match fails loudly.

    Mismatches raise :class:`CassetteMismatch` at once and are kept, so :meth:`assert_all_played` still
    reports them if an SDK wrapped the error in its own connection error.
    """

    def __init__(self, cassette: Cassette | Path | str, *, name: str | None = None) -> None:
        super().__init__()
        if not isinstance(cassette, Cassette):
            name = name or str(cassette)
            cassette = Cassette.load(cassette)
        self.cassette = cassette
        self.name = name or f"{cassette.provider}/{cassette.scenario}"
        self.position = 0
        self.failures: list[str] = []

    def next_interaction(self, actual: RecordedRequest) -> Interaction:
        """Take the next interaction, checking ``actual`` against its request."""
        with self._lock:
            self.log.append(actual)
            interactions = self.cassette.interactions
            if self.position >= len(interactions):
                self._fail(f"Cassette {self.name} has no interaction left for request "
                           f"#{len(self.log)}: {actual.describe()}")
            expected = interactions[self.position]
            why = mismatch(expected.request, actual)
            if why:
                self._fail(f"Cassette {self.name}, interaction #{self.position + 1}: {why}.\n"
                           f"  expected: {expected.request.describe()}\n  actual:   {actual.describe()}")
            self.position += 1
            return expected

    def _fail(self, message: str) -> None:
        self.failures.append(message)
        raise CassetteMismatch(message)

    def _exchange(self, request: Any) -> Any:
        interaction = self.next_interaction(capture_request(request))
        return build_response(request, interaction.response)

    @property
    def remaining(self) -> int:
        """Interactions not yet served."""
        return len(self.cassette.interactions) - self.position

    def assert_all_played(self) -> None:
        """Raise :class:`CassetteMismatch` if any request mismatched or any interaction went unused."""
        if self.failures:
            raise CassetteMismatch("\n".join(self.failures))
        if self.remaining:
            left = self.cassette.interactions[self.position:]
            raise CassetteMismatch(
                f"Cassette {self.name}: {self.remaining} interaction(s) never requested, first: "
                f"{left[0].request.describe()}"
            )


def build_response(request: Any, recorded: RecordedResponse) -> Any:
    """A response of the request's own library (httpx or httpx2) carrying ``recorded``."""
    lib = library_of(request)
    return lib.Response(recorded.status, headers=recorded.headers, content=recorded.content(),
                        request=request)


class RecordingTransport(_DualTransport):
    """Forwards every request to a real transport and writes the exchange to a cassette, redacted.

    Without ``inner``/``async_inner`` it opens a real ``HTTPTransport``/``AsyncHTTPTransport`` of the
    request's own library on first use. The cassette is rewritten after each interaction, so an
    interrupted run still leaves what it saw.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        provider: str,
        scenario: str,
        description: str,
        inner: Any = None,
        async_inner: Any = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.cassette = Cassette(
            provider=provider, scenario=scenario, source="recorded", description=description,
            recorded_at=dt.datetime.now(dt.timezone.utc).date().isoformat(),
        )
        self.inner = inner
        self.async_inner = async_inner

    def _exchange(self, request: Any) -> Any:
        if self.inner is None:
            self.inner = library_of(request).HTTPTransport()
        response = self.inner.handle_request(request)
        response.read()
        return self._keep(request, response)

    async def _aexchange(self, request: Any) -> Any:
        if self.async_inner is None:
            self.async_inner = library_of(request).AsyncHTTPTransport()
        response = await self.async_inner.handle_async_request(request)
        await response.aread()
        return self._keep(request, response)

    def _keep(self, request: Any, response: Any) -> Any:
        recorded = capture_request(request)
        with self._lock:
            self.log.append(recorded)
            interaction = Interaction(request=recorded, response=capture_response(response))
            self.cassette.interactions.append(interaction)
            self.save()
        # Hand back a fresh response: the body is now decoded, so transfer headers no longer apply.
        return build_response(request, capture_response(response)) if _is_json_or_text(response) else response

    def save(self) -> None:
        """Write the cassette as it stands."""
        self.cassette.save(self.path)

    def close(self) -> None:
        """Close the real transport (sync side)."""
        if self.inner is not None:
            self.inner.close()

    async def aclose(self) -> None:
        """Close the real transport (async side)."""
        if self.async_inner is not None:
            await self.async_inner.aclose()


def _is_json_or_text(response: Any) -> bool:
    ctype = response.headers.get("content-type", "")
    return "json" in ctype or ctype.startswith("text/")


class LostResponseTransport(_DualTransport):
    """Fault injection: the matching request reaches ``inner``, then its response is lost.

    Raises the library's ``ReadTimeout`` — what a client sees when the service acted on a request but
    the answer never came back. ``times`` requests are lost; later ones pass through.
    """

    def __init__(self, inner: Any, *, method: str, path: str, times: int = 1) -> None:
        super().__init__()
        self.inner = inner
        self.method = method
        self.path = path
        self.times = times

    def _should_lose(self, request: Any) -> bool:
        with self._lock:
            hit = request.method == self.method and request.url.path == self.path and self.times > 0
            if hit:
                self.times -= 1
            return hit

    def _exchange(self, request: Any) -> Any:
        with self._lock:
            self.log.append(capture_request(request))
        response = self.inner.handle_request(request)
        return self._lose(request, response)

    async def _aexchange(self, request: Any) -> Any:
        with self._lock:
            self.log.append(capture_request(request))
        response = await self.inner.handle_async_request(request)
        return self._lose(request, response)

    def _lose(self, request: Any, response: Any) -> Any:
        if self._should_lose(request):
            response.close()
            raise library_of(request).ReadTimeout("injected: the response was lost", request=request)
        return response

    def assert_all_played(self) -> None:
        """Delegate to the wrapped replay transport."""
        self.inner.assert_all_played()


def transport_for(
    provider: str, scenario: str, *, description: str = "", record: bool | None = None
) -> ReplayTransport | RecordingTransport:
    """The transport for one provider scenario: replay normally, record when ``TUNEPROXY_RECORD=1``.

    Recording talks to the real service with whatever keys the environment holds and overwrites the
    cassette; it is how cassettes are refreshed by hand, never in CI.
    """
    path = cassette_path(provider, scenario)
    if record is None:
        record = recording_requested()
    if record:
        return RecordingTransport(path, provider=provider, scenario=scenario,
                                  description=description or f"{provider} {scenario}, recorded")
    return ReplayTransport(path, name=f"{provider}/{scenario}")



CASSETTE_ENV = "TUNEPROXY_CASSETTE"


def recording_requested() -> bool:
    """Whether this run records cassettes against the real services (``TUNEPROXY_RECORD=1``): the one
    place the record-or-replay choice is read."""
    return os.environ.get(RECORD_ENV) == "1"


def transport_from_env(provider: str) -> ReplayTransport | RecordingTransport | None:
    """The transport a run's environment asks for: with ``TUNEPROXY_CASSETTE=path``, replay that cassette
    (or, with ``TUNEPROXY_RECORD=1`` too, record it); otherwise None (the SDK's own network transport)."""
    path = os.environ.get(CASSETTE_ENV)
    if not path:
        return None
    if recording_requested():
        return RecordingTransport(path, provider=provider, scenario=Path(path).stem,
                                  description=f"{provider} {Path(path).stem}, recorded through the CLI")
    return ReplayTransport(path)
