"""Faults injected at every HTTP step of a whole ``fit`` (replayed through the real SDKs): each run
completes or ends in a clear tuneproxy error — never an internal error — and never sends a second create.

A fault replaces one exchange of the recorded happy path: the request is made, and instead of the recorded
answer the client gets an HTML page, cut-off JSON, a 500, a reset connection or a read timeout. The replay
then serves that same exchange again, as a service that recovered would, so a retried read can go on.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fit_helpers import CREATE, ENVIRONMENT, MODELS, SAMPLE, make_tuner
from tuneproxy.errors import TuneproxyError
from tuneproxy.recording import (
    Cassette,
    RecordedResponse,
    ReplayTransport,
    TextBody,
    build_response,
    capture_request,
    cassette_path,
    library_of,
)

FAULTS = ("html page", "cut-off json", "http 500", "connection reset", "read timeout")


class FaultAt(ReplayTransport):
    """The happy path, with one fault in place of the answer to exchange number ``at``."""

    def __init__(self, cassette: Cassette, at: int, fault: str) -> None:
        super().__init__(cassette)
        self.at, self.fault, self.seen = at, fault, 0

    def _exchange(self, request: Any) -> Any:
        with self._lock:
            number, self.seen = self.seen, self.seen + 1
        interaction = self.next_interaction(capture_request(request))
        if number != self.at:
            return build_response(request, interaction.response)
        with self._lock:
            self.position -= 1  # the service recovers: the same exchange is served to a retry
        library = library_of(request)
        if self.fault == "connection reset":
            raise library.ConnectError("connection reset by peer", request=request)
        if self.fault == "read timeout":
            raise library.ReadTimeout("the read timed out", request=request)
        status, kind, text = {"html page": (200, "text/html", "<html><body>Bad gateway</body></html>"),
                              "cut-off json": (200, "application/json", '{"id": "x", "sta'),
                              "http 500": (500, "application/json", '{"error": {"message": "internal"}}')}[self.fault]
        return build_response(request, RecordedResponse(status=status, headers={"content-type": kind},
                                                        body=TextBody(text=text)))


@pytest.fixture(autouse=True)
def provider_environment(monkeypatch):
    """The Fireworks account and the Replicate destination the fit cassettes were recorded with."""
    for variable, value in ENVIRONMENT.items():
        monkeypatch.setenv(variable, value)


def _cases() -> list[Any]:
    cases = []
    for provider in MODELS:
        steps = len(Cassette.load(cassette_path(provider, "fit_happy_path")).interactions) - 1  # not the chat
        cases += [pytest.param(provider, at, fault, id=f"{provider}-{at}-{fault.replace(' ', '-')}")
                  for at in range(steps) for fault in FAULTS]
    return cases


@pytest.mark.filterwarnings("ignore::tuneproxy.tuner.SunsetWarning")
@pytest.mark.filterwarnings("ignore::tuneproxy.tuner.DatasetWarning")
# a fault on the Fireworks metrics-file download leaves the loss curve out, with this warning
@pytest.mark.filterwarnings("ignore::tuneproxy.providers.fireworks.MetricsWarning")
@pytest.mark.parametrize(("provider", "at", "fault"), _cases())
def test_a_fault_at_any_step_ends_in_success_or_a_clear_error_and_one_create_at_most(provider, at, fault):
    transport = FaultAt(Cassette.load(cassette_path(provider, "fit_happy_path")), at, fault)
    try:
        make_tuner(provider, transport, sleep=lambda seconds: None).fit(SAMPLE, holdout=0.1)
    except TuneproxyError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        # no link to an SDK's or HTTP library's exception either: it holds the request, with its key
        linked: BaseException | None = exc
        while linked is not None:
            assert isinstance(linked, TuneproxyError), repr(linked)
            linked = linked.__cause__ or linked.__context__
    assert len(transport.requests("POST", CREATE[provider])) <= 1
