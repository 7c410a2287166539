"""The same ``fit()`` through OpenAI, Together, Fireworks and Replicate, replayed from Tuner-level cassettes, into
the ledger: only ``provider`` and the model change."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import pytest

from tests.fit_helpers import CREATE, ENVIRONMENT, MODELS, SAMPLE, before_the_sunset, make_tuner
from tuneproxy import Job, JobStatus, Ledger, TunedModel, Tuner, cli
from tuneproxy.contract import Deployable
from tuneproxy.errors import JobFailed, ProviderError
from tuneproxy.recording import (
    Cassette,
    LostResponseTransport,
    ReplayTransport,
    build_response,
    capture_request,
    cassette_path,
    library_of,
)
from tuneproxy.tuner import ReattachedWarning

QUESTION = [{"role": "user", "content": "Ticket: I was charged twice"}]


# What each service's bill is: Together states it (total_price, nano-dollars), Fireworks too (the job's
# estimatedCost, units + nanos: $0.0482085 in its cassette); OpenAI reports the billed tokens, which the core
# prices at gpt-4o-mini's training price, $3.00 per 1M (the reference's table, §4).
BILLS = {
    "openai": lambda job: job.trained_tokens * 3.00 / 1e6,
    "together": lambda job: job.billed_usd,
    "fireworks": lambda job: job.billed_usd,
    # Replicate bills seconds on the trainer's hardware: 8x A40 (Large) at $0.0058/s in the catalogue
    "replicate": lambda job: job.billable[0].amount * 0.0058,
}
PROVIDERS = ["openai", "together", "fireworks", "replicate"]
pytestmark = [pytest.mark.filterwarnings("ignore::tuneproxy.tuner.SunsetWarning"),
              pytest.mark.filterwarnings("ignore::tuneproxy.tuner.DatasetWarning")]


@pytest.fixture(autouse=True)
def provider_environment(monkeypatch):
    """The Fireworks account and the Replicate destination the cassettes use, from the environment as a user
    sets them (the Tuner call stays the same)."""
    for variable, value in ENVIRONMENT.items():
        monkeypatch.setenv(variable, value)


def ask(tuner: Tuner, tuned: TunedModel) -> Any:
    """The tuned model's answer to QUESTION. Fireworks serves a tuned LoRA only on a paid deployment: there it
    is deployed, read until ready, asked on ``model#deployment`` and deleted again (all in its cassette)."""
    if tuner.provider_name != "fireworks":
        return tuned.endpoint.complete(QUESTION)
    deployment = tuned.deploy(hardware="NVIDIA_H100_80GB")
    assert isinstance(tuner.provider, Deployable)
    ready = tuner.provider.deployment(deployment.deployment_id)
    assert ready.state == "ready" and ready.serving_model == f"{tuned.model}#{deployment.deployment_id}"
    reply = tuned.deployed_endpoint(ready).complete(QUESTION)
    assert tuner.provider.undeploy(ready.deployment_id).state == "stopped"  # nothing left billing by the hour
    return reply


@pytest.mark.parametrize("provider", PROVIDERS)
def test_same_fit_call_trains_on_every_provider_and_fills_the_ledger(provider):
    transport = ReplayTransport(cassette_path(provider, "fit_happy_path"))
    tuner = make_tuner(provider, transport)
    tuned = tuner.fit(SAMPLE, holdout=0.1)
    assert isinstance(tuned, TunedModel)
    assert tuned.model and tuned.base_model == MODELS[provider]
    reply = ask(tuner, tuned)
    assert '"category"' in reply.text and reply.usage.completion_tokens > 0
    transport.assert_all_played()
    assert len(transport.requests("POST", CREATE[provider])) == 1
    ledger = Ledger()
    job = ledger.job(tuned.job_id)
    assert job.status is JobStatus.SUCCEEDED and job.tuned_model == tuned.model
    kinds = [c.kind for c in tuned.costs]
    assert kinds[0] == "estimate" and kinds[-1] == "billed"
    assert tuned.costs[-1].usd == pytest.approx(BILLS[provider](job)) and tuned.costs[-1].usd > 0
    assert ledger.events(provider, tuned.job_id)
    assert ledger.submission(job.intent_id).state == "submitted"


def test_openai_metrics_reach_the_tuned_model():
    transport = ReplayTransport(cassette_path("openai", "fit_happy_path"))
    tuned = make_tuner("openai", transport).fit(SAMPLE, holdout=0.1)
    steps = [(m.step, m.train_loss is not None, m.valid_loss is not None) for m in tuned.metrics]
    assert steps == [(45, True, True), (90, True, True), (135, True, True)]
    assert tuned.record.trained_tokens == 98043


def test_together_metrics_reach_the_tuned_model():
    transport = ReplayTransport(cassette_path("together", "fit_happy_path"))
    tuned = make_tuner("together", transport).fit(SAMPLE, holdout=0.1)
    steps = [(m.step, m.train_loss is not None, m.valid_loss is not None) for m in tuned.metrics]
    # train/* logged every 9 steps; one evaluation of the validation file per epoch (n_evals=3)
    assert steps == [(step, True, step in (45, 90, 135)) for step in range(9, 136, 9)]
    evaluated = [(m.step, m.epoch, m.valid_loss) for m in tuned.metrics if m.valid_loss is not None]
    assert evaluated == [(45, 1.0, 0.6418), (90, 2.0, 0.4733), (135, 3.0, 0.4406)]
    assert (tuned.metrics[0].train_loss, tuned.metrics[-1].train_loss) == (1.3469, 0.3068)
    assert tuned.record.trained_tokens == 98043


@pytest.mark.parametrize("provider", PROVIDERS)
def test_failed_job_gives_the_services_message_verbatim(provider):
    transport = ReplayTransport(cassette_path(provider, "fit_failed"))
    with pytest.raises(JobFailed) as err:
        make_tuner(provider, transport).fit(SAMPLE, holdout=0.1)
    record = Ledger().jobs()[0]
    assert record.status is JobStatus.FAILED and record.error
    assert record.error in str(err.value)
    transport.assert_all_played()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_lost_create_answer_is_reconciled_without_a_second_paid_job(provider):
    replay = ReplayTransport(cassette_path(provider, "fit_lost_create"))
    transport = LostResponseTransport(replay, method="POST", path=CREATE[provider])
    tuned = make_tuner(provider, transport).fit(SAMPLE, holdout=0.1)
    assert tuned.record.status is JobStatus.SUCCEEDED
    assert len(replay.requests("POST", CREATE[provider])) == 1
    transport.assert_all_played()
    assert len(Ledger().jobs()) == 1


def test_no_wait_returns_a_job_that_can_be_cancelled():
    transport = ReplayTransport(cassette_path("together", "fit_cancelled"))
    job = make_tuner("together", transport).fit(SAMPLE, holdout=0.1, wait=False)
    assert isinstance(job, Job) and not job.status.terminal
    assert job.cancel().raw_status == "cancel_requested"
    assert job.wait().status is JobStatus.CANCELLED
    with pytest.raises(JobFailed, match="cancelled"):
        job.result()
    transport.assert_all_played()


def test_a_job_is_reattached_from_the_ledger_after_a_restart():
    transport = ReplayTransport(cassette_path("together", "fit_happy_path"))
    job_id = make_tuner("together", transport).fit(SAMPLE, holdout=0.1, wait=False).id
    # a new process: nothing but the ledger and the job id
    again = Job.attach(job_id, api_key="test-key", poll_interval=0, transport=transport)
    assert again.wait().status is JobStatus.SUCCEEDED
    tuned = again.result()
    assert tuned.endpoint.complete(QUESTION).text
    transport.assert_all_played()


def test_cli_fit_then_jobs_commands_round_trip(capsys, monkeypatch):
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path("together", "fit_happy_path")))
    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")

    def run(*args: str) -> tuple[int, str, str]:
        sys.argv = ["tuneproxy", *args]
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    code, out, err = run("fit", str(SAMPLE), "-p", "together", "-m", MODELS["together"], "--epochs", "3",
                         "--batch-size", "8", "--seed", "42", "--suffix", "support-bot", "--holdout", "0.1",
                         "--poll-interval", "0", "--json")
    assert code == 0, err
    done = json.loads(out)
    assert done["status"] == "succeeded" and done["costs"][-1]["kind"] == "billed"
    monkeypatch.delenv("TUNEPROXY_CASSETTE")
    code, out, _ = run("jobs", "list", "--json")
    assert [j["job_id"] for j in json.loads(out)] == [done["job_id"]]
    code, out, _ = run("jobs", "events", done["job_id"], "--offline", "--json")
    assert code == 0 and json.loads(out)
    code, out, _ = run("jobs", "show", done["job_id"][:8], "--offline")
    assert code == 0 and "billed: $" in out and "test-key" not in out
    code, out, _ = run("jobs", "show", done["job_id"], "--offline", "--json")
    assert json.loads(out)["tuned_model"] == done["tuned_model"]


def test_cli_fit_with_a_wrong_key_is_a_clear_service_error_without_the_key(capsys, monkeypatch, isolated_home):
    provider, secret = "together", "tgp_v1_wrongwrongwrongwrong0123"  # (OpenAI's 401: the next test)
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path(provider, "unauthorized")))
    monkeypatch.setenv("TUNEPROXY_RECORD", "0")
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", secret)
    sys.argv = ["tuneproxy", "fit", str(SAMPLE), "-p", provider, "-m", MODELS[provider], "--poll-interval", "0"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 3
    assert "rejected the API key" in err and "TOGETHER_API_KEY" in err and "HTTP 401" in err
    assert secret not in out + err and "Traceback" not in out + err
    ledger = Ledger()
    intent = ledger.db.execute("SELECT intent_id FROM submissions").fetchone()[0]
    assert ledger.submission(intent).state == "failed"
    ledger.close()
    for path in isolated_home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_openai_wrong_key_is_a_clear_error_and_the_key_is_nowhere(isolated_home):
    from tuneproxy.errors import AuthenticationFailed

    secret = "sk-this-key-is-wrong-0123456789abcdef"
    transport = ReplayTransport(cassette_path("openai", "unauthorized"))
    tuner = Tuner("openai", MODELS["openai"], api_key=secret, poll_interval=0, show_progress=False,
                  clock=before_the_sunset, transport=transport)
    with pytest.raises(AuthenticationFailed) as err:
        tuner.fit(SAMPLE)
    assert "OPENAI_API_KEY" in str(err.value) and secret not in str(err.value) + repr(err.value)
    tuner.ledger.close()
    for path in isolated_home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_rerun_after_a_crash_finds_the_job_instead_of_paying_again():
    from tuneproxy.recording import Cassette

    recorded = Cassette.load(cassette_path("openai", "fit_lost_create"))
    create_at = next(i for i, x in enumerate(recorded.interactions)
                     if x.request.method == "POST" and x.request.url.endswith(CREATE["openai"]))
    before = recorded.model_copy(update={"interactions": recorded.interactions[:create_at + 1]})
    after_crash = recorded.model_copy(update={"interactions": recorded.interactions[create_at + 1:]})

    class DiesWithTheCreateInFlight(ReplayTransport):
        def _exchange(self, request):
            interaction = self.next_interaction(capture_request(request))
            if request.method == "POST" and request.url.path == CREATE["openai"]:
                raise KeyboardInterrupt  # the client process dies; the service may have made the job
            return build_response(request, interaction.response)

    with pytest.raises(KeyboardInterrupt):
        make_tuner("openai", DiesWithTheCreateInFlight(before)).fit(SAMPLE, holdout=0.1)
    # the first client wrote its intent and sent the create: the rerun may only look the job up
    transport = ReplayTransport(after_crash)
    tuned = make_tuner("openai", transport).fit(SAMPLE, holdout=0.1)
    assert tuned.record.status is JobStatus.SUCCEEDED
    assert transport.requests("POST") == []
    transport.assert_all_played()
    assert Ledger().submission(tuned.record.intent_id).state == "submitted"


def test_a_second_fit_of_the_same_request_while_the_first_is_uploading_waits_and_follows_its_job():
    import threading
    import time

    first_uploading, second_waiting = threading.Event(), threading.Event()

    class SlowUpload(ReplayTransport):
        def _exchange(self, request):
            if request.method == "POST" and not first_uploading.is_set():
                first_uploading.set()  # the first fit holds its intent and is sending its data...
                assert second_waiting.wait(timeout=60)  # ...until the second fit of the same request waits
            return super()._exchange(request)

    def waiting(seconds: float) -> None:
        second_waiting.set()
        time.sleep(0.01)

    transport = SlowUpload(cassette_path("openai", "fit_happy_path"))
    outcome: dict[str, object] = {}
    first = threading.Thread(target=lambda: outcome.update(
        job=make_tuner("openai", transport).fit(SAMPLE, holdout=0.1, wait=False)))
    first.start()
    assert first_uploading.wait(timeout=60)
    nothing = ReplayTransport(Cassette(provider="openai", scenario="none", source="authored from API reference",
                                       description="no request may be made"))
    try:
        with pytest.warns(ReattachedWarning, match="this same request .* waiting for its job"):
            second = make_tuner("openai", nothing, sleep=waiting).fit(SAMPLE, holdout=0.1, wait=False)
    finally:
        second_waiting.set()
        first.join(timeout=60)
    assert nothing.log == []
    assert second.id == outcome["job"].id
    assert len(transport.requests("POST", CREATE["openai"])) == 1
    assert len(Ledger().db.execute("SELECT * FROM submissions").fetchall()) == 1


def test_a_finished_jobs_bill_is_not_repriced_when_the_job_is_read_again(monkeypatch):
    from tuneproxy.prices import Price
    from tuneproxy.providers.openai import OpenAIProvider

    recorded = Cassette.load(cassette_path("openai", "fit_happy_path"))
    tuned = make_tuner("openai", ReplayTransport(recorded)).fit(SAMPLE, holdout=0.1)
    billed = [c for c in tuned.costs if c.kind == "billed"]
    # later the price list changes; reading the finished job again must leave its bill as it was
    monkeypatch.setattr(OpenAIProvider, "prices", lambda self: [Price(
        provider="openai", kind="training", model=tuned.base_model, usd=100.0, per=1_000_000, source="test",
        as_of=dt.date(2026, 11, 29))])
    read = next(i for i in reversed(recorded.interactions)
                if i.request.method == "GET" and i.request.url.endswith(f"/fine_tuning/jobs/{tuned.job_id}"))
    again = Job.attach(tuned.job_id, api_key="test-key", transport=ReplayTransport(
        recorded.model_copy(update={"interactions": [read]})))
    assert again.refresh().status is JobStatus.SUCCEEDED
    assert [c for c in Ledger().job_costs(tuned.record) if c.kind == "billed"] == billed


def _no_requests(provider: str) -> ReplayTransport:
    return ReplayTransport(Cassette(provider=provider, scenario="none", source="authored from API reference",
                                    description="no request may be made"))


def test_rerunning_the_same_fit_follows_the_running_job_instead_of_paying_again():

    first = make_tuner("together", ReplayTransport(cassette_path("together", "fit_happy_path")))
    job = first.fit(SAMPLE, holdout=0.1, wait=False)
    nothing = _no_requests("together")
    with pytest.warns(ReattachedWarning, match=job.id):
        again = make_tuner("together", nothing).fit(SAMPLE, holdout=0.1, wait=False)
    assert again.id == job.id and nothing.log == []
    assert len(Ledger().db.execute("SELECT * FROM submissions").fetchall()) == 1


def test_resubmit_asks_for_a_new_job_even_while_one_runs():
    make_tuner("together", ReplayTransport(cassette_path("together", "fit_happy_path"))).fit(
        SAMPLE, holdout=0.1, wait=False)
    nothing = _no_requests("together")
    with pytest.raises(ProviderError):  # it really tries: its upload is the first request this replay refuses
        make_tuner("together", nothing).fit(SAMPLE, holdout=0.1, wait=False, resubmit=True)
    assert nothing.log  # it went to the service for a new job
    assert len(Ledger().db.execute("SELECT * FROM submissions").fetchall()) == 2


def test_a_succeeded_job_is_returned_again_only_when_reuse_is_asked():

    tuned = make_tuner("together", ReplayTransport(cassette_path("together", "fit_happy_path"))).fit(
        SAMPLE, holdout=0.1)
    nothing = _no_requests("together")
    with pytest.warns(ReattachedWarning, match="succeeded"):
        again = make_tuner("together", nothing).fit(SAMPLE, holdout=0.1, reuse=True)
    assert again.job_id == tuned.job_id and again.model == tuned.model and nothing.log == []
    with pytest.raises(ProviderError):  # without reuse a finished request trains again
        make_tuner("together", nothing).fit(SAMPLE, holdout=0.1)
    assert nothing.log  # it tried to


def test_ctrl_c_while_following_says_the_job_keeps_running_and_how_to_follow_it(capsys, monkeypatch):
    import tuneproxy.recording as recording

    class InterruptedWhileWaiting(ReplayTransport):
        def _exchange(self, request):
            if request.method == "GET" and "/v1/fine-tunes/ft-" in str(request.url) and self.requests("POST",
                                                                                            CREATE["together"]):
                raise KeyboardInterrupt  # the user presses Ctrl-C while the job is being followed
            return super()._exchange(request)

    monkeypatch.setattr(recording, "transport_from_env",
                        lambda provider: InterruptedWhileWaiting(cassette_path("together", "fit_happy_path")))
    monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
    sys.argv = ["tuneproxy", "fit", str(SAMPLE), "-p", "together", "-m", MODELS["together"], "--epochs", "3",
                "--batch-size", "8", "--seed", "42", "--suffix", "support-bot", "--holdout", "0.1",
                "--poll-interval", "0"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    _, err = capsys.readouterr()
    job_id = Ledger().jobs()[0].job_id
    assert exit_info.value.code == 130
    assert f"Job {job_id} keeps running" in err and f"tuneproxy jobs wait {job_id}" in err


def test_losing_the_service_while_following_names_the_job_and_how_to_pick_it_up():
    class OutageAfterCreate(ReplayTransport):
        def _exchange(self, request):
            if request.method == "GET" and self.requests("POST", CREATE["openai"]):
                raise library_of(request).ConnectError("network is unreachable", request=request)
            return super()._exchange(request)

    transport = OutageAfterCreate(cassette_path("openai", "fit_happy_path"))
    with pytest.raises(ProviderError) as caught:
        make_tuner("openai", transport, sleep=lambda seconds: None).fit(SAMPLE, holdout=0.1)
    job_id = Ledger().jobs()[0].job_id
    assert f"`tuneproxy jobs wait {job_id}`" in str(caught.value) and "keeps running" in str(caught.value)
    assert len(transport.requests("POST", CREATE["openai"])) == 1
