"""Paid dedicated deployments on Together (the Deployable verbs), replayed through the real together SDK.

Cassettes: fixtures/cassettes/together/deploy_happy_path.json (the provider's calls) and deploy_cli.json (what
`tuneproxy deployments create` then `deployments delete` send). Nothing sleeps: every provider is given a
``sleep`` that fails the test.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import typing
from typing import Any

import pytest
from together.types.deployment_status import DeploymentStatus
from together.types.endpoint_deployment_summary import EndpointDeploymentSummary

from tuneproxy import cli, registry
from tuneproxy.contract import Deployable, JobRecord, JobStatus, UnknownStatusWarning
from tuneproxy.errors import ConfigError, ProviderError
from tuneproxy.ledger import Ledger
from tuneproxy.providers.openai import OpenAIProvider
from tuneproxy.providers.together import TogetherProvider
from tuneproxy.recording import (
    Cassette,
    Interaction,
    JsonBody,
    LostResponseTransport,
    RecordedRequest,
    RecordedResponse,
    ReplayTransport,
    cassette_path,
    transport_from_env,
)
from tuneproxy.tuned import TunedModel

PROJECT = "proj_4Qx8Lm2Vb7Nc"
JOB = "ft-3c1f9a2e-7b4d-4e8a-9f01-5d6c7b8a9e0f"
BASE = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
TUNED = "acme/Meta-Llama-3.1-8B-Instruct-Reference-support-bot-tp8f14e45fce-9a2e7b4d"
ENDPOINT = f"https://api.together.ai/v2/projects/{PROJECT}/endpoints/ep_6Rt1Yu8Io3Pa"
DEPLOYMENT_URL = f"{ENDPOINT}/deployments/dep_2Ws5Ed8Rf1Tg"
DEPLOYMENT_ID = f"projects/{PROJECT}/endpoints/ep_6Rt1Yu8Io3Pa/deployments/dep_2Ws5Ed8Rf1Tg"
SERVING = "acme/support-bot-tp8f14e45fce-9a2e7b4d-20260101002000/support-bot-tp8f14e45fce-9a2e7b4d"
KEY = "fake-together-key-0123456789"
QUESTION = [{"role": "user", "content": "What is 2 plus 2?"}]
# The v2 deployment states of the SDK's types, and the v1 dedicated-endpoint states of Together's OpenAPI spec.
V2_STATES = {
    "DEPLOYMENT_STATE_PROVISIONING": "creating", "DEPLOYMENT_STATE_READY": "ready",
    "DEPLOYMENT_STATE_SCALING": "ready", "DEPLOYMENT_STATE_DEGRADED": "ready",
    "DEPLOYMENT_STATE_FAILED": "failed", "DEPLOYMENT_STATE_STOPPING": "stopping",
    "DEPLOYMENT_STATE_STOPPED": "stopped",
}
V1_ENDPOINT_STATES = {"PENDING", "STARTING", "STARTED", "STOPPING", "STOPPED", "ERROR"}
# indexes in deploy_happy_path: the hardware listing, the deployment's create, the read that finds it ready
LISTING, CREATE, READ_READY = 4, 6, 10


@pytest.fixture(autouse=True)
def _no_project_or_base_url_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_PROJECT_ID", raising=False)
    monkeypatch.delenv("TOGETHER_BASE_URL", raising=False)


def at_deploy_time() -> dt.datetime:
    return dt.datetime(2026, 1, 1, 0, 20, tzinfo=dt.timezone.utc)


def never_sleep(seconds: float) -> None:
    raise AssertionError(f"a test tried to sleep {seconds}s")


def happy() -> list[Interaction]:
    return Cassette.load(cassette_path("together", "deploy_happy_path")).interactions


def scripted(interactions: list[Interaction]) -> ReplayTransport:
    return ReplayTransport(Cassette(provider="together", scenario="scripted", source="authored from API reference",
                                    description="built by a test", interactions=interactions))


def provider(transport: Any, **options: Any) -> TogetherProvider:
    return TogetherProvider({"project_id": PROJECT, **options}, api_key=KEY, transport=transport,
                            clock=at_deploy_time, sleep=never_sleep)


def answer(method: str, url: str, json_body: Any, *, status: int = 200, sent: Any = None) -> Interaction:
    """One scripted exchange: the request expected (with its JSON body, if ``sent``) and the answer."""
    return Interaction(
        request=RecordedRequest(method=method, url=url, headers={"authorization": "Bearer REDACTED"},
                                body=JsonBody(json=sent) if sent is not None else None),
        response=RecordedResponse(status=status, headers={"content-type": "application/json"},
                                  body=JsonBody(json=json_body)))


def deployment_in(state: str) -> Interaction:
    """The happy path's read of the deployment, in ``state``."""
    read = happy()[READ_READY].model_copy(deep=True)
    assert isinstance(read.response.body, JsonBody)
    read.response.body.json_["status"]["state"] = state
    return read


def refusal(message: str) -> dict[str, Any]:
    """An error body in the shape of Together's v1 errors (the SDK types do not describe v2 error bodies)."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


# ---------------------------------------------------------------------------------------------- deploy


def test_deploy_returns_a_creating_deployment_on_the_hardware_and_price_the_service_said() -> None:
    transport = scripted(happy()[:CREATE + 1])
    deployment = provider(transport).deploy(TUNED)
    transport.assert_all_played()
    assert deployment.state == "creating" and deployment.raw_state == "DEPLOYMENT_STATE_PROVISIONING"
    assert deployment.hardware == "1xnvidia-h100-80gb"
    assert deployment.usd_per_hour == pytest.approx(3.49)  # the listing's 349 US cents per hour, one replica
    assert deployment.deployment_id == DEPLOYMENT_ID and deployment.serving_model == SERVING
    assert deployment.model == f"projects/{PROJECT}/models/ml_5Hd9Qw2Zr7Tx/revisions/rv_8Nc3Vb6Lp1Ks"


def test_without_hardware_the_cheapest_listed_hardware_with_capacity_is_chosen() -> None:
    transport = scripted(happy()[:CREATE + 1])
    provider(transport).deploy(TUNED)
    [create] = transport.requests("POST", f"/v2/projects/{PROJECT}/endpoints/ep_6Rt1Yu8Io3Pa/deployments")
    assert isinstance(create.body, JsonBody)
    # the A100 config is cheaper (259 cents/hour) but the listing reports no headroom for it; the H200 costs more
    assert create.body.json_["config"] == "projects/proj_9Tg3Wr6Yp1Zs/configs/cr_4Tz8Hq1Mv6Rb"
    assert create.body.json_["autoscaling"] == {"minReplicas": 1, "maxReplicas": 1}


def test_given_hardware_is_passed_through_as_the_config_for_that_hardware() -> None:
    interactions = happy()[:CREATE + 1]
    create = interactions[CREATE].model_copy(deep=True)
    assert isinstance(create.request.body, JsonBody) and isinstance(create.response.body, JsonBody)
    create.request.body.json_["config"] = "projects/proj_9Tg3Wr6Yp1Zs/configs/cr_9Lm2Px7Qd3Wf"
    create.response.body.json_.update(config="projects/proj_9Tg3Wr6Yp1Zs/configs/cr_9Lm2Px7Qd3Wf",
                                      configId="cr_9Lm2Px7Qd3Wf", hardware="1xnvidia-a100-80gb")
    transport = scripted([*interactions[:CREATE], create])
    deployment = provider(transport).deploy(TUNED, hardware="1xnvidia-a100-80gb")
    transport.assert_all_played()
    assert deployment.hardware == "1xnvidia-a100-80gb" and deployment.usd_per_hour == pytest.approx(2.59)


def test_hardware_the_model_has_no_config_for_is_a_config_error_listing_the_choices_and_nothing_is_created() -> None:
    transport = scripted(happy()[:LISTING + 1])
    with pytest.raises(ConfigError) as caught:
        provider(transport).deploy(TUNED, hardware="8xnvidia-h100-80gb")
    assert "8xnvidia-h100-80gb" in str(caught.value)
    assert "1xnvidia-h100-80gb (config cr_4Tz8Hq1Mv6Rb, $3.49/hour)" in str(caught.value)
    assert transport.requests("POST") == []


def test_without_a_project_deploy_is_a_config_error_naming_the_option_and_nothing_is_sent() -> None:
    transport = scripted([])
    bare = TogetherProvider(api_key=KEY, transport=transport, sleep=never_sleep)
    with pytest.raises(ConfigError) as caught:
        bare.deploy(TUNED)
    assert "-o project_id=" in str(caught.value) and "TOGETHER_PROJECT_ID" in str(caught.value)
    assert transport.log == []


def test_a_lost_deployment_create_is_found_on_its_new_endpoint_instead_of_left_billing_unseen() -> None:
    created = happy()[CREATE].response.body
    assert isinstance(created, JsonBody)
    inner = scripted([*happy()[:CREATE + 1],
                      answer("GET", f"{ENDPOINT}/deployments", {"data": [created.json_], "next_cursor": None})])
    path = f"/v2/projects/{PROJECT}/endpoints/ep_6Rt1Yu8Io3Pa/deployments"
    transport = LostResponseTransport(inner, method="POST", path=path)
    deployment = provider(transport).deploy(TUNED)
    transport.assert_all_played()
    assert deployment.deployment_id == DEPLOYMENT_ID and deployment.state == "creating"
    assert len(transport.requests("POST", path)) == 1


def test_a_refused_deployment_create_takes_the_new_endpoint_back() -> None:
    refused = answer("POST", f"{ENDPOINT}/deployments", refusal("config is not compatible with model"),
                     status=400)
    transport = scripted([*happy()[:CREATE], refused, answer("DELETE", ENDPOINT, {})])
    with pytest.raises(ProviderError) as caught:
        provider(transport).deploy(TUNED)
    transport.assert_all_played()
    assert caught.value.status_code == 400 and "config is not compatible" in str(caught.value)


# ---------------------------------------------------------------------------------------------- states


@pytest.mark.parametrize(("raw", "state"), sorted(V2_STATES.items()))
def test_deployment_maps_each_raw_state(raw: str, state: str) -> None:
    transport = scripted([deployment_in(raw), happy()[LISTING]])
    deployment = provider(transport).deployment(DEPLOYMENT_ID)
    assert (deployment.state, deployment.raw_state) == (state, raw)
    assert deployment.usd_per_hour == pytest.approx(3.49)


def test_every_documented_raw_state_is_in_the_state_map() -> None:
    documented = set(typing.get_args(DeploymentStatus.model_fields["state"].annotation))
    documented |= set(typing.get_args(EndpointDeploymentSummary.model_fields["state"].annotation))
    assert documented == set(V2_STATES)
    mapped = TogetherProvider.DEPLOYMENT_STATE_MAP
    assert documented | V1_ENDPOINT_STATES | {"deleted"} == set(mapped)
    assert {mapped[s] for s in V1_ENDPOINT_STATES} == {"creating", "ready", "stopping", "stopped", "failed"}


def test_an_unknown_raw_state_is_unknown_with_a_warning() -> None:
    transport = scripted([deployment_in("DEPLOYMENT_STATE_HIBERNATING"), happy()[LISTING]])
    with pytest.warns(UnknownStatusWarning, match="DEPLOYMENT_STATE_HIBERNATING"):
        deployment = provider(transport).deployment(DEPLOYMENT_ID)
    assert deployment.state == "unknown"


def test_a_short_deployment_id_is_read_in_the_configured_project() -> None:
    transport = scripted([deployment_in("DEPLOYMENT_STATE_READY"), happy()[LISTING]])
    assert provider(transport).deployment("ep_6Rt1Yu8Io3Pa/dep_2Ws5Ed8Rf1Tg").deployment_id == DEPLOYMENT_ID


# ---------------------------------------------------------------------------------------------- undeploy


def test_undeploy_deletes_the_deployment_and_its_endpoint_and_returns_stopped() -> None:
    transport = scripted([deployment_in("DEPLOYMENT_STATE_READY"), happy()[LISTING],
                          answer("DELETE", DEPLOYMENT_URL, {}), answer("DELETE", ENDPOINT, {})])
    stopped = provider(transport).undeploy(DEPLOYMENT_ID)
    transport.assert_all_played()
    assert (stopped.state, stopped.raw_state) == ("stopped", "deleted")
    assert stopped.deployment_id == DEPLOYMENT_ID and stopped.usd_per_hour == pytest.approx(3.49)


def test_a_refused_delete_scales_the_deployment_to_zero_and_reports_it_stopping() -> None:
    scaled = deployment_in("DEPLOYMENT_STATE_STOPPING").response.body
    assert isinstance(scaled, JsonBody)
    scaled.json_["autoscaling"] = {"minReplicas": 0, "maxReplicas": 0}
    transport = scripted([
        deployment_in("DEPLOYMENT_STATE_READY"), happy()[LISTING],
        answer("DELETE", DEPLOYMENT_URL, refusal("deployment must be stopped before it is deleted"), status=409),
        answer("PATCH", f"{DEPLOYMENT_URL}?updateMask=autoscaling", scaled.json_,
               sent={"autoscaling": {"minReplicas": 0, "maxReplicas": 0}}),
    ])
    stopping = provider(transport).undeploy(DEPLOYMENT_ID)
    transport.assert_all_played()
    assert (stopping.state, stopping.raw_state) == ("stopping", "DEPLOYMENT_STATE_STOPPING")


def test_the_happy_path_deploys_waits_until_ready_answers_on_the_serving_name_and_undeploys() -> None:
    transport = scripted(happy())
    together = provider(transport)
    deployment = together.deploy(TUNED)
    states = [deployment.state]
    while states[-1] != "ready" and len(states) < 5:
        states.append(together.deployment(deployment.deployment_id).state)
    assert states == ["creating", "creating", "ready"]
    reply = together.endpoint(deployment.serving_model or "").complete(QUESTION)
    assert reply.text == "2 plus 2 is 4."
    assert together.undeploy(deployment.deployment_id).state == "stopped"
    transport.assert_all_played()
    [chat] = transport.requests("POST", "/v1/chat/completions")
    assert isinstance(chat.body, JsonBody) and chat.body.json_["model"] == SERVING


# ---------------------------------------------------------------------------------------------- core and CLI


def tuned_record() -> JobRecord:
    return JobRecord(provider="together", job_id=JOB, base_model=BASE, status=JobStatus.SUCCEEDED,
                     raw_status="completed", tuned_model=TUNED)


def test_tuned_model_deploy_saves_the_deployment_in_the_ledger() -> None:
    ledger = Ledger()
    together = provider(scripted(happy()[:CREATE + 1]))
    assert isinstance(together, Deployable)
    deployment = TunedModel(together, tuned_record(), ledger).deploy()
    assert ledger.deployments() == [deployment]
    assert ledger.deployment("projects/proj_4Qx8").usd_per_hour == pytest.approx(3.49)


def test_deploy_on_a_backend_that_serves_tuned_models_without_deployments_is_a_config_error() -> None:
    openai = OpenAIProvider(api_key="sk-test-0000", transport=scripted([]))
    record = JobRecord(provider="openai", job_id="ftjob-1", base_model="gpt-4o-mini-2024-07-18",
                       status=JobStatus.SUCCEEDED, raw_status="succeeded", tuned_model="ft:gpt-4o-mini:acme::1")
    with pytest.raises(ConfigError, match="without a deployment"):
        TunedModel(openai, record, Ledger()).deploy()
    assert Ledger().deployments(active_only=False) == []


def test_a_reference_base_has_no_inference_model_and_base_endpoint_says_to_deploy_it() -> None:
    together = provider(scripted([]))
    assert together.inference_model(BASE) is None
    assert together.inference_model("meta-llama/Llama-3.3-70B-Instruct-Turbo") == (
        "meta-llama/Llama-3.3-70B-Instruct-Turbo")
    with pytest.raises(ConfigError) as caught:
        _ = TunedModel(together, tuned_record(), Ledger()).base_endpoint
    assert BASE in str(caught.value) and "Deploy it on a dedicated endpoint" in str(caught.value)


def test_cli_creates_lists_and_deletes_a_deployment_and_the_ledger_follows(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path("together", "deploy_cli")))
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    ledger = Ledger()
    intent, _ = ledger.claim_intent("together", BASE, "fp-deploy-cli", {"epochs": 3}, {"project_id": PROJECT})
    ledger.mark_submission(intent.intent_id, "submitted", job_id=JOB)
    ledger.save_job(tuned_record().model_copy(update={"intent_id": intent.intent_id}))
    # Each command builds its provider through the registry; one replay of the cassette serves both commands
    # (it holds what they send in turn), and the clock is the one the endpoint's name was authored with.
    replay = transport_from_env("together")
    real_create = registry.create

    def create(name: str, options: Any = None, **kwargs: Any) -> Any:
        kwargs.update(transport=kwargs.get("transport") or replay, clock=at_deploy_time, sleep=never_sleep)
        return real_create(name, options, **kwargs)

    monkeypatch.setattr(registry, "create", create)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["tuneproxy", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        out, err = capsys.readouterr()
        assert KEY not in out + err
        return exit_info.value.code, out, err

    code, out, err = run("deployments", "create", JOB[:11], "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["deployment_id"] == DEPLOYMENT_ID and created["state"] == "creating"
    assert [(d.deployment_id, d.state, d.usd_per_hour) for d in ledger.deployments()] == [
        (DEPLOYMENT_ID, "creating", 3.49)]
    code, out, _ = run("deployments", "list", "--json")
    assert code == 0 and [d["deployment_id"] for d in json.loads(out)] == [DEPLOYMENT_ID]

    code, out, err = run("deployments", "delete", DEPLOYMENT_ID)
    assert code == 0, err
    assert "Deleted deployment" in out
    assert ledger.deployments() == []
    [gone] = ledger.deployments(active_only=False)
    assert (gone.deployment_id, gone.state, gone.raw_state) == (DEPLOYMENT_ID, "stopped", "deleted")
    code, out, _ = run("deployments", "list", "--json")
    assert code == 0 and json.loads(out) == []
    assert isinstance(replay, ReplayTransport)
    replay.assert_all_played()


def test_cli_delete_of_a_deployment_the_service_no_longer_has_marks_it_stopped(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from tuneproxy import cli
    from tuneproxy.contract import Deployment
    from tuneproxy.ledger import Ledger
    from tuneproxy.recording import Cassette, Interaction

    path = "/v2/projects/proj_4Qx8Lm2Vb7Nc/endpoints/ep_6Rt1Yu8Io3Pa/deployments/dep_2Ws5Ed8Rf1Tg"
    gone = Cassette(provider="together", scenario="deployment_gone", source="authored from API reference",
                    description="the deployment was deleted elsewhere", interactions=[Interaction.model_validate({
                        "request": {"method": "GET", "url": f"https://api.together.ai{path}",
                                    "headers": {"authorization": "Bearer REDACTED", "accept": "application/json"}},
                        "response": {"status": 404, "headers": {"content-type": "application/json"},
                                     "body": {"json": {"error": {"message": "deployment not found",
                                                                 "type": "not_found"}}}}})])
    cassette = tmp_path / "gone.json"
    gone.save(cassette)
    Ledger().save_deployment(Deployment(
        provider="together", deployment_id=path.removeprefix("/v2/"), model="m", state="ready", raw_state="READY"))
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette))
    monkeypatch.setattr(sys, "argv", ["tuneproxy", "deployments", "delete", path.removeprefix("/v2/")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    assert "no longer bills" in out and Ledger().deployments(active_only=True) == []
