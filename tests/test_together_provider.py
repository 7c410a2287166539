"""TogetherProvider through the real together SDK, replaying cassettes (no network, no sleeps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tuneproxy.providers.together import TogetherProvider, job_suffix

from tuneproxy.contract import Hyperparameters, JobSpec, JobStatus, Stats
from tuneproxy.dataset.examples import Example
from tuneproxy.errors import AuthenticationFailed, SubmissionUncertain
from tuneproxy.recording import (
    Cassette,
    Interaction,
    JsonBody,
    LostResponseTransport,
    RecordedResponse,
    ReplayTransport,
    cassette_path,
)

INTENT = "8f14e45f-ceea-467f-a0e6-7ef1c2a9b001"
JOB = "ft-3c1f9a2e-7b4d-4e8a-9f01-5d6c7b8a9e0f"
FILE = "file-6f0b7c2d-1e3a-4b5c-8d9e-0a1b2c3d4e5f"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
KEY = "tgp-test-fake-0000"
SPEC = JobSpec(
    model=MODEL,
    training_file=FILE,
    intent_id=INTENT,
    hyperparameters=Hyperparameters(
        epochs=3,
        learning_rate=0.0002,
        batch_size=16,
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.05,
        seed=42,
        suffix="support-bot",
    ),
)


@pytest.fixture(autouse=True)
def _no_base_url_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_BASE_URL", raising=False)


def replay(scenario: str) -> ReplayTransport:
    return ReplayTransport(cassette_path("together", scenario))


def _never_sleep(seconds: float) -> None:
    raise AssertionError(f"a test tried to sleep {seconds}s")


def provider(transport: Any, waits: list[float] | None = None, **options: Any) -> TogetherProvider:
    return TogetherProvider(
        api_key=KEY,
        transport=transport,
        sleep=(waits.append if waits is not None else _never_sleep),
        **options,
    )


def training_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"{i}+{i}?"},
                        {"role": "assistant", "content": str(2 * i)},
                    ]
                }
            )
            + "\n"
            for i in range(10)
        )
    )
    return path


def paths(transport: ReplayTransport) -> list[tuple[str, str]]:
    from urllib.parse import urlsplit

    return [(r.method, urlsplit(r.url).path) for r in transport.log]


@pytest.fixture
def happy(tmp_path: Path) -> dict[str, Any]:
    """The whole happy path, run once through the strict SDK; tests look at one outcome each."""
    transport = replay("happy_path")
    p = provider(transport, strict_responses=True)
    run: dict[str, Any] = {"upload": p.upload(training_file(tmp_path))}
    run["estimate"] = p.estimate(Stats(examples=10, total_tokens=1000), SPEC)
    run["submitted"] = p.submit(SPEC)
    run.update(running=p.refresh(JOB), events=p.events(JOB), done=p.refresh(JOB))
    run["completion"] = p.endpoint(run["done"].fine_tuned_model).complete(
        [{"role": "user", "content": "What is 2 plus 2?"}]
    )
    transport.assert_all_played()
    run["transport"] = transport
    return run


def test_upload_is_post_then_302_put_to_the_presigned_url_then_preprocess(happy: dict[str, Any]) -> None:
    log = happy["transport"].log
    assert paths(happy["transport"])[:3] == [
        ("POST", "/v1/files"),
        ("PUT", f"/{FILE}"),
        ("POST", f"/v1/files/{FILE}/preprocess"),
    ]
    assert log[1].url.startswith("https://together-fine-tuning-uploads.s3.")
    assert "authorization" not in log[1].headers  # the key never goes to the storage host
    assert happy["upload"].id == FILE


def test_create_is_three_requests_limits_estimate_create(happy: dict[str, Any]) -> None:
    assert paths(happy["transport"])[4:7] == [
        ("GET", "/v1/fine-tunes/models/limits"),
        ("POST", "/v1/fine-tunes/estimate-price"),
        ("POST", "/v1/fine-tunes"),
    ]


def test_lora_settings_are_sent_with_lora_enabled(happy: dict[str, Any]) -> None:
    (create,) = happy["transport"].requests("POST", "/v1/fine-tunes")
    assert create.body.json_["training_type"] == {  # type: ignore[union-attr]
        "type": "Lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_trainable_modules": "all-linear",
    }


def test_the_suffix_carries_a_short_form_of_the_intent_id(happy: dict[str, Any]) -> None:
    (create,) = happy["transport"].requests("POST", "/v1/fine-tunes")
    assert create.body.json_["suffix"] == "support-bot-tp8f14e45fce"  # type: ignore[union-attr]
    assert job_suffix(None, INTENT) == "tp8f14e45fce"


def test_estimate_with_an_uploaded_file_is_together_s_own(happy: dict[str, Any]) -> None:
    estimate = happy["estimate"]
    assert estimate.authoritative and estimate.usd == 0.97 and estimate.billable_tokens == 2_020_000


def test_job_states_are_normalized_along_the_way(happy: dict[str, Any]) -> None:
    states = [happy[k].status for k in ("submitted", "running", "done")]
    assert states == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED]


def test_the_output_name_is_read_from_create_and_from_retrieve(happy: dict[str, Any]) -> None:
    name = "acme/Meta-Llama-3.1-8B-Instruct-Reference-support-bot-tp8f14e45fce-9a2e7b4d"
    assert happy["submitted"].fine_tuned_model == name == happy["done"].fine_tuned_model


def test_events_carry_steps_in_order(happy: dict[str, Any]) -> None:
    steps = [(e.step, e.total_steps) for e in happy["events"] if e.id.startswith("ev-") and e.step is not None]
    assert steps == [(42, 126), (84, 126), (126, 126)]


def test_events_read_the_metrics_too_and_carry_the_training_loss_of_each_logged_step(
    happy: dict[str, Any],
) -> None:
    assert paths(happy["transport"])[8:10] == [
        ("GET", f"/v1/fine-tunes/{JOB}/events"),
        ("GET", f"/v1/fine-tunes/{JOB}/metrics"),
    ]
    metrics = [e for e in happy["events"] if e.id.startswith("metrics-")]
    assert [e.step for e in metrics] == list(range(7, 127, 7))  # train/* is logged every 7 steps
    assert all(e.train_loss is not None and e.valid_loss is None for e in metrics)  # no validation file
    first, last = metrics[0], metrics[-1]
    assert (first.id, first.train_loss, first.epoch, first.total_steps) == ("metrics-7", 1.3946, 0.1667, 126)
    assert (last.id, last.train_loss, last.epoch) == ("metrics-126", 0.3303, 3.0)
    assert first.message == "Step 7/126: training loss=1.3946"


def test_each_metrics_point_comes_just_before_the_job_event_that_made_it_final(happy: dict[str, Any]) -> None:
    ids = [e.id for e in happy["events"]]
    # A point is final once Together reports a later step (epoch_complete 42, 84, 126) or training ends.
    assert ids == [
        "ev-00000", "ev-00001", "ev-00002",
        *(f"metrics-{s}" for s in (7, 14, 21, 28, 35)), "ev-00003",
        *(f"metrics-{s}" for s in (42, 49, 56, 63, 70, 77)), "ev-00004",
        *(f"metrics-{s}" for s in (84, 91, 98, 105, 112, 119)), "ev-00005",
        "metrics-126", "ev-00006", "ev-00007",
    ]
    by_id = {e.id: e for e in happy["events"]}
    assert by_id["metrics-35"].time == by_id["ev-00003"].time  # it takes that event's time


def test_a_completed_job_reports_total_price_in_dollars(happy: dict[str, Any]) -> None:
    assert happy["done"].billed_usd == pytest.approx(0.9696)
    assert happy["done"].trained_tokens == 2_020_000


def test_the_output_model_answers_a_chat_completion(happy: dict[str, Any]) -> None:
    completion = happy["completion"]
    assert completion.text == "2 plus 2 is 4." and completion.usage.completion_tokens == 9


def scripted(*interactions: Interaction) -> ReplayTransport:
    return ReplayTransport(
        Cassette(
            provider="together",
            scenario="scripted",
            description="interactions taken from the authored cassettes",
            source="authored from API reference",
            interactions=list(interactions),
        )
    )


def events_polls(scenario: str) -> list[tuple[Interaction, Interaction]]:
    """Each [GET events, GET metrics] pair of a cassette, in order."""
    cassette = Cassette.load(cassette_path("together", scenario)).interactions
    return [
        (i, cassette[n + 1])
        for n, i in enumerate(cassette)
        if i.request.method == "GET" and i.request.url.endswith("/events")
    ]


def test_events_after_an_id_returns_only_newer_ones() -> None:
    ((listing, metrics),) = events_polls("happy_path")
    p = provider(scripted(listing, metrics, listing, metrics, listing, metrics))
    first = p.events(JOB)
    assert (first[2].id, first[9].id) == ("ev-00002", "metrics-42")
    for cut in (2, 9):  # after a job event, after a metrics point
        assert [e.id for e in p.events(JOB, after=first[cut].id)] == [e.id for e in first[cut + 1:]]


def test_polling_with_the_cursor_gives_each_event_once_with_the_losses_at_their_steps() -> None:
    """The three polls of the Tuner-level happy path (validation file, n_evals=3), cursor = last id seen."""
    polls = events_polls("fit_happy_path")
    final = polls[-1]
    transport = scripted(*(i for poll in polls for i in poll), *final, *final)
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
    transport = scripted(listing, not_found)
    events = provider(transport).events(JOB)  # never sleeps: a 404 is not retried
    transport.assert_all_played()
    assert [e.id for e in events] == [f"ev-{i:05d}" for i in range(8)]
    assert all(e.train_loss is None for e in events)


def test_a_validation_file_is_evaluated_once_per_epoch_unless_told_otherwise() -> None:
    spec = SPEC.model_copy(update={"validation_file": "file-v"})
    assert provider(None).create_arguments(spec)["n_evals"] == 3
    told = spec.model_copy(update={"options": {"n_evals": 6}})
    assert provider(None).create_arguments(told)["n_evals"] == 6
    assert "n_evals" not in provider(None).create_arguments(SPEC)


def test_a_failed_job_carries_the_service_message_verbatim() -> None:
    transport = replay("failed_validation")
    p = provider(transport)
    p.submit(SPEC)
    record = p.refresh(JOB)
    transport.assert_all_played()
    assert record.status is JobStatus.FAILED and record.raw_status == "error"
    assert record.error is not None and record.error.endswith("Found two consecutive 'user' messages.")
    assert record.error.startswith("Error while validating the training file: line 4")


def test_cancel_is_requested_then_the_job_is_cancelled() -> None:
    transport = replay("cancelled")
    p = provider(transport)
    p.submit(SPEC)
    requested = p.cancel(JOB)
    final = p.refresh(JOB)
    transport.assert_all_played()
    assert (requested.raw_status, requested.status.terminal) == ("cancel_requested", False)
    assert final.status is JobStatus.CANCELLED and final.billed_usd == 0


def test_a_rate_limited_read_is_retried_after_the_retry_after_wait() -> None:
    transport, waits = replay("rate_limited"), []
    assert provider(transport, waits).refresh(JOB).status is JobStatus.RUNNING
    assert waits == [2.0] and len(transport.requests("GET")) == 2


def test_a_lost_create_is_sent_once_and_found_again_by_its_intent() -> None:
    transport = replay("lost_create")
    p = provider(LostResponseTransport(transport, method="POST", path="/v1/fine-tunes"))
    with pytest.raises(SubmissionUncertain):
        p.submit(SPEC)
    found = p.find_job(INTENT)
    transport.assert_all_played()
    assert len(transport.requests("POST", "/v1/fine-tunes")) == 1
    assert found is not None and (found.job_id, found.intent_id) == (JOB, INTENT)


def test_a_wrong_key_gives_authentication_failed_without_the_key(tmp_path: Path) -> None:
    wrong = "tgp-wrong-key-0000"
    p = TogetherProvider(api_key=wrong, transport=replay("unauthorized"))
    with pytest.raises(AuthenticationFailed) as caught:
        p.upload(training_file(tmp_path))
    assert caught.value.status_code == 401 and "TOGETHER_API_KEY" in str(caught.value)
    assert wrong not in str(caught.value)


def test_without_lora_settings_lora_is_not_forced() -> None:
    spec = SPEC.model_copy(update={"hyperparameters": Hyperparameters(epochs=2)})
    arguments = provider(None).create_arguments(spec)
    assert "lora" not in arguments and arguments["n_epochs"] == 2


def test_estimate_before_upload_uses_the_price_table_by_model_size() -> None:
    spec = SPEC.model_copy(update={"training_file": "train.jsonl"})
    estimate = provider(None).estimate(Stats(examples=10, total_tokens=100_000), spec)
    assert not estimate.authoritative and estimate.usd == pytest.approx(300_000 * 0.48 / 1_000_000)


def test_serialize_keeps_the_format_columns_and_drops_metadata() -> None:
    record = {"prompt": "2+2?", "completion": "4", "metadata": {"source": "x"}}
    assert provider(None).serialize(Example.from_record(record)) == {"prompt": "2+2?", "completion": "4"}
