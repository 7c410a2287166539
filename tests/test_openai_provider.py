"""What only OpenAI does, through the real openai SDK replaying cassettes (no network, no sleeps).

The behaviour every backend shares (lifecycle, retries, lost creates, keys, attach) is the contract suite's:
tests/contract/test_provider_contract.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tests.contract.cases import INTENT, OPENAI, HappyRun, run_happy_path
from tuneproxy.contract import Hyperparameters, Quantity, Stats
from tuneproxy.costs import bill_for, price_estimate
from tuneproxy.dataset.examples import Example
from tuneproxy.errors import ConfigError, UnsupportedParameter
from tuneproxy.providers.openai import OpenAIOptions, OpenAIProvider
from tuneproxy.recording import Interaction, JsonBody, RecordedRequest, RecordedResponse
from tuneproxy.tuner import supported_by

JOB = OPENAI.job_id
TUNED = "ft:gpt-4o-mini-2024-07-18:acme-research:support-bot:9RzYt0pN"
SPEC = OPENAI.spec()
PROMPT_2 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def provider(transport: Any = None, **options: Any) -> OpenAIProvider:
    p = OPENAI.provider(transport, **options)
    assert isinstance(p, OpenAIProvider)
    return p


@pytest.fixture
def happy(tmp_path: Path) -> HappyRun:
    """The contract's happy path, run once through the strict SDK; tests look at OpenAI's own details."""
    return run_happy_path(OPENAI, tmp_path)


def create_body(run: HappyRun) -> dict[str, Any]:
    (create,) = run.transport.requests("POST", "/v1/fine_tuning/jobs")
    assert isinstance(create.body, JsonBody)
    return create.body.json_


# --------------------------------------------------------------------------- the wire


def test_hyperparameters_are_sent_under_method_supervised(happy: HappyRun) -> None:
    sent = create_body(happy)
    assert sent["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.8}},
    }
    assert "hyperparameters" not in sent


def test_seed_and_suffix_go_at_the_top_level_of_the_job(happy: HappyRun) -> None:
    sent = create_body(happy)
    assert (sent["seed"], sent["suffix"]) == (42, "support-bot")


def test_the_intent_id_travels_in_job_metadata(happy: HappyRun) -> None:
    assert create_body(happy)["metadata"] == {"tuneproxy_intent": INTENT}
    assert happy.submitted.intent_id == INTENT == happy.records[-1].intent_id  # read back from the job


def test_preference_data_is_submitted_as_dpo() -> None:
    spec = SPEC.model_copy(update={"format": "preference", "hyperparameters": Hyperparameters(epochs=2)})
    assert provider().method_for(spec) == {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}}


def test_without_hyperparameters_the_method_block_names_only_its_type() -> None:
    assert provider().method_for(SPEC.model_copy(update={"hyperparameters": Hyperparameters()})) == {
        "type": "supervised"}


def test_organization_and_project_options_reach_every_request() -> None:
    read = OPENAI.cassette("rate_limited").interactions[1]  # GET the job, 200
    transport = OPENAI.scripted([read])
    provider(transport, organization="org-acme", project="proj_support").refresh(JOB)
    (sent,) = transport.log
    assert (sent.headers["openai-organization"], sent.headers["openai-project"]) == ("org-acme", "proj_support")


def test_without_those_options_no_organization_header_is_sent() -> None:
    transport = OPENAI.scripted([OPENAI.cassette("rate_limited").interactions[1]])
    OpenAIProvider(api_key=OPENAI.key, transport=transport).refresh(JOB)
    assert "openai-organization" not in transport.log[0].headers


# --------------------------------------------------------------------------- options


def test_a_misspelt_option_names_the_nearest_valid_one() -> None:
    with pytest.raises(ConfigError, match="'organisation' \\(did you mean 'organization'\\?\\)"):
        OpenAIProvider({"organisation": "org-acme"}, api_key=OPENAI.key)


def test_another_backends_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="n_evals"):
        OpenAIProvider({"n_evals": 2}, api_key=OPENAI.key)


def test_an_option_of_the_wrong_type_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="timeout"):
        OpenAIProvider({"timeout": "soon"}, api_key=OPENAI.key)


def test_typed_options_are_taken_as_they_are() -> None:
    options = OpenAIOptions(project="proj_support")
    assert OpenAIProvider(options, api_key=OPENAI.key).options is options


# --------------------------------------------------------------------------- wire → contract


def test_events_come_oldest_first_with_loss_metrics(happy: HappyRun) -> None:
    metrics = [(e.step, e.total_steps, e.train_loss) for e in happy.events if e.step is not None]
    assert metrics == [(10, 30, 1.52), (20, 30, 0.77), (30, 30, 0.41)]
    assert happy.events[0].message.startswith("Validating training file")
    assert [e.time for e in happy.events] == sorted(e.time for e in happy.events)


def _event(n: int) -> dict[str, Any]:
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{n:02d}", "created_at": 1767225600 + n,
            "level": "warn" if n == 3 else "info", "message": f"event {n}", "data": None, "type": "message"}


def _page(url: str, numbers: list[int], more: bool) -> Interaction:
    return Interaction(
        request=RecordedRequest(method="GET", url=url),
        response=RecordedResponse(status=200, headers={"content-type": "application/json"}, body=JsonBody(
            json={"object": "list", "data": [_event(n) for n in numbers], "has_more": more})),
    )


def test_events_walk_every_page_newest_first_with_the_after_cursor() -> None:
    base = f"https://api.openai.com/v1/fine_tuning/jobs/{JOB}/events?limit=100"
    pages = [_page(base, [5, 4, 3], True), _page(f"{base}&after=ftevent-03", [2, 1], False)]
    transport = OPENAI.scripted(pages * 2)
    p = provider(transport, strict_responses=True)
    assert [e.id for e in p.events(JOB)] == [f"ftevent-{n:02d}" for n in (1, 2, 3, 4, 5)]
    newer = p.events(JOB, after="ftevent-02")
    transport.assert_all_played()
    assert [(e.id, e.level) for e in newer] == [("ftevent-03", "warning"), ("ftevent-04", "info"),
                                                 ("ftevent-05", "info")]


def test_a_succeeded_job_reports_its_tuned_model_and_billed_tokens_not_dollars(happy: HappyRun) -> None:
    done = happy.records[-1]
    assert done.tuned_model == TUNED and done.base_model == OPENAI.model
    assert done.billable == [Quantity(kind="training_tokens", amount=5400)] and done.trained_tokens == 5400
    assert done.billed_usd is None  # OpenAI states no money: the core prices the tokens
    assert done.detail["result_files"] == ["file-R3sUlTm3tr1cs0001"]


def test_the_core_bills_openai_s_tokens_at_the_catalogue_s_training_price(happy: HappyRun) -> None:
    bill = bill_for(happy.provider, happy.records[-1])
    assert bill is not None and not bill.authoritative
    assert bill.usd == pytest.approx(5400 * 3.0 / 1_000_000)
    assert bill.price_source and "openai.com" in bill.price_source


def test_a_failed_job_keeps_openai_s_error_code() -> None:
    transport = OPENAI.replay("failed_validation")
    p = provider(transport)
    p.submit(SPEC)
    record = p.refresh(JOB)
    assert record.detail["error_code"] == "invalid_training_file" and record.billable == []


def test_a_completion_is_priced_from_the_catalogue(happy: HappyRun) -> None:
    completion = happy.completion
    assert completion is not None and completion.finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (24, 8)
    assert completion.cost_usd == pytest.approx((24 * 0.3 + 8 * 1.2) / 1_000_000)


def test_generation_settings_are_sent_under_the_chat_completions_names(happy: HappyRun) -> None:
    ((answer,),) = happy.slices["complete"]
    transport = OPENAI.scripted([Interaction(request=RecordedRequest(method="POST", url=answer.request.url),
                                             response=answer.response)])
    provider(transport).endpoint(TUNED).complete(PROMPT_2, max_tokens=5, temperature=0.7, seed=3, stop=["\n"])
    (sent,) = transport.log
    assert isinstance(sent.body, JsonBody)
    assert sent.body.json_ == {"model": TUNED, "messages": PROMPT_2, "max_tokens": 5, "temperature": 0.7,
                               "top_p": 1.0, "seed": 3, "stop": ["\n"]}



# --------------------------------------------------------------------------- parameters and estimates


def test_lora_rank_is_refused_naming_the_providers_that_support_it() -> None:
    with pytest.raises(UnsupportedParameter, match="OpenAI does not support: lora_rank") as caught:
        provider().translate(Hyperparameters(lora_rank=8), supported_by())
    assert "lora_rank is supported by:" in str(caught.value) and "Together AI" in str(caught.value)


def test_an_unsupported_parameter_stops_submit_before_any_request() -> None:
    transport = OPENAI.scripted([])
    with pytest.raises(UnsupportedParameter, match="learning_rate"):
        provider(transport).submit(SPEC.model_copy(update={"hyperparameters": Hyperparameters(learning_rate=1e-4)}))
    assert transport.log == []


def test_epochs_above_openai_s_maximum_are_refused() -> None:
    with pytest.raises(UnsupportedParameter, match="above OpenAI's maximum 50"):
        provider().translate(Hyperparameters(epochs=51))


def test_the_sunset_is_2027_01_06() -> None:
    assert OpenAIProvider.CAPABILITIES.sunset == dt.date(2027, 1, 6) == provider().capabilities.sunset


def test_estimate_is_training_tokens_times_epochs_priced_by_the_core() -> None:
    stats = Stats(examples=10, total_tokens=100_000)
    p = provider()
    estimate = p.estimate(stats, SPEC)
    assert estimate.quantities == [Quantity(kind="training_tokens", amount=300_000)]
    assert estimate.usd is None and not estimate.authoritative
    priced = price_estimate(p, estimate, stats)
    assert priced.usd == pytest.approx(0.9) and not priced.authoritative
    assert priced.price_source and "openai.com" in priced.price_source


def test_with_epochs_auto_the_estimate_spans_one_to_five_epochs() -> None:
    stats = Stats(examples=10, total_tokens=100_000)
    p = provider()
    estimate = p.estimate(stats, SPEC.model_copy(update={"hyperparameters": Hyperparameters()}))
    (quantity,) = estimate.quantities
    assert (quantity.amount, quantity.low, quantity.high) == (300_000, 100_000, 500_000)
    assert "epochs 'auto'" in estimate.basis
    priced = price_estimate(p, estimate, stats)
    assert (priced.usd_low, priced.usd, priced.usd_high) == pytest.approx((0.3, 0.9, 1.5))


def test_serialize_keeps_messages_and_tools_and_drops_metadata() -> None:
    record = {"messages": [{"role": "user", "content": "hi"}], "tools": [], "metadata": {"source": "x"}}
    assert provider().serialize(Example.from_record(record)) == {"messages": record["messages"], "tools": []}
