"""OpenAIProvider through the real openai SDK, replaying cassettes (no network, no sleeps)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from tuneproxy.providers.openai import OpenAIProvider
from tuneproxy.providers.together import TogetherProvider

from tuneproxy.contract import Hyperparameters, JobSpec, JobStatus, Stats
from tuneproxy.dataset.examples import Example
from tuneproxy.errors import (
    AuthenticationFailed,
    MissingCredentials,
    SubmissionUncertain,
    UnsupportedParameter,
)
from tuneproxy.recording import Cassette, LostResponseTransport, ReplayTransport, cassette_path

INTENT = "8f14e45f-ceea-467f-a0e6-7ef1c2a9b001"
JOB = "ftjob-7WjkL3bq2eXc9RzYt0pNa4Us"
FILE = "file-3Kx9TmQvR2wLpZ8nB6yHdE"
MODEL = "gpt-4o-mini-2024-07-18"
TUNED = "ft:gpt-4o-mini-2024-07-18:acme-research:support-bot:9RzYt0pN"
KEY = "sk-test-fake-0000"
SPEC = JobSpec(
    model=MODEL,
    training_file=FILE,
    intent_id=INTENT,
    hyperparameters=Hyperparameters(
        epochs=3, batch_size=4, learning_rate_multiplier=1.8, suffix="support-bot", seed=42
    ),
)


@pytest.fixture(autouse=True)
def _no_base_url_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def replay(scenario: str) -> ReplayTransport:
    return ReplayTransport(cassette_path("openai", scenario))


def provider(transport: Any, waits: list[float] | None = None, **options: Any) -> OpenAIProvider:
    return OpenAIProvider(
        api_key=KEY,
        transport=transport,
        sleep=(waits.append if waits is not None else _never_sleep),
        **options,
    )


def _never_sleep(seconds: float) -> None:
    raise AssertionError(f"a test tried to sleep {seconds}s")


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


@pytest.fixture
def happy(tmp_path: Path) -> dict[str, Any]:
    """The whole happy path, run once through the strict SDK; tests look at one outcome each."""
    transport = replay("happy_path")
    p = provider(transport, strict_responses=True)
    run = {
        "upload": p.upload(training_file(tmp_path)),
        "submitted": p.submit(SPEC),
        "running": p.refresh(JOB),
        "events": p.events(JOB),
        "done": p.refresh(JOB),
    }
    run["completion"] = p.endpoint(TUNED).complete([{"role": "user", "content": "What is 2 plus 2?"}])
    transport.assert_all_played()
    run["log"] = transport.log
    return run


def test_upload_returns_the_service_file_id(happy: dict[str, Any]) -> None:
    assert (happy["upload"].id, happy["upload"].filename) == (FILE, "train.jsonl")


def test_hyperparameters_are_sent_under_method_supervised(happy: dict[str, Any]) -> None:
    (create,) = [r for r in happy["log"] if r.method == "POST" and r.url.endswith("/v1/fine_tuning/jobs")]
    sent = create.body.json_  # type: ignore[union-attr]
    assert sent["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.8}},
    }
    assert "hyperparameters" not in sent


def test_the_intent_id_travels_in_job_metadata(happy: dict[str, Any]) -> None:
    assert happy["submitted"].intent_id == INTENT


def test_job_states_are_normalized_along_the_way(happy: dict[str, Any]) -> None:
    states = [happy[k].status for k in ("submitted", "running", "done")]
    assert states == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED]


def test_events_come_oldest_first_with_loss_metrics(happy: dict[str, Any]) -> None:
    metrics = [(e.step, e.total_steps, e.train_loss) for e in happy["events"] if e.step is not None]
    assert metrics == [(10, 30, 1.52), (20, 30, 0.77), (30, 30, 0.41)]
    assert happy["events"][0].message.startswith("Validating training file")


def test_a_succeeded_job_reports_the_tuned_model_and_billed_cost(happy: dict[str, Any]) -> None:
    done = happy["done"]
    assert done.fine_tuned_model == TUNED and done.trained_tokens == 5400
    assert done.billed_usd == pytest.approx(5400 * 3.0 / 1_000_000)


def test_the_tuned_model_answers_a_chat_completion(happy: dict[str, Any]) -> None:
    completion = happy["completion"]
    assert completion.text == "2 plus 2 is 4."
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (24, 8)
    assert completion.cost_usd == pytest.approx((24 * 0.3 + 8 * 1.2) / 1_000_000)


def test_events_after_an_id_returns_only_newer_ones() -> None:
    listing = Cassette.load(cassette_path("openai", "happy_path")).interactions[3]
    transport = ReplayTransport(
        Cassette(
            provider="openai",
            scenario="events_twice",
            description="d",
            source="authored from API reference",
            interactions=[listing, listing],
        )
    )
    p = provider(transport)
    first = p.events(JOB)
    newer = p.events(JOB, after=first[2].id)
    assert [e.id for e in newer] == [e.id for e in first[3:]]


def test_a_failed_job_carries_the_service_message_verbatim() -> None:
    transport = replay("failed_validation")
    p = provider(transport)
    p.submit(SPEC)
    record = p.refresh(JOB)
    transport.assert_all_played()
    assert record.status is JobStatus.FAILED
    assert record.error == (
        "The job failed due to an invalid training file. Invalid file format. Line 3, key "
        "\"messages\": Assistant message at index 2 has an unrecognized key 'speaker'."
    )


def test_cancel_reports_the_job_cancelled() -> None:
    transport = replay("cancelled")
    p = provider(transport)
    p.submit(SPEC)
    assert p.cancel(JOB).status is JobStatus.CANCELLED
    assert p.refresh(JOB).status.terminal
    transport.assert_all_played()


def test_a_rate_limited_read_is_retried_after_the_retry_after_wait() -> None:
    transport, waits = replay("rate_limited"), []
    record = provider(transport, waits).refresh(JOB)
    assert record.status is JobStatus.RUNNING
    assert waits == [2.0] and len(transport.requests("GET")) == 2


def test_a_lost_create_is_sent_once_and_found_again_by_its_intent() -> None:
    transport = replay("lost_create")
    p = provider(LostResponseTransport(transport, method="POST", path="/v1/fine_tuning/jobs"))
    with pytest.raises(SubmissionUncertain) as caught:
        p.submit(SPEC)
    found = p.find_job(INTENT)
    transport.assert_all_played()
    assert caught.value.intent_id == INTENT
    assert len(transport.requests("POST", "/v1/fine_tuning/jobs")) == 1
    assert found is not None and (found.job_id, found.intent_id) == (JOB, INTENT)


def test_a_wrong_key_gives_authentication_failed_without_the_key(tmp_path: Path) -> None:
    wrong = "sk-wrong-key-0000"
    p = OpenAIProvider(api_key=wrong, transport=replay("unauthorized"))
    with pytest.raises(AuthenticationFailed) as caught:
        p.upload(training_file(tmp_path))
    message = str(caught.value)
    assert caught.value.status_code == 401 and "OPENAI_API_KEY" in message
    assert wrong not in message and "sk-wrong" not in message
    assert "req_51upload" in message


def test_lora_rank_is_refused_naming_the_providers_that_support_it() -> None:
    providers = (OpenAIProvider, TogetherProvider)  # what the core builds from the registry
    supported_by = {
        "lora_rank": [
            c.capabilities.display_name for c in providers if "lora_rank" in c.capabilities.parameters
        ]
    }
    with pytest.raises(UnsupportedParameter, match="lora_rank is supported by: Together AI"):
        OpenAIProvider.translate(Hyperparameters(lora_rank=8), supported_by)


def test_an_unsupported_parameter_stops_submit_before_any_request() -> None:
    transport = ReplayTransport(
        Cassette(provider="openai", scenario="none", description="d", source="authored from API reference")
    )
    with pytest.raises(UnsupportedParameter, match="learning_rate"):
        provider(transport).submit(
            SPEC.model_copy(update={"hyperparameters": Hyperparameters(learning_rate=1e-4)})
        )
    assert transport.log == []


def test_preference_data_is_submitted_as_dpo() -> None:
    spec = SPEC.model_copy(update={"format": "preference", "hyperparameters": Hyperparameters(epochs=2)})
    assert provider(None).method_for(spec) == {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}}


def test_sunset_date_is_2027_01_06() -> None:
    assert OpenAIProvider.capabilities.sunset == dt.date(2027, 1, 6)


def test_estimate_is_tokens_times_epochs_times_price_and_not_authoritative() -> None:
    estimate = provider(None).estimate(Stats(examples=10, total_tokens=100_000), SPEC)
    assert estimate.billable_tokens == 300_000 and estimate.usd == pytest.approx(0.9)
    assert not estimate.authoritative and "2026" in estimate.basis


def test_serialize_keeps_messages_and_tools_and_drops_metadata() -> None:
    record = {"messages": [{"role": "user", "content": "hi"}], "tools": [], "metadata": {"source": "x"}}
    assert provider(None).serialize(Example.from_record(record)) == {
        "messages": record["messages"],
        "tools": [],
    }


def test_a_missing_key_is_reported_before_any_request() -> None:
    with pytest.raises(MissingCredentials, match="OPENAI_API_KEY"):
        OpenAIProvider(api_key=None, transport=replay("happy_path")).refresh(JOB)


def test_the_provider_repr_never_shows_the_key() -> None:
    assert KEY not in repr(provider(None))
