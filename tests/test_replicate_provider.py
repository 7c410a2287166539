"""What only Replicate does, through the real replicate SDK replaying cassettes (no network, no sleeps).

The behaviour every backend shares (lifecycle, retries, lost creates, keys, attach) is the contract suite's:
tests/contract/test_provider_contract.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.contract.cases import REPLICATE, REPLICATE_VERSION, HappyRun, paths, run_happy_path, sent, training_file
from tuneproxy import Tuner
from tuneproxy.contract import GenerationParams, Hyperparameters, Stats
from tuneproxy.costs import bill_for, price_estimate
from tuneproxy.dataset.examples import Example
from tuneproxy.errors import ConfigError, NotFound, ProviderError, UnsupportedParameter
from tuneproxy.providers.replicate import LLAMA_INPUTS, ReplicateProvider, log_events
from tuneproxy.recording import Interaction, JsonBody, RecordedRequest, RecordedResponse

JOB = REPLICATE.job_id
API = "https://api.replicate.com"
TRAINER = "meta/llama-2-7b"
CREATE_PATH = REPLICATE.create[1]


def provider(transport: Any = None, waits: list[float] | None = None, **options: Any) -> ReplicateProvider:
    p = REPLICATE.provider(transport, waits=waits, **options)
    assert isinstance(p, ReplicateProvider)
    return p


def happy_interactions() -> list[Interaction]:
    return REPLICATE.cassette("happy_path").interactions


def body_of(interaction: Interaction) -> dict[str, Any]:
    body = interaction.response.body
    assert isinstance(body, JsonBody)
    return body.json_


def answer(method: str, path: str, status: int, payload: dict[str, Any], **headers: str) -> Interaction:
    content = "application/json" if status < 400 else "application/problem+json"
    return Interaction(request=RecordedRequest(method=method, url=API + path),
                       response=RecordedResponse(status=status, headers={"content-type": content, **headers},
                                                 body=JsonBody(json=payload)))


def with_body(interaction: Interaction, **changes: Any) -> Interaction:
    response = interaction.response.model_copy(update={"body": JsonBody(json={**body_of(interaction), **changes})})
    return interaction.model_copy(update={"response": response})


def any_body(interaction: Interaction) -> Interaction:
    """``interaction`` matching its method and URL whatever the request body."""
    return interaction.model_copy(update={"request": interaction.request.model_copy(update={"body": None})})


def problem(status: int, detail: str) -> dict[str, Any]:
    return {"title": "Not found" if status == 404 else "Error", "detail": detail, "status": status}


# the happy path's interactions, by what they are
UPLOAD, DESTINATION, CREATE, RUNNING, RUNNING_AGAIN, SUCCEEDED, PREDICTION = happy_interactions()


@pytest.fixture
def happy(tmp_path: Path) -> HappyRun:
    return run_happy_path(REPLICATE, tmp_path)


# --------------------------------------------------------------------------- the client


def test_the_sdk_retry_layer_is_not_used_so_no_read_is_retried_twice_over_or_sleeps_for_real() -> None:
    from replicate.client import RetryTransport

    transport = REPLICATE.replay("rate_limited")
    p = provider(transport, waits=(waits := []))
    assert p.client._client._transport is transport and not isinstance(p.client._client._transport, RetryTransport)
    p.refresh(JOB)
    assert waits == [2.0] and len(transport.log) == 2  # tuneproxy's one retry, through the provider's sleep


def test_the_key_is_sent_as_a_bearer_token_and_never_shown(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(401, json=problem(401, "You did not pass a valid authentication token"))

    p = provider(httpx.MockTransport(handler))
    with pytest.raises(ProviderError) as caught:
        p.upload(training_file(tmp_path))
    assert seen == [f"Bearer {REPLICATE.key}"]
    assert REPLICATE.key not in str(caught.value) and REPLICATE.key not in repr(p.client)


# --------------------------------------------------------------------------- upload and create


def test_the_upload_is_named_by_the_url_the_trainer_reads(happy: HappyRun) -> None:
    assert happy.upload.id == body_of(UPLOAD)["urls"]["get"]
    assert happy.upload.bytes == body_of(UPLOAD)["size"]


def test_the_training_input_uses_the_trainers_names_and_tags_the_data_url(happy: HappyRun) -> None:
    assert happy.transport is not None
    body = sent(happy.transport, "POST", CREATE_PATH)
    assert body["destination"] == "acme/support-bot"
    assert body["input"] == {"num_train_epochs": 3, "learning_rate": 0.0002, "train_batch_size": 4, "lora_rank": 16,
                             "lora_alpha": 32, "lora_dropout": 0.05, "seed": 42,
                             "train_data": f"{happy.upload.id}#tp8f14e45fce"}
    assert isinstance(body["input"]["lora_alpha"], int)  # the trainer's lora_alpha is an integer input


def test_a_model_without_a_version_trains_its_latest_version() -> None:
    latest = "a" * 64
    model = {**body_of(DESTINATION), "owner": "meta", "name": "llama-2-7b", "visibility": "public",
             "latest_version": {"id": latest, "created_at": "2026-01-01T00:00:00Z", "cog_version": "0.9.4",
                                "openapi_schema": {}}}
    create = CREATE.model_copy(update={"request": CREATE.request.model_copy(update={
        "url": f"{API}/v1/models/meta/llama-2-7b/versions/{latest}/trainings", "body": None})})
    transport = REPLICATE.scripted([answer("GET", "/v1/models/meta/llama-2-7b", 200, model), DESTINATION, create])
    record = provider(transport).submit(REPLICATE.spec().model_copy(update={"model": TRAINER}))
    transport.assert_all_played()
    assert paths(transport)[2] == ("POST", f"/v1/models/meta/llama-2-7b/versions/{latest}/trainings")
    assert record.base_model == f"{TRAINER}:{REPLICATE_VERSION}"  # what the service says the training runs


def test_an_unknown_trainer_version_is_not_found_saying_where_to_look() -> None:
    refused = CREATE.model_copy(update={"response": RecordedResponse(
        status=404, headers={"content-type": "application/problem+json"},
        body=JsonBody(json=problem(404, "The requested resource could not be found.")))})
    transport = REPLICATE.scripted([DESTINATION, refused])
    with pytest.raises(NotFound) as caught:
        provider(transport).submit(REPLICATE.spec())
    message = str(caught.value)
    assert f"no trainer {TRAINER}:{REPLICATE_VERSION}" in message and f"replicate.com/{TRAINER}/versions" in message
    assert caught.value.exit_code == 3


def test_a_missing_destination_is_not_found_saying_how_to_create_it_and_nothing_is_trained() -> None:
    transport = REPLICATE.scripted([answer("GET", "/v1/models/acme/support-bot", 404,
                                           problem(404, "The requested resource could not be found."))])
    with pytest.raises(NotFound) as caught:
        provider(transport).submit(REPLICATE.spec())
    assert "acme/support-bot does not exist" in str(caught.value) and "create_destination=true" in str(caught.value)
    assert [m for m, _ in paths(transport)] == ["GET"]  # no training was created


def test_the_destination_is_created_private_only_when_asked() -> None:
    created = answer("POST", "/v1/models", 201, body_of(DESTINATION))
    transport = REPLICATE.scripted([answer("GET", "/v1/models/acme/support-bot", 404, problem(404, "not found")),
                                    created, CREATE])
    record = provider(transport, create_destination=True, destination_hardware="gpu-l40s").submit(REPLICATE.spec())
    transport.assert_all_played()
    assert sent(transport, "POST", "/v1/models") == {"owner": "acme", "name": "support-bot", "visibility": "private",
                                                     "hardware": "gpu-l40s",
                                                     "description": "Fine-tunes made with tuneproxy"}
    assert record.job_id == JOB


def test_without_a_destination_the_check_says_how_to_name_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_DESTINATION", raising=False)
    p = ReplicateProvider({}, api_key=REPLICATE.key)
    (problem_text,) = p.submit_problems()
    assert "REPLICATE_DESTINATION=owner/name" in problem_text and "create_destination=true" in problem_text
    assert p.check(REPLICATE.spec()) == []  # an estimate needs no destination
    monkeypatch.setenv("REPLICATE_DESTINATION", "acme/support-bot")
    assert p.submit_problems() == [] and p.destination == "acme/support-bot"


def test_a_model_that_is_not_owner_name_is_refused_before_anything() -> None:
    with pytest.raises(ConfigError, match="Replicate trains a trainer named owner/name"):
        Tuner("replicate", "llama-2-7b-hf")


# --------------------------------------------------------------------------- a configurable trainer


def test_another_trainers_input_names_come_from_the_options() -> None:
    p = provider(trainer_inputs={"epochs": "epochs", "learning_rate": "lr"}, data_input="dataset",
                 validation_input=None)
    assert set(p.capabilities.parameters) == {"epochs", "learning_rate"}
    spec = REPLICATE.spec().model_copy(update={"validation_file": "https://x/v.jsonl", "hyperparameters":
                                               Hyperparameters(epochs=2, learning_rate=0.001)})
    assert p.create_arguments(spec, REPLICATE_VERSION) == {"epochs": 2, "lr": 0.001,
                                                           "dataset": f"{spec.training_file}#tp8f14e45fce"}
    with pytest.raises(UnsupportedParameter, match="lora_rank"):
        p.create_arguments(REPLICATE.spec(), REPLICATE_VERSION)


def test_a_trainer_mapping_of_a_name_that_is_not_portable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="num_epochs"):
        provider(trainer_inputs={"num_epochs": "epochs"})


def test_the_default_trainer_is_the_documented_llama_one() -> None:
    p = provider()
    assert {k: s.wire for k, s in p.capabilities.parameters.items()} == LLAMA_INPUTS


# --------------------------------------------------------------------------- following and billing


def test_the_bill_is_predict_time_on_the_trainers_hardware(happy: HappyRun) -> None:
    done = happy.records[-1]
    seconds = body_of(SUCCEEDED)["metrics"]["predict_time"]
    assert [(q.kind, q.amount, q.hardware) for q in done.billable] == [("hardware_seconds", seconds,
                                                                        "8x gpu-a40-large")]
    bill = bill_for(happy.provider, done)
    assert bill is not None and bill.usd == pytest.approx(seconds * 0.0058)  # the catalogue's 8x A40 rate
    assert done.tuned_model == body_of(SUCCEEDED)["output"]["version"]


def test_a_running_training_bills_nothing_yet(happy: HappyRun) -> None:
    assert all(not r.billable for r in happy.records[:-1])


def test_the_estimate_is_seconds_on_the_trainers_hardware_with_its_assumptions_said() -> None:
    p = provider(tokens_per_second=1000.0, setup_seconds=100.0)
    estimate = p.estimate(Stats(examples=10, total_tokens=20_000), REPLICATE.spec())
    (quantity,) = estimate.quantities
    assert (quantity.kind, quantity.amount, quantity.low, quantity.high) == ("hardware_seconds", 160.0, 80.0, 320.0)
    assert "assumed" in estimate.basis and "8x gpu-a40-large" in estimate.basis
    priced = price_estimate(p, estimate, Stats(examples=10, total_tokens=20_000))
    assert priced.usd == pytest.approx(160 * 0.0058) and priced.usd_low == pytest.approx(80 * 0.0058)


def test_log_lines_become_events_with_losses_and_progress_bars_are_left_out() -> None:
    logs = "\n".join([
        "Loading training data",
        "  5%|▌         | 1/20 [00:01<00:20,  1.02s/it]",
        "{'loss': 2.1874, 'grad_norm': 1.9, 'learning_rate': 0.0002, 'epoch': 0.33}",
        "",
        "{'eval_loss': 1.7113, 'eval_runtime': 1.91, 'epoch': 1.0}",
        "step=40 loss=0.912",
        "Traceback (most recent call last):",
    ])
    events = log_events(logs, when=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert [e.id for e in events] == ["log-1", "log-3", "log-5", "log-6", "log-7"]
    assert (events[1].train_loss, events[1].epoch) == (2.1874, 0.33)
    assert (events[2].valid_loss, events[2].train_loss) == (1.7113, None)
    assert (events[3].step, events[3].train_loss) == (40, 0.912)
    assert events[4].level == "error"


def test_the_happy_paths_events_carry_the_trainers_losses(happy: HappyRun) -> None:
    losses = [e.train_loss for e in happy.events if e.train_loss is not None]
    assert losses == [2.1874]  # the running read's log: one loss line so far


def test_a_failed_training_ends_its_events_with_the_error() -> None:
    transport = REPLICATE.replay("failed_validation")
    p = provider(transport)
    job = p.submit(REPLICATE.spec())
    failed = REPLICATE.cassette("failed_validation").interactions[-1]
    events = provider(REPLICATE.scripted([failed])).events(job.job_id)
    assert events[-1].id == "error" and events[-1].level == "error"
    assert events[-1].message == REPLICATE.failure_message


# --------------------------------------------------------------------------- predictions


def test_the_prompt_sent_is_rendered_as_the_training_data_was() -> None:
    p = provider()
    example = Example(line=1, record={"messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "Ticket: charged twice"},
                                                   {"role": "assistant", "content": '{"category": "billing"}'}]},
                      format="chat")
    trained = p.serialize(example)
    endpoint = p.endpoint(f"acme/support-bot:{'b' * 64}")
    sent_input = endpoint.request_input(example.prompt_messages(), GenerationParams(max_tokens=64))
    assert sent_input["prompt"] == trained["prompt"] and trained["completion"] == '{"category": "billing"}'
    assert sent_input["max_new_tokens"] == 64


def test_a_prediction_not_done_at_once_is_polled_until_it_is(happy: HappyRun) -> None:
    started = with_body(PREDICTION, status="starting", output=None, metrics={}, completed_at=None)
    prediction_id = body_of(PREDICTION)["id"]
    poll = answer("GET", f"/v1/predictions/{prediction_id}", 200, body_of(PREDICTION))
    limited = answer("GET", f"/v1/predictions/{prediction_id}", 429, {"title": "Throttled", "detail": "slow down",
                                                                      "status": 429}, **{"retry-after": "3"})
    processing = answer("GET", f"/v1/predictions/{prediction_id}", 200,
                        {**body_of(PREDICTION), "status": "processing", "output": ["2"]})
    transport = REPLICATE.scripted([started, processing, limited, poll])
    waits: list[float] = []
    completion = provider(transport, waits=waits, prediction_poll_seconds=0.5).endpoint(
        happy.records[-1].tuned_model or "").complete([{"role": "user", "content": "What is 2 plus 2?"}])
    transport.assert_all_played()
    assert completion.text == "2 plus 2 is 4." and waits == [0.5, 0.5, 3.0]


def test_a_failed_prediction_is_an_error_with_replicates_words(happy: HappyRun) -> None:
    failed = any_body(with_body(PREDICTION, status="failed", output=None, error="CUDA out of memory"))
    with pytest.raises(ProviderError, match="CUDA out of memory"):
        provider(REPLICATE.scripted([failed])).endpoint(happy.records[-1].tuned_model or "").complete(
            [{"role": "user", "content": "hi"}])


def test_the_finish_reason_is_length_when_every_allowed_token_was_used(happy: HappyRun) -> None:
    endpoint = provider(REPLICATE.scripted([any_body(PREDICTION)])).endpoint(happy.records[-1].tuned_model or "")
    completion = endpoint.complete([{"role": "user", "content": "What is 2 plus 2?"}], max_tokens=6)
    assert completion.finish_reason == "length" and completion.usage.completion_tokens == 6


def test_a_prediction_is_priced_by_its_seconds_on_the_destinations_hardware(happy: HappyRun) -> None:
    completion = happy.completion
    assert completion is not None
    assert completion.cost_usd == pytest.approx(body_of(PREDICTION)["metrics"]["predict_time"] * 0.000725)


def test_a_base_model_by_name_is_asked_through_its_model_predictions() -> None:
    official = answer("POST", "/v1/models/meta/llama-2-7b-chat/predictions", 201,
                      {**body_of(PREDICTION), "model": "meta/llama-2-7b-chat"})
    transport = REPLICATE.scripted([official])
    completion = provider(transport).endpoint("meta/llama-2-7b-chat").complete([{"role": "user", "content": "hi"}])
    assert completion.text == "2 plus 2 is 4."
    assert sent(transport, "POST", "/v1/models/meta/llama-2-7b-chat/predictions")["input"]["prompt"] == (
        "user: hi\nassistant: ")


def test_the_base_of_a_training_is_served_by_the_same_version() -> None:
    assert provider().inference_model(f"{TRAINER}:{REPLICATE_VERSION}") == f"{TRAINER}:{REPLICATE_VERSION}"
