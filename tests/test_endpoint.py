"""The Endpoint contract an evaluation runner relies on, through the real OpenAI SDK on replayed HTTP:
typed generation settings, finish reasons, priced usage, per-item outcomes, rate limits waited out, and
blocking calls that work inside a running event loop."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from tuneproxy.contract import Completion, GenerationParams
from tuneproxy.errors import ConfigError, ProviderError, RateLimited
from tuneproxy.prices import load_catalogue
from tuneproxy.providers.openai import OpenAIProvider
from tuneproxy.recording import Cassette, Interaction, ReplayTransport

MODEL = "ft:gpt-4o-mini-2024-07-18:acme-research:support-bot:9RzYt0pN"
URL = "https://api.openai.com/v1/chat/completions"
DEFAULT_SETTINGS = {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0}


def ask(question: str, **settings: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], **DEFAULT_SETTINGS, **settings}
    return {"method": "POST", "url": URL, "body": {"json": body},
            "headers": {"authorization": "Bearer REDACTED", "accept": "application/json",
                        "content-type": "application/json"}}


def answer(text: str, finish: str = "stop", prompt: int = 24, completion: int = 8) -> dict[str, Any]:
    return {"status": 200, "headers": {"content-type": "application/json", "x-request-id": "req_chat"},
            "body": {"json": {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1767226100, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                                     "annotations": []},
                             "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}}}


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"status": status, "headers": {"content-type": "application/json", "x-request-id": "req_err",
                                          **(headers or {})},
            "body": {"json": {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                        "code": None}}}}


def replay(*exchanges: tuple[dict[str, Any], dict[str, Any]]) -> ReplayTransport:
    interactions = [Interaction.model_validate({"request": copy.deepcopy(q), "response": a}) for q, a in exchanges]
    return ReplayTransport(Cassette(provider="openai", scenario="endpoint", source="authored from API reference",
                                    description="chat completions for the endpoint contract",
                                    interactions=interactions))


def endpoint(transport: ReplayTransport, waits: list[float] | None = None):
    """The tuned model's endpoint; rate-limit waits go through the provider's one injected sleep."""

    def sleep(seconds: float) -> None:
        if waits is None:
            raise AssertionError(f"the endpoint tried to sleep {seconds}s")
        waits.append(seconds)

    provider = OpenAIProvider({"strict_responses": True}, api_key="sk-test-endpoint-0000", transport=transport,
                              sleep=sleep)
    return provider.endpoint(MODEL)


QUESTION = [{"role": "user", "content": "What is 2 plus 2?"}]


def test_a_completion_says_why_it_stopped_and_what_it_cost_at_the_catalogue_price():
    transport = replay((ask("What is 2 plus 2?"), answer("4.", prompt=24, completion=8)))
    reply = endpoint(transport).complete(QUESTION)
    price_in = load_catalogue().match("openai", MODEL, "inference_input").usd
    price_out = load_catalogue().match("openai", MODEL, "inference_output").usd
    assert reply.text == "4." and reply.finish_reason == "stop"
    assert reply.cost_usd == pytest.approx((24 * price_in + 8 * price_out) / 1e6)
    transport.assert_all_played()


def test_generation_settings_reach_the_wire_under_their_service_names():
    settings = {"max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "seed": 7, "stop": ["\n"]}
    transport = replay((ask("What is 2 plus 2?", **settings), answer("4", finish="length")))
    reply = endpoint(transport).complete(QUESTION, GenerationParams(max_tokens=5, temperature=0.7, top_p=0.9,
                                                                    seed=7, stop=("\n",)))
    assert reply.finish_reason == "length"
    transport.assert_all_played()


@pytest.mark.parametrize("bad", [{"temperature": 5}, {"max_tokens": 0}, {"top_k": 3}])
def test_a_wrong_generation_setting_is_a_config_error_before_any_request(bad):
    transport = replay()
    with pytest.raises(ConfigError):
        endpoint(transport).complete(QUESTION, **bad)
    assert transport.log == []


def test_a_rate_limit_is_waited_out_as_long_as_the_service_asked():
    waits: list[float] = []
    transport = replay((ask("What is 2 plus 2?"), refusal(429, "Rate limit reached", {"retry-after-ms": "1500"})),
                       (ask("What is 2 plus 2?"), answer("4.")))
    assert endpoint(transport, waits).complete(QUESTION).text == "4."
    assert waits == [1.5]


def test_one_failed_item_does_not_lose_the_other_answers():
    transport = replay((ask("one"), answer("1")),
                       (ask("two"), refusal(400, "This model's maximum context length is 65536 tokens")),
                       (ask("three"), answer("3")))
    batch = [[{"role": "user", "content": q}] for q in ("one", "two", "three")]
    outcomes = endpoint(transport).complete_many(batch, concurrency=1)
    assert [type(o) for o in outcomes] == [Completion, ProviderError, Completion]
    assert outcomes[0].text == "1" and outcomes[2].text == "3"
    assert "maximum context length" in str(outcomes[1]) and outcomes[1].status_code == 400


def test_an_item_still_rate_limited_after_its_retries_comes_back_as_rate_limited():
    waits: list[float] = []
    limited = refusal(429, "Rate limit reached", {"retry-after": "2"})
    ep_transport = replay(*[(ask("one"), limited)] * 5)
    ep = endpoint(ep_transport, waits)
    [outcome] = ep.complete_many([[{"role": "user", "content": "one"}]])
    assert isinstance(outcome, RateLimited) and outcome.retry_after == 2.0
    assert waits == [2.0] * ep.rate_limit_retries


def test_blocking_calls_work_inside_a_running_event_loop_as_in_a_notebook():
    transport = replay((ask("What is 2 plus 2?"), answer("4.")), (ask("What is 2 plus 2?"), answer("four")))
    ep = endpoint(transport)

    async def notebook_cell() -> list[str]:
        first = ep.complete(QUESTION).text
        [second] = ep.complete_many([QUESTION])
        return [first, second.text]

    assert asyncio.run(notebook_cell()) == ["4.", "four"]
    transport.assert_all_played()


def test_a_base_models_completion_is_not_priced_at_the_tuned_rate():
    base = "gpt-4o-mini-2024-07-18"
    question = ask("What is 2 plus 2?")
    question["body"]["json"]["model"] = base
    transport = replay((question, answer("4.")))
    provider = OpenAIProvider({"strict_responses": True}, api_key="sk-test-endpoint-0000", transport=transport)
    reply = provider.endpoint(base).complete(QUESTION)
    assert reply.text == "4." and reply.cost_usd is None  # the catalogue holds fine-tuned inference prices


def test_a_very_long_rate_limit_wait_is_cut_to_the_endpoints_ceiling():
    waits: list[float] = []
    transport = replay((ask("What is 2 plus 2?"), refusal(429, "Rate limit reached", {"retry-after": "3600"})),
                       (ask("What is 2 plus 2?"), answer("4.")))
    ep = endpoint(transport, waits)
    assert ep.complete(QUESTION).text == "4." and waits == [ep.max_rate_limit_wait]
