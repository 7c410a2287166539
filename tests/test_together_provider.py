"""What only Together does, through the real together SDK replaying cassettes (no network, no sleeps).

The behaviour every backend shares (lifecycle, retries, lost creates, keys, attach) is the contract suite's:
tests/contract/test_provider_contract.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.contract.cases import INTENT, TOGETHER, HappyRun, paths, run_happy_path, sent
from tuneproxy import registry
from tuneproxy.contract import Hyperparameters, Quantity, Stats
from tuneproxy.costs import bill_for, price_estimate
from tuneproxy.dataset.examples import Example
from tuneproxy.errors import ConfigError
from tuneproxy.providers.together import TogetherOptions, TogetherProvider, job_suffix
from tuneproxy.recording import Interaction, JsonBody, RecordedResponse, ReplayTransport

JOB = TOGETHER.job_id
FILE = TOGETHER.spec().training_file
SPEC = TOGETHER.spec()
OUTPUT_NAME = "acme/Meta-Llama-3.1-8B-Instruct-Reference-support-bot-tp8f14e45fce-9a2e7b4d"


def provider(transport: Any = None, waits: list[float] | None = None, **options: Any) -> TogetherProvider:
    p = TOGETHER.provider(transport, waits=waits, **options)
    assert isinstance(p, TogetherProvider)
    return p




@pytest.fixture
def happy(tmp_path: Path) -> HappyRun:
    """The contract's happy path, run once through the strict SDK; tests look at Together's own details."""
    return run_happy_path(TOGETHER, tmp_path)


# --------------------------------------------------------------------------- upload and create


def test_upload_is_post_then_302_put_to_the_presigned_url_then_preprocess(happy: HappyRun) -> None:
    log = happy.transport.log
    assert paths(happy.transport)[:3] == [
        ("POST", "/v1/files"),
        ("PUT", f"/{FILE}"),
        ("POST", f"/v1/files/{FILE}/preprocess"),
    ]
    assert log[1].url.startswith("https://together-fine-tuning-uploads.s3.")
    assert "authorization" not in log[1].headers  # the key never goes to the storage host
    assert happy.upload.id == FILE


def test_create_is_three_requests_limits_estimate_create(happy: HappyRun) -> None:
    (submit,) = happy.slices["submit"]
    assert [(i.request.method, urlsplit(i.request.url).path) for i in submit] == [
        ("GET", "/v1/fine-tunes/models/limits"),
        ("POST", "/v1/fine-tunes/estimate-price"),
        ("POST", "/v1/fine-tunes"),
    ]


def test_lora_settings_are_sent_with_lora_enabled(happy: HappyRun) -> None:
    assert sent(happy.transport, "POST", "/v1/fine-tunes")["training_type"] == {
        "type": "Lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_trainable_modules": "all-linear",
    }


def test_portable_hyperparameters_go_out_under_together_s_names(happy: HappyRun) -> None:
    body = sent(happy.transport, "POST", "/v1/fine-tunes")
    assert (body["n_epochs"], body["learning_rate"], body["batch_size"], body["random_seed"]) == (3, 0.0002, 16, 42)


def test_without_lora_settings_lora_is_not_forced() -> None:
    arguments = provider().create_arguments(SPEC.model_copy(update={"hyperparameters": Hyperparameters(epochs=2)}))
    assert "lora" not in arguments and arguments["n_epochs"] == 2


def test_the_suffix_carries_a_short_form_of_the_intent_id(happy: HappyRun) -> None:
    assert sent(happy.transport, "POST", "/v1/fine-tunes")["suffix"] == "support-bot-tp8f14e45fce"
    assert job_suffix(None, INTENT) == "tp8f14e45fce"


# --------------------------------------------------------------------------- options on the wire


def create_only(interactions: list[Interaction]) -> ReplayTransport:
    """A replay of these interactions that accepts any request body, so a test reads what was sent."""
    return TOGETHER.scripted([Interaction(request=i.request.model_copy(update={"body": None}), response=i.response)
                              for i in interactions])


def _submit_replay() -> ReplayTransport:
    return create_only(TOGETHER.cassette("happy_path").interactions[4:7])  # limits, estimate-price, create


def _estimate_replay() -> ReplayTransport:
    return create_only(TOGETHER.cassette("happy_path").interactions[3:4])  # estimate-price


WITH_HOLDOUT = SPEC.model_copy(update={"validation_file": "file-holdout"})


def test_the_n_evals_option_reaches_the_create_request() -> None:
    transport = _submit_replay()
    registry.create("together", {"n_evals": 2}, api_key=TOGETHER.key, transport=transport).submit(WITH_HOLDOUT)
    body = sent(transport, "POST", "/v1/fine-tunes")
    assert (body["n_evals"], body["validation_file"]) == (2, "file-holdout")


def test_without_the_option_a_holdout_is_evaluated_once_per_epoch() -> None:
    transport = _submit_replay()
    TogetherProvider(api_key=TOGETHER.key, transport=transport).submit(WITH_HOLDOUT)
    assert sent(transport, "POST", "/v1/fine-tunes")["n_evals"] == 3  # SPEC trains 3 epochs


def test_without_a_holdout_nothing_is_evaluated_whatever_the_option(happy: HappyRun) -> None:
    assert sent(happy.transport, "POST", "/v1/fine-tunes")["n_evals"] == 0  # the case is built with n_evals=2
    assert happy.provider.options.stored()["n_evals"] == 2


def test_train_on_inputs_false_reaches_the_create_request() -> None:
    transport = _submit_replay()
    registry.create("together", {"train_on_inputs": False}, api_key=TOGETHER.key, transport=transport).submit(SPEC)
    assert sent(transport, "POST", "/v1/fine-tunes")["training_method"] == {"method": "sft",
                                                                            "train_on_inputs": False}


def test_train_on_inputs_defaults_to_together_s_auto(happy: HappyRun) -> None:
    assert sent(happy.transport, "POST", "/v1/fine-tunes")["training_method"] == {"method": "sft",
                                                                                  "train_on_inputs": "auto"}


def test_the_options_reach_together_s_own_estimate_too() -> None:
    transport = _estimate_replay()
    p = provider(transport, n_evals=4, train_on_inputs=True)
    p.estimate(Stats(examples=10, total_tokens=1000), WITH_HOLDOUT)
    body = sent(transport, "POST", "/v1/fine-tunes/estimate-price")
    assert (body["n_evals"], body["validation_file"]) == (4, "file-holdout")
    assert body["training_method"] == {"method": "sft", "train_on_inputs": True}


def test_preference_data_trains_with_dpo_and_no_train_on_inputs() -> None:
    spec = SPEC.model_copy(update={"format": "preference"})
    arguments = provider(None, train_on_inputs=False).create_arguments(spec)
    assert arguments["training_method"] == "dpo" and "train_on_inputs" not in arguments


def test_a_misspelt_option_names_the_nearest_valid_one() -> None:
    with pytest.raises(ConfigError, match="'n_eval' \\(did you mean 'n_evals'\\?\\)"):
        TogetherProvider({"n_eval": 2}, api_key=TOGETHER.key)
    with pytest.raises(ConfigError, match="n_evals"):
        registry.create("together", {"n_eval": 2}, api_key=TOGETHER.key)


@pytest.mark.parametrize("options", [{"n_evals": -1}, {"train_on_inputs": "sometimes"}])
def test_an_option_out_of_its_range_is_a_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        TogetherProvider(options, api_key=TOGETHER.key)


def test_project_id_reaches_the_sdk_client() -> None:
    p = provider(project_id="proj-acme")
    assert isinstance(p.options, TogetherOptions) and p.client.project_id == "proj-acme"


# --------------------------------------------------------------------------- estimates and bills


def test_estimate_with_an_uploaded_file_is_together_s_own(happy: HappyRun) -> None:
    estimate = happy.estimate
    assert estimate.authoritative and estimate.usd == 0.97 and estimate.billable_tokens == 2_020_000
    assert estimate.quantities == [Quantity(kind="training_tokens", amount=2_020_000)]
    assert price_estimate(happy.provider, estimate) == estimate  # the service's figure is kept as it is


def test_estimate_before_upload_is_tokens_the_core_prices_by_model_size() -> None:
    spec = SPEC.model_copy(update={"training_file": "train.jsonl"})
    stats = Stats(examples=10, total_tokens=100_000)
    transport = _estimate_replay()
    p = provider(transport)
    estimate = p.estimate(stats, spec)
    assert transport.log == []  # Together is not asked: nothing is uploaded yet
    assert estimate.quantities == [Quantity(kind="training_tokens", amount=300_000)]
    assert estimate.usd is None and not estimate.authoritative
    assert price_estimate(p, estimate, stats).usd == pytest.approx(300_000 * 0.48 / 1_000_000)  # 8B: ≤16B bracket


def test_preference_training_is_priced_as_preference_tokens() -> None:
    spec = SPEC.model_copy(update={"training_file": "train.jsonl", "format": "preference"})
    stats = Stats(examples=10, total_tokens=100_000)
    p = provider()
    estimate = p.estimate(stats, spec)
    assert [q.kind for q in estimate.quantities] == ["preference_training_tokens"]
    assert price_estimate(p, estimate, stats).usd == pytest.approx(300_000 * 1.2 / 1_000_000)


def test_a_completed_job_reports_together_s_total_price_in_dollars(happy: HappyRun) -> None:
    done = happy.records[-1]
    assert done.billed_usd == pytest.approx(0.9696)  # total_price is in nano-dollars
    assert done.billable == [Quantity(kind="training_tokens", amount=2_020_000)]
    bill = bill_for(happy.provider, done)
    assert bill is not None and bill.authoritative and bill.usd == pytest.approx(0.9696)


def test_a_running_job_states_no_price_yet(happy: HappyRun) -> None:
    assert [r.billed_usd for r in happy.records[:-1]] == [None]


def test_the_output_name_is_read_from_create_and_from_retrieve(happy: HappyRun) -> None:
    assert happy.submitted.tuned_model == OUTPUT_NAME == happy.records[-1].tuned_model


def test_cancel_requested_is_not_final_and_a_cancelled_job_bills_nothing() -> None:
    transport = TOGETHER.replay("cancelled")
    p = provider(transport)
    p.submit(SPEC)
    requested, final = p.cancel(JOB), p.refresh(JOB)
    assert (requested.raw_status, requested.status.terminal, requested.billed_usd) == ("cancel_requested", False, None)
    assert final.billed_usd == 0


def test_a_failed_job_reports_the_raw_status_error() -> None:
    transport = TOGETHER.replay("failed_validation")
    p = provider(transport)
    p.submit(SPEC)
    assert p.refresh(JOB).raw_status == "error"


def test_a_reference_model_has_no_serverless_base_to_compare_with() -> None:
    assert provider().inference_model(TOGETHER.model) is None
    servable = "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert provider().inference_model(servable) == servable


# --------------------------------------------------------------------------- events and metrics


def test_events_carry_steps_in_order(happy: HappyRun) -> None:
    steps = [(e.step, e.total_steps) for e in happy.events if e.id.startswith("ev-") and e.step is not None]
    assert steps == [(42, 126), (84, 126), (126, 126)]


def test_events_read_the_metrics_too_and_carry_the_training_loss_of_each_logged_step(happy: HappyRun) -> None:
    (events,) = happy.slices["events"]
    assert [urlsplit(i.request.url).path for i in events] == [f"/v1/fine-tunes/{JOB}/events",
                                                               f"/v1/fine-tunes/{JOB}/metrics"]
    metrics = [e for e in happy.events if e.id.startswith("metrics-")]
    assert [e.step for e in metrics] == list(range(7, 127, 7))  # train/* is logged every 7 steps
    assert all(e.train_loss is not None and e.valid_loss is None for e in metrics)  # no validation file
    first, last = metrics[0], metrics[-1]
    assert (first.id, first.train_loss, first.epoch, first.total_steps) == ("metrics-7", 1.3946, 0.1667, 126)
    assert (last.id, last.train_loss, last.epoch) == ("metrics-126", 0.3303, 3.0)
    assert first.message == "Step 7/126: training loss=1.3946"


def test_each_metrics_point_comes_just_before_the_job_event_that_made_it_final(happy: HappyRun) -> None:
    ids = [e.id for e in happy.events]
    # A point is final once Together reports a later step (epoch_complete 42, 84, 126) or training ends.
    assert ids == [
        "ev-00000", "ev-00001", "ev-00002",
        *(f"metrics-{s}" for s in (7, 14, 21, 28, 35)), "ev-00003",
        *(f"metrics-{s}" for s in (42, 49, 56, 63, 70, 77)), "ev-00004",
        *(f"metrics-{s}" for s in (84, 91, 98, 105, 112, 119)), "ev-00005",
        "metrics-126", "ev-00006", "ev-00007",
    ]
    by_id = {e.id: e for e in happy.events}
    assert by_id["metrics-35"].time == by_id["ev-00003"].time  # it takes that event's time


def events_polls(scenario: str) -> list[list[Interaction]]:
    """Each [GET events, GET metrics] pair of a cassette, in order."""
    cassette = TOGETHER.cassette(scenario).interactions
    return [[i, cassette[n + 1]] for n, i in enumerate(cassette)
            if i.request.method == "GET" and i.request.url.endswith("/events")]


def test_events_after_a_metrics_point_returns_only_newer_ones(happy: HappyRun) -> None:
    (poll,) = events_polls("happy_path")
    p = provider(TOGETHER.scripted(poll * 2))
    first = p.events(JOB)
    assert first[9].id == "metrics-42"
    assert p.events(JOB, after="metrics-42") == first[10:]


def test_an_id_the_job_does_not_have_gives_every_event() -> None:
    (poll,) = events_polls("happy_path")
    p = provider(TOGETHER.scripted(poll * 2))
    assert p.events(JOB, after="ev-99999") == p.events(JOB)


def test_polling_with_the_cursor_gives_each_event_once_with_the_losses_at_their_steps() -> None:
    """The three polls of the Tuner-level happy path (validation file, n_evals=3), cursor = last id seen."""
    polls = events_polls("fit_happy_path")
    final = polls[-1]
    transport = TOGETHER.scripted([*(i for poll in polls for i in poll), *final, *final])
    p = provider(transport, strict_responses=True)
    job, after, batches = "ft-5b2e8d1c-4a7f-4e3b-9c6d-2f1a0e9b8c7d", None, []
    for _ in polls:
        batches.append(p.events(job, after))
        after = batches[-1][-1].id if batches[-1] else after
    seen = [e for batch in batches for e in batch]
    assert len({e.id for e in seen}) == len(seen)  # no duplicates
    assert p.events(job, after) == []  # nothing new since
    assert [e.id for e in p.events(job)] == [e.id for e in seen]  # and nothing missed
    transport.assert_all_played()
    points = [[(e.step, e.train_loss, e.valid_loss) for e in b if e.id.startswith("metrics-")] for b in batches]
    # A point waits for a later step: the evaluation at the end of an epoch arrives with the next epoch.
    assert [[step for step, _, _ in batch] for batch in points] == [
        [9, 18, 27, 36], [45, 54, 63, 72, 81], [90, 99, 108, 117, 126, 135],
    ]
    valid = {step: v for batch in points for step, _, v in batch if v is not None}
    assert valid == {45: 0.6418, 90: 0.4733, 135: 0.4406}
    assert all(t is not None for batch in points for _, t, _ in batch)
    assert points[0][0] == (9, 1.3469, None) and points[2][-1] == (135, 0.3068, 0.4406)


def test_a_job_older_than_the_metrics_endpoint_gives_its_job_events_alone() -> None:
    ((listing, metrics),) = events_polls("happy_path")
    not_found = Interaction(
        request=metrics.request,
        response=RecordedResponse(
            status=404,
            headers={"content-type": "application/json"},
            body=JsonBody(json={"error": {"message": "No metrics found for this job", "type": "not_found"}}),
        ),
    )
    transport = TOGETHER.scripted([listing, not_found])
    events = provider(transport).events(JOB)  # never sleeps: a 404 is not retried
    transport.assert_all_played()
    assert [e.id for e in events] == [f"ev-{i:05d}" for i in range(8)]
    assert all(e.train_loss is None for e in events)


# --------------------------------------------------------------------------- inference and formats


def test_the_output_model_answers_on_together_s_inference_host(happy: HappyRun) -> None:
    ((answer,),) = happy.slices["complete"]
    assert urlsplit(answer.request.url).netloc == "api-inference.together.ai"
    assert happy.completion is not None and happy.completion.finish_reason == "eos"


def test_serialize_keeps_the_format_columns_and_drops_metadata() -> None:
    record = {"prompt": "2+2?", "completion": "4", "metadata": {"source": "x"}}
    assert provider().serialize(Example.from_record(record)) == {"prompt": "2+2?", "completion": "4"}
