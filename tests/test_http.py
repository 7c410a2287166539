"""The HTTP plumbing the SDK-backed providers share (providers/_http.py): Retry-After, the retries of
idempotent reads, and how SDK errors become tuneproxy's — through each real SDK where it matters."""

from __future__ import annotations

import datetime as dt
import email.utils
import importlib
from types import SimpleNamespace
from typing import Any

import httpx
import httpx2
import pytest

from tests.contract.cases import CASES, PROMPT, ProviderCase, training_file
from tuneproxy.errors import (
    AuthenticationFailed,
    NotFound,
    ProviderError,
    RateLimited,
    ReplayMismatch,
    ServiceUnreachable,
    SubmissionUncertain,
)
from tuneproxy.providers._http import ErrorMapper, Retrier, retry_after_seconds
from tuneproxy.recording import Interaction, JsonBody, RecordedRequest, RecordedResponse

NOW = 1_800_000_000.0


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> ProviderCase:
    return request.param


# --------------------------------------------------------------------------- Retry-After


def http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(dt.datetime.fromtimestamp(NOW + seconds_from_now, dt.timezone.utc),
                                       usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": http_date(30)}, 30.0),
        ({"retry-after": http_date(-30)}, 0.0),  # a date already past: go now
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the finer one wins
        ({"retry-after-ms": "later", "retry-after": "9"}, 9.0),  # a bad one is skipped
        ({"retry-after": "soon"}, None),  # neither seconds nor a date: ignored, never an error (review §5.5)
        ({"retry-after": "Mon, 99 Foo 2026 25:61:61 GMT"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
        (None, None),
    ],
    ids=repr,
)
def test_retry_after_seconds(headers: dict[str, str] | None, expected: float | None) -> None:
    assert retry_after_seconds(headers, now=NOW) == expected


def test_retry_after_is_read_from_response_headers_whatever_their_case() -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert retry_after_seconds(httpx2.Headers({"Retry-After-Ms": "250"})) == 0.25


def test_an_http_date_is_counted_from_the_current_time() -> None:
    later = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60), usegmt=True)
    assert 55 <= (retry_after_seconds({"retry-after": later}) or 0) <= 60


# --------------------------------------------------------------------------- Retrier


class StatusError(Exception):
    """Stands in for an SDK's status error: a status code and a response with headers."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.response = SimpleNamespace(headers=headers or {})


class Dropped(Exception):
    """Stands in for an SDK's connection error."""


def failing(*errors: Exception) -> Any:
    """A call that raises ``errors`` in turn, then answers "ok"."""
    left = list(errors)

    def call() -> str:
        if left:
            raise left.pop(0)
        return "ok"

    return call


def test_a_retry_after_that_is_no_delay_falls_back_to_backoff_instead_of_failing() -> None:
    waits: list[float] = []
    call = failing(StatusError(429, {"retry-after": "soon"}), StatusError(503, {"retry-after": "soon"}))
    assert Retrier((Dropped,), sleep=waits.append).call(call) == "ok"
    assert waits == [0.5, 1.0]


def test_the_retrier_waits_what_the_service_asked_capped_at_max_wait() -> None:
    waits: list[float] = []
    call = failing(StatusError(429, {"retry-after": "3"}), StatusError(429, {"retry-after": "300"}))
    assert Retrier((Dropped,), max_wait=60, sleep=waits.append).call(call) == "ok"
    assert waits == [3.0, 60.0]


def test_a_dropped_connection_is_retried_with_backoff() -> None:
    waits: list[float] = []
    assert Retrier((Dropped,), sleep=waits.append).call(failing(Dropped(), Dropped(), Dropped())) == "ok"
    assert waits == [0.5, 1.0, 2.0]


def test_the_last_failure_is_raised_as_it_is_after_the_attempts() -> None:
    waits: list[float] = []
    last = StatusError(502)
    with pytest.raises(StatusError) as caught:
        Retrier((Dropped,), attempts=2, sleep=waits.append).call(failing(StatusError(502), last))
    assert caught.value is last and waits == [0.5]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_refusal_is_not_retried(status: int) -> None:
    waits: list[float] = []
    with pytest.raises(StatusError):
        Retrier((Dropped,), sleep=waits.append).call(failing(StatusError(status)))
    assert waits == []


def test_a_rate_limit_with_an_unusable_retry_after_is_still_retried_through_the_sdk(case: ProviderCase) -> None:
    limited, answered = case.cassette("rate_limited").interactions
    odd = limited.response.model_copy(update={"headers": {**limited.response.headers, "retry-after": "soon"}})
    transport, waits = case.scripted([limited.model_copy(update={"response": odd}), answered]), []
    assert case.provider(transport, waits=waits).refresh(case.job_id).job_id == case.job_id
    assert waits == [0.5]


# --------------------------------------------------------------------------- ErrorMapper, through each SDK


def job_read(case: ProviderCase) -> Interaction:
    """The request refresh() makes, as the rate_limited cassette recorded it."""
    return case.cassette("rate_limited").interactions[1]


def answered(case: ProviderCase, status: int, headers: dict[str, str] | None = None,
             message: str = "the service's own words") -> Interaction:
    read = job_read(case)
    return Interaction(request=read.request, response=RecordedResponse(
        status=status, headers={"content-type": "application/json", "x-request-id": "req_mapped", **(headers or {})},
        body=JsonBody(json=case.error_body(message, status))))


def test_a_429_is_rate_limited_with_the_delay_from_the_headers(case: ProviderCase) -> None:
    transport = case.scripted([answered(case, 429, {"retry-after-ms": "2500"})])
    with pytest.raises(RateLimited) as caught:
        case.provider(transport, retry_attempts=1).refresh(case.job_id)
    error = caught.value
    assert (error.retry_after, error.status_code, error.request_id, error.provider) == (2.5, 429, "req_mapped",
                                                                                       case.name)
    assert "the service's own words" in str(error) and "wait 2.5 s" in str(error)


def test_a_429_without_a_delay_is_rate_limited_without_one(case: ProviderCase) -> None:
    transport = case.scripted([answered(case, 429)])
    with pytest.raises(RateLimited) as caught:
        case.provider(transport, retry_attempts=1).refresh(case.job_id)
    assert caught.value.retry_after is None


def test_a_404_is_not_found_and_is_not_retried(case: ProviderCase) -> None:
    transport = case.scripted([answered(case, 404, message="No job with that id")])
    with pytest.raises(NotFound) as caught:
        case.provider(transport).refresh(case.job_id)  # never sleeps
    assert caught.value.status_code == 404 and "No job with that id" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_is_authentication_failed_even_when_the_service_echoes_it(case: ProviderCase,
                                                                                 status: int) -> None:
    transport = case.scripted([answered(case, status, message=f"Key {case.key} is not valid")])
    with pytest.raises(AuthenticationFailed) as caught:
        case.provider(transport).refresh(case.job_id)
    assert case.env_var in str(caught.value) and case.key not in str(caught.value)
    assert caught.value.status_code == status


def test_a_server_error_on_a_read_is_retried_then_reported_with_its_status(case: ProviderCase) -> None:
    transport, waits = case.scripted([answered(case, 500)] * 3), []
    with pytest.raises(ProviderError) as caught:
        case.provider(transport, waits=waits, retry_attempts=3).refresh(case.job_id)
    assert type(caught.value) is ProviderError and caught.value.status_code == 500
    assert "HTTP 500" in str(caught.value) and "req_mapped" in str(caught.value)
    assert waits == [0.5, 1.0]


def test_a_key_the_service_echoes_in_another_error_is_hidden(case: ProviderCase) -> None:
    transport = case.scripted([answered(case, 400, message=f"bad request made with {case.key}")])
    with pytest.raises(ProviderError) as caught:
        case.provider(transport).refresh(case.job_id)
    assert case.key not in str(caught.value) and "bad request made with REDACTED" in str(caught.value)


def test_the_mapper_keeps_the_request_id_from_a_provider_specific_header() -> None:
    mapper = ErrorMapper(provider="demo", display="Demo", env_key="DEMO_KEY", api_key=None,
                         request_id_headers=("x-demo-request-id",))
    error = StatusError(409, {"x-demo-request-id": "demo-123"})
    mapped = mapper(error, "do a thing")
    assert (mapped.request_id, mapped.status_code) == ("demo-123", 409) and "(request id demo-123)" in str(mapped)


# --------------------------------------------------------------------------- replay mismatches vs the network


# openai 3.x wraps only httpx2's own RequestError in APIConnectionError (openai/_base_client.py,
# request_exceptions()): a replay's CassetteMismatch leaves that SDK as it is, so the provider maps it itself.
MISMATCH_CASES = [pytest.param(c, id=c.name) for c in CASES]


def mismatched(case: ProviderCase) -> Any:
    """A replay whose next request is an upload (the unauthorized cassette): anything else mismatches."""
    return case.replay("unauthorized")


@pytest.mark.parametrize("case", MISMATCH_CASES)
def test_a_read_the_cassette_does_not_hold_is_a_replay_mismatch_not_retried(case: ProviderCase) -> None:
    transport, waits = mismatched(case), []
    with pytest.raises(ReplayMismatch) as caught:
        case.provider(transport, waits=waits).refresh(case.job_id)
    message = str(caught.value)
    assert "does not match the cassette" in message and "check the network" not in message.lower()
    assert waits == [] and len(transport.log) == 1  # asking again cannot change the cassette


@pytest.mark.parametrize("case", MISMATCH_CASES)
def test_a_create_the_cassette_does_not_hold_is_a_replay_mismatch_not_an_uncertain_submission(
    case: ProviderCase,
) -> None:
    transport, waits = mismatched(case), []
    with pytest.raises(ReplayMismatch) as caught:
        case.provider(transport, waits=waits).submit(case.spec())
    assert not isinstance(caught.value, SubmissionUncertain) and waits == []
    assert "does not match the cassette" in str(caught.value)


@pytest.mark.parametrize("case", MISMATCH_CASES)
def test_a_completion_the_cassette_does_not_hold_is_a_replay_mismatch(case: ProviderCase) -> None:
    transport = mismatched(case)
    with pytest.raises(ReplayMismatch, match="does not match the cassette"):
        case.provider(transport).endpoint(case.model).complete(PROMPT)


@pytest.mark.parametrize("case", MISMATCH_CASES)
def test_an_upload_the_cassette_does_not_hold_is_a_replay_mismatch(case: ProviderCase, tmp_path: Any) -> None:
    transport = case.replay("rate_limited")  # expects a GET
    with pytest.raises(ReplayMismatch, match="does not match the cassette"):
        case.provider(transport).upload(training_file(tmp_path))


class Unreachable(httpx.BaseTransport, httpx2.BaseTransport):
    """Every request fails to connect, as with no network."""

    def __init__(self) -> None:
        self.tries = 0

    def handle_request(self, request: Any) -> Any:
        self.tries += 1
        library = importlib.import_module(type(request).__module__.partition(".")[0])
        raise library.ConnectError("[Errno 111] Connection refused", request=request)


def test_an_unreachable_service_is_retried_then_reported_as_the_network(case: ProviderCase) -> None:
    transport, waits = Unreachable(), []
    with pytest.raises(ProviderError) as caught:
        case.provider(transport, waits=waits, retry_attempts=3).refresh(case.job_id)
    # ServiceUnreachable where the SDK lets the transport's own error through (replicate has no error class for it)
    assert type(caught.value) in (ProviderError, ServiceUnreachable)
    assert "check the network" in str(caught.value).lower() and "Connection refused" in str(caught.value)
    assert transport.tries == 3 and waits == [0.5, 1.0]


def test_an_upload_to_an_unreachable_service_is_tried_once(case: ProviderCase, tmp_path: Any) -> None:
    transport, waits = Unreachable(), []
    with pytest.raises(ProviderError, match="Check the network"):
        case.provider(transport, waits=waits).upload(training_file(tmp_path))
    assert transport.tries == 1 and waits == []


def test_a_mapped_error_never_carries_the_key_in_its_cause_detail() -> None:
    mapper = ErrorMapper(provider="demo", display="Demo", env_key="DEMO_KEY", api_key="secret-demo-key-123")
    dropped = Dropped("connect")
    dropped.__cause__ = OSError("refused for secret-demo-key-123")
    assert "secret-demo-key-123" not in str(mapper(dropped, "read"))


def test_a_recorded_request_for_this_module_is_built_as_the_sdk_sends_it() -> None:
    """Guard for the helpers above: the job read of each case is a GET with no body."""
    for case in CASES:
        read: RecordedRequest = job_read(case).request
        assert read.method == "GET" and read.body is None
