"""The provider contract, as behaviour: every backend with a lifecycle. One test per behaviour, parametrized
over :data:`EVERY_CASE`: the HTTP backends through their real SDK, replaying their cassettes (no network, no
real sleep), and the local backend training a tiny model in a real worker process (it sleeps for real only
while it waits on that worker, for a bounded time).

The local backend trains one job for the whole module (the happy path, which every read-only behaviour
reuses) and one more that is cancelled. The behaviours that cannot apply to it run over :data:`CASES` only:
they are listed, with the reason, in :data:`NOT_APPLICABLE_TO_LOCAL`.

Facts only one backend has (request shapes, Together's metrics merge, OpenAI's method block, the local
worker's crash and resume…) live in tests/test_<provider>_provider.py.
"""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.contract.cases import (
    CASES,
    CONTRACT_SCENARIOS,
    EVERY_CASE,
    LOCAL,
    PROMPT,
    HappyRun,
    LocalCase,
    ProviderCase,
    never_sleep,
    run_happy_path,
    run_local_happy_path,
    training_file,
)
from tests.local_helpers import build_model_folder, follow, ticket_records, ticket_words, write_jsonl
from tuneproxy import registry
from tuneproxy.contract import Completion, GenerationParams, JobRecord, JobStatus, Provider
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

Case = ProviderCase | LocalCase

NOT_APPLICABLE_TO_LOCAL: dict[str, str] = {
    "test_every_case_declares_every_contract_scenario":
        "cassettes: the local backend makes no HTTP request, so it records none",
    "test_a_failed_job_carries_the_service_message_verbatim":
        "a service failing a created job in its own file validation: the local backend checks the file at upload "
        "and the run at submit, before any job exists (tests/test_local_provider.py: refused runs, and a worker "
        "that dies is failed with its last log lines)",
    "test_a_rate_limited_read_is_retried_after_the_wait_the_service_asked_for":
        "HTTP 429 with Retry-After: no service to rate-limit a read of local files",
    "test_no_wait_is_longer_than_retry_max_wait": "HTTP 429 with Retry-After: no service, no retry options",
    "test_a_rate_limit_outlasting_the_retries_is_rate_limited_with_the_wait":
        "HTTP 429 with Retry-After: no service, no retry options",
    "test_a_lost_create_is_sent_once_and_found_again_by_its_intent":
        "an HTTP create whose answer is lost: the local submit writes the job folder before it returns. Finding "
        "a job by its intent, which reconciles a lost create, is test_find_job_finds_the_job_made_for_the_intent",
    "test_a_create_answered_with_a_server_error_may_have_made_the_job": "HTTP 5xx answer to the create",
    "test_a_create_refused_with_a_4xx_is_a_plain_refusal": "HTTP 4xx answer to the create",
    "test_a_wrong_key_is_authentication_failed_naming_the_variable_never_the_key":
        "HTTP 401: the local backend takes no key (its Capabilities name no credentials)",
    "test_a_missing_key_is_reported_before_any_request": "the local backend takes no key",
    "test_the_provider_never_shows_its_key": "the local backend takes no key",
}
"""The behaviours that run over the HTTP cases only, each with why it cannot apply to the local backend."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``case``: every backend, or the HTTP ones for a behaviour in :data:`NOT_APPLICABLE_TO_LOCAL`."""
    if "case" in metafunc.fixturenames:
        http_only = metafunc.function.__name__ in NOT_APPLICABLE_TO_LOCAL
        metafunc.parametrize("case", CASES if http_only else EVERY_CASE, ids=str)


# --------------------------------------------------------------------------- the local backend's runs


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its tokenizer (tests/local_helpers.py), built once for the module."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "model", ticket_words())


@pytest.fixture(scope="module")
def local_happy(local_model: Path, tmp_path_factory: pytest.TempPathFactory) -> HappyRun:
    """The one local job the read-only behaviours share: trained once, for two steps."""
    return run_local_happy_path(LOCAL, local_model, tmp_path_factory.mktemp("local-happy"))


@contextmanager
def attached(case: Case, happy: HappyRun,
             replay: Callable[[], Sequence[Interaction]] = list) -> Iterator[Provider]:
    """A fresh provider built from the options the ledger stored for ``happy``, as ``Job.attach`` builds one.
    Over HTTP it answers with ``replay()``'s interactions, in order, every one of them used by the end; the
    local backend replays nothing: it reads the job's folder in its ``home`` option."""
    stored = happy.provider.options.stored()
    if isinstance(case, LocalCase):
        yield case.cls(stored)
        return
    transport = case.scripted(replay())
    yield case.cls(stored, api_key=case.key, transport=transport, sleep=never_sleep)
    transport.assert_all_played()


# --------------------------------------------------------------------------- the case list


def test_every_provider_with_a_lifecycle_has_a_case() -> None:
    from tuneproxy.providers._profile import ProfileOnlyProvider

    lifecycle = {name for name in registry.names()
                 if not issubclass(registry.provider_class(name), ProfileOnlyProvider)}
    assert lifecycle == {case.name for case in EVERY_CASE}


def test_each_behaviour_not_run_for_local_is_a_test_here() -> None:
    behaviours = {name for name, fn in globals().items()
                  if name.startswith("test_") and "case" in inspect.signature(fn).parameters}
    assert set(NOT_APPLICABLE_TO_LOCAL) < behaviours


def test_every_case_declares_every_contract_scenario(case: ProviderCase) -> None:
    assert case.scenarios >= CONTRACT_SCENARIOS
    assert not case.scenarios & case.extra_scenarios


def test_the_case_options_are_valid_and_not_the_defaults(case: Case) -> None:
    provider = case.provider(None)
    assert provider.options.stored() == dict(case.options) != {}


# --------------------------------------------------------------------------- the happy path


@pytest.fixture
def happy(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> HappyRun:
    if isinstance(case, LocalCase):
        return request.getfixturevalue("local_happy")
    return run_happy_path(case, tmp_path)


def test_happy_path_uploads_submits_and_follows_the_job_to_success(case: Case, happy: HappyRun) -> None:
    spec = happy.spec
    assert happy.upload.id and happy.upload.purpose == "train"
    submitted = happy.submitted
    assert (submitted.provider, submitted.base_model, submitted.intent_id) == (case.name, spec.model, spec.intent_id)
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


def test_the_estimate_says_what_will_be_billed(case: Case, happy: HappyRun) -> None:
    estimate = happy.estimate
    assert (estimate.provider, estimate.model) == (case.name, happy.spec.model) and estimate.basis
    assert estimate.quantities and all(q.amount > 0 for q in estimate.quantities)
    # dollars only when the service itself stated them; otherwise the core prices the quantities
    assert (estimate.usd is not None) == estimate.authoritative


def test_events_are_unique_and_time_stamped(happy: HappyRun) -> None:
    ids = [e.id for e in happy.events]
    assert ids and len(set(ids)) == len(ids)
    assert all(e.time.tzinfo is not None for e in happy.events)


def test_the_tuned_model_answers_a_chat_completion_with_its_finish_reason(case: Case, happy: HappyRun) -> None:
    completion = happy.completion
    assert completion is not None and completion.finish_reason and completion.usage.completion_tokens > 0
    if isinstance(case, LocalCase):  # the trainer's own word: an end-of-turn token, or max_tokens reached
        stopped = completion.usage.completion_tokens < case.max_tokens
        assert completion.finish_reason == ("stop" if stopped else "length")
        return
    ((answer,),) = happy.slices["complete"]
    assert isinstance(answer.response.body, JsonBody)
    text, finish_reason, completion_tokens = case.answer(answer.response.body.json_)
    assert completion.text == text and completion.text
    if finish_reason is not None:
        assert completion.finish_reason == finish_reason  # the service's word, verbatim
    else:  # none stated: derived from the token count (fewer than allowed: it stopped by itself)
        assert completion.finish_reason == "stop" and completion_tokens < GenerationParams().max_tokens
    assert completion.usage.completion_tokens == completion_tokens


def test_complete_many_returns_one_outcome_per_conversation(case: Case, happy: HappyRun) -> None:
    tuned = happy.records[-1].tuned_model or ""
    if isinstance(case, ProviderCase):
        tuned = case.serving(tuned)
    if isinstance(case, LocalCase):  # no service to refuse one: each conversation is answered, in order
        second_prompt = ticket_records(1, seed=9)[0]["messages"][:2]
        with attached(case, happy) as p:
            first, second = p.endpoint(tuned).complete_many([PROMPT, second_prompt], max_tokens=case.max_tokens)
        assert isinstance(second, Completion) and second.finish_reason
    else:
        ((answer,),) = happy.slices["complete"]
        refused = Interaction(
            request=RecordedRequest(method="POST", url=answer.request.url),  # any body
            response=RecordedResponse(status=400, headers={"content-type": "application/json"},
                                      body=JsonBody(json=case.error_body("This model does not accept tools.", 400))),
        )
        with attached(case, happy, lambda: [answer, refused]) as p:
            first, second = p.endpoint(tuned).complete_many([PROMPT, [{"role": "user", "content": "call a tool"}]],
                                                            concurrency=1)
        assert isinstance(second, ProviderError) and second.status_code == 400
        assert "This model does not accept tools." in str(second)
    assert isinstance(first, Completion) and first.text == happy.completion.text  # type: ignore[union-attr]


def test_a_fresh_provider_with_the_stored_options_reads_the_same_job(case: Case, happy: HappyRun) -> None:
    """How ``Job.attach`` follows a job later: the ledger keeps ``options.stored()`` and the job id."""
    run_options = {"home": str(happy.provider.home)} if isinstance(case, LocalCase) else {"strict_responses": True}
    assert happy.provider.options.stored() == {**case.options, **run_options}
    with attached(case, happy, lambda: happy.slices["refresh"][-1]) as fresh:
        assert fresh.options == happy.provider.options
        assert fresh.refresh(happy.submitted.job_id) == happy.records[-1]


def test_find_job_finds_the_job_made_for_the_intent(case: Case, happy: HappyRun) -> None:
    """How a lost create is reconciled: the job is looked up by the intent id it was submitted with."""
    with attached(case, happy, lambda: _after_the_create(case)) as p:
        found = p.find_job(happy.spec.intent_id)
    assert found is not None and (found.job_id, found.intent_id) == (happy.submitted.job_id, happy.spec.intent_id)


# --------------------------------------------------------------------------- events


def test_the_events_cursor_gives_each_event_once(case: Case, happy: HappyRun) -> None:
    everything = happy.events  # read along the run, each read after the last event it had
    cuts = sorted({0, len(everything) // 2, len(everything) - 2})
    job = happy.submitted.job_id
    # the request(s) one events() call makes, once per call below
    with attached(case, happy, lambda: _one_call(happy, "events") * (len(cuts) + 2)) as p:
        assert p.events(job) == everything
        for cut in cuts:
            assert p.events(job, after=everything[cut].id) == everything[cut + 1:]
        assert p.events(job, after=everything[-1].id) == []  # nothing new at the end


def _one_call(happy: HappyRun, label: str) -> list[Interaction]:
    (interactions,) = happy.slices[label]
    return interactions


# --------------------------------------------------------------------------- failure, cancel


def test_a_failed_job_carries_the_service_message_verbatim(case: ProviderCase) -> None:
    transport = case.replay("failed_validation")
    p = case.provider(transport)
    job = p.submit(case.spec())
    record = p.refresh(job.job_id)
    transport.assert_all_played()
    assert record.status is JobStatus.FAILED and record.finished_at is not None
    assert record.error == case.failure_message


@pytest.fixture
def cancelled(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, JobRecord, JobRecord]]:
    """A job submitted and then cancelled: its id, what ``cancel`` answered, and a read of the job after it."""
    if isinstance(case, ProviderCase):
        transport = case.replay("cancelled")
        p = case.provider(transport)
        job = p.submit(case.spec())
        requested, final = p.cancel(job.job_id), p.refresh(job.job_id)
        transport.assert_all_played()
        yield job.job_id, requested, final
        return
    # a job of its own, long enough to still be running when cancelled (hundreds of one-example steps)
    model = request.getfixturevalue("local_model")
    p = case.provider(tmp_path / "home")
    upload = p.upload(write_jsonl(tmp_path / "train.jsonl", ticket_records(8)))
    job = p.submit(case.spec(model, upload.id, epochs=100, batch_size=1))
    try:
        follow(p, job.job_id, until=lambda r: r.status is JobStatus.RUNNING)  # its worker has started
        yield job.job_id, p.cancel(job.job_id), p.refresh(job.job_id)
    finally:
        if not p.refresh(job.job_id).status.terminal:  # a failed test must not leave a worker training
            os.kill(int((p.home / "jobs" / job.job_id / "worker.pid").read_text()), signal.SIGKILL)


def test_cancel_reports_cancelled_or_cancel_requested_then_cancelled(
    cancelled: tuple[str, JobRecord, JobRecord]
) -> None:
    job_id, requested, final = cancelled
    assert requested.job_id == job_id
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


def _create_at(case: ProviderCase) -> tuple[list[Interaction], int]:
    """The lost_create cassette's interactions, and where its create request is."""
    interactions = case.cassette("lost_create").interactions
    return interactions, next(n for n, i in enumerate(interactions)
                              if (i.request.method, urlsplit(i.request.url).path) == case.create)


def _after_the_create(case: Case) -> list[Interaction]:
    """The lookup ``find_job`` makes in the lost_create cassette."""
    assert isinstance(case, ProviderCase)
    interactions, at = _create_at(case)
    return interactions[at + 1:]


def _create_answered(case: ProviderCase, status: int) -> ReplayTransport:
    """The lost_create cassette up to its create request, which is answered ``status``."""
    interactions, at = _create_at(case)
    answer = RecordedResponse(status=status, headers={"content-type": "application/json"},
                              body=JsonBody(json=case.error_body(f"answered {status}", status)))
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


def test_the_constructor_takes_the_documented_seams_and_no_loose_options(case: Case) -> None:
    parameters = inspect.signature(case.cls.__init__).parameters
    keyword = {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {"api_key", "transport", "clock", "sleep"} <= keyword
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
