"""The provider contract, as behaviour: every backend with a lifecycle, through its real SDK, replaying its
cassettes (no network, no real sleep). One test per behaviour, parametrized over :data:`CASES`.

Facts only one service has (request shapes, Together's metrics merge, OpenAI's method block…) live in
tests/test_<provider>_provider.py. The local backend is not a case here: it has no SDK or cassettes, has its
own tests (tests/test_local_provider.py) and is being refactored (see tests/contract/cases.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.contract.cases import (
    CASES,
    CONTRACT_SCENARIOS,
    NOT_CASES,
    PROMPT,
    HappyRun,
    ProviderCase,
    never_sleep,
    run_happy_path,
    training_file,
)
from tuneproxy import registry
from tuneproxy.contract import Completion, JobStatus
from tuneproxy.costs import bill_for
from tuneproxy.errors import (
    AuthenticationFailed,
    MissingCredentials,
    ProviderError,
    RateLimited,
    SubmissionUncertain,
)
from tuneproxy.recording import (
    Interaction,
    JsonBody,
    LostResponseTransport,
    RecordedRequest,
    RecordedResponse,
    ReplayTransport,
)

pytestmark = pytest.mark.filterwarnings("error::tuneproxy.contract.UnknownStatusWarning")


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> ProviderCase:
    return request.param


# --------------------------------------------------------------------------- the case list


def test_every_provider_with_a_lifecycle_has_a_case() -> None:
    from tuneproxy.providers._profile import ProfileOnlyProvider

    lifecycle = {name for name in registry.names()
                 if not issubclass(registry.provider_class(name), ProfileOnlyProvider)}
    assert set(NOT_CASES) <= lifecycle
    assert lifecycle - set(NOT_CASES) == {case.name for case in CASES}


def test_every_case_declares_every_contract_scenario(case: ProviderCase) -> None:
    assert case.scenarios >= CONTRACT_SCENARIOS
    assert not case.scenarios & case.extra_scenarios


def test_the_case_options_are_valid_and_not_the_defaults(case: ProviderCase) -> None:
    provider = case.provider(None)
    assert provider.options.stored() == dict(case.options) != {}


# --------------------------------------------------------------------------- the happy path


@pytest.fixture
def happy(case: ProviderCase, tmp_path: Path) -> HappyRun:
    return run_happy_path(case, tmp_path)


def test_happy_path_uploads_submits_and_follows_the_job_to_success(case: ProviderCase, happy: HappyRun) -> None:
    spec = case.spec()
    assert happy.upload.id and happy.upload.purpose == "train"
    submitted = happy.submitted
    assert (submitted.provider, submitted.base_model, submitted.intent_id) == (case.name, case.model, spec.intent_id)
    assert not submitted.status.terminal
    *before, done = happy.records
    assert before and all(not r.status.terminal and r.finished_at is None for r in before)
    assert done.status is JobStatus.SUCCEEDED and done.job_id == submitted.job_id
    assert done.tuned_model and done.finished_at is not None and done.finished_at.tzinfo is not None
    assert {r.raw_status for r in happy.records} <= set(case.cls.STATUS_MAP)


def test_a_succeeded_job_reports_what_it_bills_and_the_core_can_price_it(happy: HappyRun) -> None:
    done = happy.records[-1]
    assert done.billable and all(q.amount > 0 for q in done.billable)
    bill = bill_for(happy.provider, done)
    assert bill is not None and bill.usd is not None and bill.usd > 0


def test_the_estimate_says_what_will_be_billed(case: ProviderCase, happy: HappyRun) -> None:
    estimate = happy.estimate
    assert (estimate.provider, estimate.model) == (case.name, case.model) and estimate.basis
    assert estimate.quantities and all(q.amount > 0 for q in estimate.quantities)
    # dollars only when the service itself stated them; otherwise the core prices the quantities
    assert (estimate.usd is not None) == estimate.authoritative


def test_events_are_unique_and_time_stamped(happy: HappyRun) -> None:
    ids = [e.id for e in happy.events]
    assert ids and len(set(ids)) == len(ids)
    assert all(e.time.tzinfo is not None for e in happy.events)


def test_the_tuned_model_answers_a_chat_completion_with_its_finish_reason(case: ProviderCase, happy: HappyRun) -> None:
    ((answer,),) = happy.slices["complete"]
    assert isinstance(answer.response.body, JsonBody)
    choice = answer.response.body.json_["choices"][0]
    completion = happy.completion
    assert completion is not None
    assert completion.text == choice["message"]["content"] and completion.text
    assert completion.finish_reason == choice["finish_reason"]  # the service's word, verbatim
    assert completion.usage.completion_tokens == answer.response.body.json_["usage"]["completion_tokens"]


def test_complete_many_returns_one_outcome_per_conversation(case: ProviderCase, happy: HappyRun) -> None:
    ((answer,),) = happy.slices["complete"]
    refused = Interaction(
        request=RecordedRequest(method="POST", url=answer.request.url),  # any body
        response=RecordedResponse(status=400, headers={"content-type": "application/json"},
                                  body=JsonBody(json={"error": {"message": "This model does not accept tools.",
                                                                "type": "invalid_request_error"}})),
    )
    transport = case.scripted([answer, refused])
    endpoint = case.provider(transport).endpoint(happy.records[-1].tuned_model or "")
    first, second = endpoint.complete_many([PROMPT, [{"role": "user", "content": "call a tool"}]], concurrency=1)
    transport.assert_all_played()
    assert isinstance(first, Completion) and first.text == happy.completion.text  # type: ignore[union-attr]
    assert isinstance(second, ProviderError) and second.status_code == 400
    assert "This model does not accept tools." in str(second)


def test_a_fresh_provider_with_the_stored_options_reads_the_same_job(case: ProviderCase, happy: HappyRun) -> None:
    """How ``Job.attach`` follows a job later: the ledger keeps ``options.stored()`` and the job id."""
    stored = happy.provider.options.stored()
    assert stored == {**case.options, "strict_responses": True}
    last_read = happy.slices["refresh"][-1]
    transport = case.scripted(last_read)
    fresh = case.cls(stored, api_key=case.key, transport=transport, sleep=never_sleep)
    assert fresh.options == happy.provider.options
    assert fresh.refresh(happy.submitted.job_id) == happy.records[-1]
    transport.assert_all_played()


# --------------------------------------------------------------------------- events


def test_the_events_cursor_gives_each_event_once(case: ProviderCase, happy: HappyRun) -> None:
    (listing,) = happy.slices["events"]  # the request(s) one events() call makes
    everything = happy.events
    cuts = sorted({0, len(everything) // 2, len(everything) - 2})
    transport = case.scripted(listing * (len(cuts) + 2))
    p, job = case.provider(transport), happy.submitted.job_id
    assert p.events(job) == everything
    for cut in cuts:
        assert p.events(job, after=everything[cut].id) == everything[cut + 1:]
    assert p.events(job, after=everything[-1].id) == []  # nothing new at the end
    transport.assert_all_played()


# --------------------------------------------------------------------------- failure, cancel


def test_a_failed_job_carries_the_service_message_verbatim(case: ProviderCase) -> None:
    transport = case.replay("failed_validation")
    p = case.provider(transport)
    job = p.submit(case.spec())
    record = p.refresh(job.job_id)
    transport.assert_all_played()
    assert record.status is JobStatus.FAILED and record.finished_at is not None
    assert record.error == case.failure_message


def test_cancel_reports_cancelled_or_cancel_requested_then_cancelled(case: ProviderCase) -> None:
    transport = case.replay("cancelled")
    p = case.provider(transport)
    job = p.submit(case.spec())
    requested = p.cancel(job.job_id)
    final = p.refresh(job.job_id)
    transport.assert_all_played()
    assert requested.job_id == job.job_id
    # at once cancelled, or still stopping (not terminal: its bill is not final yet)
    assert requested.status is JobStatus.CANCELLED or (
        requested.status is not JobStatus.UNKNOWN and not requested.status.terminal
        and requested.finished_at is None and requested.billed_usd is None)
    assert final.status is JobStatus.CANCELLED and final.finished_at is not None


# --------------------------------------------------------------------------- rate limits


def _asked_wait(case: ProviderCase) -> float:
    first = case.cassette("rate_limited").interactions[0].response
    assert first.status == 429
    return float(first.headers["retry-after"])


def test_a_rate_limited_read_is_retried_after_the_wait_the_service_asked_for(case: ProviderCase) -> None:
    transport, waits = case.replay("rate_limited"), []
    record = case.provider(transport, waits=waits).refresh(case.job_id)
    transport.assert_all_played()
    assert waits == [_asked_wait(case)] and len(transport.requests("GET")) == 2
    assert record.job_id == case.job_id and record.status is not JobStatus.UNKNOWN


def test_no_wait_is_longer_than_retry_max_wait(case: ProviderCase) -> None:
    transport, waits = case.replay("rate_limited"), []
    case.provider(transport, waits=waits, retry_max_wait=0.5).refresh(case.job_id)
    assert waits == [min(0.5, _asked_wait(case))]


def test_a_rate_limit_outlasting_the_retries_is_rate_limited_with_the_wait(case: ProviderCase) -> None:
    transport, waits = case.replay("rate_limited"), []
    with pytest.raises(RateLimited) as caught:
        case.provider(transport, waits=waits, retry_attempts=1).refresh(case.job_id)
    assert waits == [] and transport.remaining == 1
    assert caught.value.retry_after == _asked_wait(case) and caught.value.status_code == 429
    assert caught.value.provider == case.name


# --------------------------------------------------------------------------- the paid create


def test_a_lost_create_is_sent_once_and_found_again_by_its_intent(case: ProviderCase) -> None:
    method, path = case.create
    transport = case.replay("lost_create")
    p = case.provider(LostResponseTransport(transport, method=method, path=path))
    spec = case.spec()
    with pytest.raises(SubmissionUncertain) as caught:
        p.submit(spec)
    found = p.find_job(spec.intent_id)
    transport.assert_all_played()
    assert caught.value.intent_id == spec.intent_id and "Do not resubmit" in str(caught.value)
    assert len(transport.requests(method, path)) == 1
    assert found is not None and (found.job_id, found.intent_id) == (case.job_id, spec.intent_id)


def _create_answered(case: ProviderCase, status: int) -> ReplayTransport:
    """The lost_create cassette up to its create request, which is answered ``status``."""
    interactions = case.cassette("lost_create").interactions
    at = next(n for n, i in enumerate(interactions)
              if (i.request.method, urlsplit(i.request.url).path) == case.create)
    answer = RecordedResponse(status=status, headers={"content-type": "application/json"},
                              body=JsonBody(json={"error": {"message": f"answered {status}", "type": "server"}}))
    return case.scripted([*interactions[:at], Interaction(request=interactions[at].request, response=answer)])


@pytest.mark.parametrize("status", [502, 504])
def test_a_create_answered_with_a_server_error_may_have_made_the_job(case: ProviderCase, status: int) -> None:
    transport = _create_answered(case, status)
    with pytest.raises(SubmissionUncertain):
        case.provider(transport).submit(case.spec())
    transport.assert_all_played()  # and it was not sent again


def test_a_create_refused_with_a_4xx_is_a_plain_refusal(case: ProviderCase) -> None:
    transport = _create_answered(case, 400)
    with pytest.raises(ProviderError) as caught:
        case.provider(transport).submit(case.spec())
    transport.assert_all_played()
    assert type(caught.value) is ProviderError and caught.value.status_code == 400
    assert "answered 400" in str(caught.value)


# --------------------------------------------------------------------------- keys


def test_a_wrong_key_is_authentication_failed_naming_the_variable_never_the_key(
    case: ProviderCase, tmp_path: Path
) -> None:
    transport = case.replay("unauthorized")
    with pytest.raises(AuthenticationFailed) as caught:
        case.provider(transport).upload(training_file(tmp_path))
    message = str(caught.value)
    assert caught.value.status_code == 401 and case.env_var in message
    assert case.key not in message and case.key[:12] not in message
    assert case.key not in repr(caught.value) and case.key not in repr(caught.value.__dict__)
    recorded = case.cassette("unauthorized").interactions[0].response.headers
    request_ids = [recorded[h] for h in ("x-request-id", *getattr(case.cls, "REQUEST_ID_HEADERS", ())) if h in recorded]
    assert request_ids, "the unauthorized cassette should keep the service's request id header"
    assert caught.value.request_id in request_ids and caught.value.request_id in message  # for a support ticket


def test_a_missing_key_is_reported_before_any_request(case: ProviderCase) -> None:
    transport = case.replay("happy_path")
    p = case.cls(case.options, api_key=None, transport=transport)
    with pytest.raises(MissingCredentials, match=case.env_var):
        p.refresh(case.job_id)
    assert transport.log == []


def test_the_provider_never_shows_its_key(case: ProviderCase) -> None:
    p = case.provider(None)
    assert case.key not in repr(p) and case.key not in str(p)


# --------------------------------------------------------------------------- construction


def test_the_constructor_takes_the_documented_seams_and_no_loose_options(case: ProviderCase) -> None:
    parameters = inspect.signature(case.cls.__init__).parameters
    keyword = {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {"api_key", "transport", "clock", "sleep"} <= keyword
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
