"""The runner against a real loopback OpenAI-compatible server on 127.0.0.1: every item answered once, in
order, within the concurrency bound; failures retried or recorded, never lost; a rerun asks only for what
is missing; costs recorded once; keys never stored. And the ledger's answer cache, and its migration."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import Sequence

import pytest
from rich.console import Console

from tests.fake_chat_server import FakeChatServer, answer_for
from tuneproxy.contract import Completion, Endpoint, GenerationParams, Message, Usage
from tuneproxy.errors import (
    AuthenticationFailed,
    NotFound,
    ProviderError,
    RateLimited,
    ReplayMismatch,
    ServiceUnreachable,
    UnreadableAnswer,
)
from tuneproxy.evaluation.model import Item
from tuneproxy.evaluation.runner import Pace, Runner, approximate_tokens, params_hash, transient
from tuneproxy.ledger import MIGRATIONS, Ledger, LedgerRowWarning
from tuneproxy.providers.compatible import ENV_KEY, compatible_endpoint

KEY = "sk-endpoint-test-0123456789abcdef"
PRICE_PER_TOKEN = 0.000002


async def no_wait(_: float) -> None:
    """The runner's backoff, without the waiting."""


def items(n: int, start: int = 0) -> list[Item]:
    return [Item(id=f"item-{i}", messages=[{"role": "user", "content": f"question {i}"}], reference=f"answer {i}")
            for i in range(start, start + n)]


def prompt(item: Item) -> str:
    return item.messages[-1]["content"]


def runner(ledger: Ledger, **options) -> Runner:
    return Runner(ledger, **{"show_progress": False, "sleep": no_wait, **options})


def endpoint(server: FakeChatServer, **options) -> Endpoint:
    ep = compatible_endpoint(server.base_url, "fake-model", **options)
    ep.sleep = no_wait  # Retry-After waits, skipped
    return ep


class PricedEndpoint(Endpoint):
    """The loopback server's endpoint at a known price per token read or written."""

    def __init__(self, inner: Endpoint) -> None:
        self.inner = inner
        self.model = inner.model
        self.provider = "priced"
        self.sleep = no_wait

    async def _generate(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        answer = await self.inner._generate(messages, params)
        tokens = answer.usage.prompt_tokens + answer.usage.completion_tokens
        return answer.model_copy(update={"cost_usd": tokens * PRICE_PER_TOKEN})

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def ledger(isolated_home):
    ledger = Ledger()
    yield ledger
    ledger.close()


def inference_costs(ledger: Ledger) -> list[float]:
    return [row.usd for row in ledger.costs() if row.kind == "inference"]


# -- answering ----------------------------------------------------------------------------------------

def test_every_item_is_answered_once_in_the_items_order(ledger):
    asked = items(20)
    with FakeChatServer() as server:
        answers = runner(ledger).run("base", endpoint(server), "fake", asked)
    assert [a.item_id for a in answers] == [i.id for i in asked]
    assert [a.text for a in answers] == [answer_for(prompt(i)) for i in asked]
    assert all(a.system == "base" and a.finish_reason == "stop" and not a.cached for a in answers)
    assert all(a.prompt_tokens > 0 and a.completion_tokens > 0 and a.cost_usd is None for a in answers)
    assert server.answered == {prompt(i): 1 for i in asked}


def test_generation_is_greedy_by_default_and_sent_as_given(ledger):
    with FakeChatServer() as server:
        runner(ledger).run("base", endpoint(server), "fake", items(2))
        runner(ledger).run("base", endpoint(server), "fake", items(1),
                           GenerationParams(max_tokens=7, temperature=0.3, seed=11, stop=("###",)))
    assert [(b["temperature"], b["max_tokens"]) for b in server.bodies[:2]] == [(0.0, 256), (0.0, 256)]
    assert {k: server.bodies[2][k] for k in ("temperature", "max_tokens", "seed", "stop")} == {
        "temperature": 0.3, "max_tokens": 7, "seed": 11, "stop": ["###"]}


def test_no_more_requests_at_once_than_the_concurrency(ledger):
    with FakeChatServer(latency=0.02) as server:
        answers = runner(ledger, concurrency=4).run("base", endpoint(server), "fake", items(24))
    assert all(a.ok for a in answers)
    assert server.max_in_flight == 4


def test_rate_limited_items_are_waited_out_and_each_answered_exactly_once(ledger):
    asked = items(12)
    limited = {prompt(i): ["429", "429"] for i in asked[::3]}
    with FakeChatServer(script=limited, retry_after=0.01) as server:
        answers = runner(ledger, concurrency=4).run("base", endpoint(server), "fake", asked)
    assert [a.text for a in answers] == [answer_for(prompt(i)) for i in asked]
    assert server.answered == {prompt(i): 1 for i in asked}
    assert all(server.requests[p] == 3 for p in limited)


def test_transient_failures_are_asked_again(ledger):
    asked = items(3)
    script = {prompt(asked[0]): ["500", "500"], prompt(asked[1]): ["garbled"], prompt(asked[2]): ["drop"]}
    with FakeChatServer(script=script) as server:
        answers = runner(ledger).run("base", endpoint(server), "fake", asked)
    assert all(a.ok for a in answers)
    assert [server.requests[prompt(i)] for i in asked] == [3, 2, 2]


def test_an_item_that_keeps_failing_is_recorded_failed_and_the_others_answered(ledger):
    asked = items(6)
    broken = prompt(asked[2])
    with FakeChatServer(script={broken: ["500"] * 10}) as server:
        answers = runner(ledger, retries=3).run("base", endpoint(server), "fake", asked)
    failed = answers[2]
    assert failed.text is None and not failed.ok and "HTTP 500" in failed.error
    assert server.requests[broken] == 4  # the first try and 3 retries
    assert all(a.ok for a in answers[:2] + answers[3:])
    assert set(ledger.cached_answers("fake", params_hash(GenerationParams()), [i.id for i in asked])) == {
        i.id for i in asked} - {asked[2].id}  # only answers are cached, never a failure


def test_a_refusal_is_not_asked_again(ledger):
    asked = items(1)
    with FakeChatServer(script={prompt(asked[0]): ["429"] * 10}) as server:
        ep = endpoint(server)
        ep.rate_limit_retries = 1
        [answer] = runner(ledger).run("base", ep, "fake", asked)
    assert "rate-limiting" in answer.error
    assert server.requests[prompt(asked[0])] == 2  # the endpoint's own retry only


# -- resuming -----------------------------------------------------------------------------------------

def test_a_rerun_after_the_server_died_asks_only_for_the_missing_answers(ledger):
    asked = items(10)
    with FakeChatServer(die_after=6) as dying:
        first = runner(ledger, concurrency=1).run("base", endpoint(dying), "fake", asked)
    assert [a.ok for a in first] == [True] * 6 + [False] * 4
    assert "Could not reach" in first[6].error

    with FakeChatServer() as server:
        second = runner(ledger).run("base", endpoint(server), "fake", asked)
    assert server.requests == {prompt(i): 1 for i in asked[6:]}
    assert [a.cached for a in second] == [True] * 6 + [False] * 4
    assert [a.text for a in second] == [answer_for(prompt(i)) for i in asked]


def test_answers_received_before_a_cancel_are_kept_and_not_asked_again(ledger):
    asked = items(12)
    key = params_hash(GenerationParams())

    async def cancel_midway(server: FakeChatServer) -> None:
        task = asyncio.create_task(runner(ledger, concurrency=2).arun("base", endpoint(server), "fake", asked))
        while len(ledger.cached_answers("fake", key, [i.id for i in asked])) < 4:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with FakeChatServer(latency=0.03) as server:
        asyncio.run(cancel_midway(server))
    kept = ledger.cached_answers("fake", key, [i.id for i in asked])
    assert 4 <= len(kept) < 12

    with FakeChatServer() as server:
        answers = runner(ledger).run("base", endpoint(server), "fake", asked)
    assert set(server.requests) == {prompt(i) for i in asked if i.id not in kept}
    assert {a.item_id for a in answers if a.cached} == set(kept)
    assert all(a.ok for a in answers)


def test_other_generation_settings_are_not_served_from_the_cache(ledger):
    asked = items(4)
    with FakeChatServer() as server:
        runner(ledger).run("base", endpoint(server), "fake", asked)
        again = runner(ledger).run("base", endpoint(server), "fake", asked, GenerationParams(temperature=0.7))
        same = runner(ledger).run("base", endpoint(server), "fake", asked, GenerationParams())
    assert not any(a.cached for a in again)
    assert all(a.cached for a in same)
    assert server.requests == {prompt(i): 2 for i in asked}


def test_another_endpoint_key_is_not_served_from_the_cache(ledger):
    with FakeChatServer() as server:
        runner(ledger).run("base", endpoint(server), "fake", items(2))
        other = runner(ledger).run("tuned", endpoint(server), "fake-tuned", items(2))
    assert not any(a.cached for a in other)


def test_an_item_whose_prompt_changed_is_asked_again(ledger):
    [item] = items(1)
    changed = item.model_copy(update={"messages": [{"role": "user", "content": "question 0, reworded"}]})
    with FakeChatServer() as server:
        runner(ledger).run("base", endpoint(server), "fake", [item])
        [answer] = runner(ledger).run("base", endpoint(server), "fake", [changed])
        [back] = runner(ledger).run("base", endpoint(server), "fake", [changed])
    assert not answer.cached and answer.text == answer_for("question 0, reworded")
    assert back.cached


def test_a_repeated_item_is_asked_once_and_answered_in_both_places(ledger):
    [a, b] = items(2)
    with FakeChatServer() as server:
        answers = runner(ledger).run("base", endpoint(server), "fake", [a, b, a])
    assert [x.item_id for x in answers] == ["item-0", "item-1", "item-0"]
    assert server.requests[prompt(a)] == 1


def test_a_cached_answer_that_cannot_be_read_is_asked_again(ledger):
    asked = items(3)
    with FakeChatServer() as server:
        runner(ledger).run("base", endpoint(server), "fake", asked)
        ledger.db.execute("UPDATE answers SET created_at = 'the day before yesterday' WHERE item_id = 'item-1'")
        with pytest.warns(LedgerRowWarning, match="answers .*item-1"):
            answers = runner(ledger).run("base", endpoint(server), "fake", asked)
    assert [a.cached for a in answers] == [True, False, True]
    assert server.requests[prompt(asked[1])] == 2
    assert len(ledger.cached_answers("fake", params_hash(GenerationParams()), ["item-1"])) == 1  # replaced


def test_an_answer_the_cache_cannot_save_is_returned_with_a_warning_and_asked_again_next_time(ledger):
    asked = items(3)
    ledger.db.execute("CREATE TRIGGER full BEFORE INSERT ON answers WHEN NEW.item_id = 'item-1' "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with FakeChatServer() as server:
        with pytest.warns(RuntimeWarning, match="1 answer could not be saved .*disk full"):
            first = runner(ledger).run("base", endpoint(server), "fake", asked)
        ledger.db.execute("DROP TRIGGER full")
        second = runner(ledger).run("base", endpoint(server), "fake", asked)
    assert all(a.ok for a in first)
    assert [a.cached for a in second] == [True, False, True]


def test_the_blocking_run_works_inside_a_running_event_loop(ledger):
    async def notebook_cell(server: FakeChatServer):
        return runner(ledger).run("base", endpoint(server), "fake", items(3))

    with FakeChatServer() as server:
        answers = asyncio.run(notebook_cell(server))
        again = asyncio.run(notebook_cell(server))
    assert all(a.ok and not a.cached for a in answers)
    assert all(a.cached for a in again)


# -- costs and secrets --------------------------------------------------------------------------------

def test_inference_costs_are_recorded_once_and_a_cached_answer_costs_nothing_again(ledger):
    asked = items(8)
    with FakeChatServer(die_after=5) as dying:
        first = runner(ledger, concurrency=1).run("base", PricedEndpoint(endpoint(dying)), "fake", asked)
    assert inference_costs(ledger) == pytest.approx([a.cost_usd for a in first if a.ok])
    with FakeChatServer() as server:
        second = runner(ledger).run("base", PricedEndpoint(endpoint(server)), "fake", asked)
    assert all(a.ok and a.cost_usd > 0 for a in second)
    assert sum(inference_costs(ledger)) == pytest.approx(sum(a.cost_usd for a in second))
    assert len(inference_costs(ledger)) == 8
    rows = [row for row in ledger.costs() if row.kind == "inference"]
    assert {(row.provider, row.model) for row in rows} == {("priced", "fake-model")}


def test_the_api_key_never_reaches_the_ledger(isolated_home):
    ledger = Ledger()
    asked = items(3)
    leaky = prompt(asked[0])  # a server that echoes the key it was sent
    with FakeChatServer(echo_authorization=[leaky], script={prompt(asked[1]): ["500"] * 10}) as server:
        answers = runner(ledger).run("base", endpoint(server, api_key=KEY), f"{server.base_url}?api_key={KEY}",
                                     asked)
    assert "REDACTED" in answers[0].text and KEY not in answers[0].text
    assert answers[1].error and KEY not in answers[1].error
    ledger.close()
    for stored in isolated_home.glob("state.db*"):
        assert KEY.encode() not in stored.read_bytes(), stored


# -- progress -----------------------------------------------------------------------------------------

def test_progress_without_a_terminal_is_plain_lines(ledger):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, force_jupyter=False)
    with FakeChatServer() as server:
        runner(ledger, show_progress=True, console=console).run("tuned", endpoint(server), "fake", items(20))
        runner(ledger, show_progress=True, console=console).run("tuned", endpoint(server), "fake", items(21))
    lines = out.getvalue().splitlines()
    assert lines[0] == "tuned: 20 items, 0 from the cache, asking 20"
    assert any(line.startswith("tuned: 10/20  ") and "/s" in line and "ETA" in line for line in lines)
    assert lines[-2].startswith("tuned: 21 items, 20 from the cache, asking 1")
    assert lines[-1].startswith("tuned: done, 1 answered, 20 from the cache, in ")
    assert "\x1b" not in out.getvalue()


def test_progress_on_a_terminal_is_a_live_bar_with_the_running_cost(ledger):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, force_interactive=True, width=120)
    with FakeChatServer() as server:
        runner(ledger, show_progress=True, console=console).run("tuned", PricedEndpoint(endpoint(server)), "fake",
                                                                 items(5))
    shown = out.getvalue()
    assert "tuned" in shown and "5/5" in shown and "/s" in shown and "$0.0" in shown


def test_no_progress_when_it_is_off(ledger):
    out = io.StringIO()
    with FakeChatServer() as server:
        runner(ledger, show_progress=False, console=Console(file=out)).run("base", endpoint(server), "fake", items(3))
    assert out.getvalue() == ""


# -- pieces -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "worth_retrying"), [
    (ServiceUnreachable("down", provider="p"), True),
    (UnreadableAnswer("garbled", provider="p"), True),
    (ProviderError("Could not reach it", provider="p"), True),
    (ProviderError("HTTP 500", provider="p", status_code=500), True),
    (ProviderError("HTTP 503", provider="p", status_code=503), True),
    (ProviderError("HTTP 408", provider="p", status_code=408), True),
    (ProviderError("HTTP 400", provider="p", status_code=400), False),
    (RateLimited("slow down", provider="p", retry_after=1), False),
    (AuthenticationFailed("bad key", provider="p", status_code=401), False),
    (NotFound("no model", provider="p", status_code=404), False),
    (ReplayMismatch("not in the cassette", provider="p"), False),
    (ValueError("a bug"), False),
])
def test_which_failures_are_asked_again(error, worth_retrying):
    assert transient(error) is worth_retrying


def test_a_per_minute_limit_spaces_requests_evenly():
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def three() -> None:
        pace = Pace(120, sleep, clock=lambda: 100.0)  # the clock stands still: every wait is the pace's
        for _ in range(3):
            await pace.take()

    asyncio.run(three())
    assert waits == [0.5, 1.0]


def test_a_tokens_per_minute_limit_counts_the_prompt_and_what_may_be_generated(ledger):
    waits: list[float] = []
    now = [0.0]  # the limit's clock moves only when it waits: no real time leaks into the count

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    asked = items(3)
    tokens = approximate_tokens(asked[0].messages) + 10
    with FakeChatServer() as server:
        answers = runner(ledger, concurrency=1, tokens_per_minute=6000, sleep=sleep, clock=lambda: now[0]).run(
            "base", endpoint(server), "fake", asked, GenerationParams(max_tokens=10))
    assert all(a.ok for a in answers)
    assert len(waits) == 2 and all(0 < w <= 2 * tokens * 0.01 for w in waits)


def test_approximate_tokens_are_a_quarter_of_the_characters():
    assert approximate_tokens([{"role": "user", "content": "x" * 400}]) == 101
    assert approximate_tokens([{"role": "user", "content": [{"type": "text", "text": "x" * 40}]}]) == 11


def test_the_params_hash_is_of_the_settings_not_of_how_they_were_written():
    assert params_hash(GenerationParams()) == params_hash(GenerationParams(temperature=0, max_tokens=256))
    assert params_hash(GenerationParams()) != params_hash(GenerationParams(seed=1))


def test_the_endpoint_is_closed_at_the_end(ledger):
    class Closing(PricedEndpoint):
        closed = 0

        async def aclose(self) -> None:
            Closing.closed += 1
            await super().aclose()

    with FakeChatServer() as server:
        runner(ledger).run("base", Closing(endpoint(server)), "fake", items(2))
    assert Closing.closed == 1


@pytest.mark.parametrize("options", [{"concurrency": 0}, {"retries": -1}, {"requests_per_minute": 0},
                                     {"tokens_per_minute": -5}])
def test_impossible_settings_are_refused(ledger, options):
    with pytest.raises(Exception, match="must be"):
        Runner(ledger, **options)


# -- the compatible endpoint --------------------------------------------------------------------------

def test_the_compatible_endpoint_sends_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_KEY, KEY)
    with FakeChatServer(echo_authorization=["hello"]) as server:
        answer = compatible_endpoint(server.base_url, "m").complete([{"role": "user", "content": "hello"}])
    assert answer.text.endswith(f"(you sent Bearer {KEY})")
    assert isinstance(answer, Completion) and answer.cost_usd is None and answer.usage == Usage(
        prompt_tokens=2, completion_tokens=answer.usage.completion_tokens)


def test_the_compatible_endpoint_sends_a_placeholder_without_a_key(monkeypatch):
    monkeypatch.delenv(ENV_KEY, raising=False)
    with FakeChatServer(echo_authorization=["hello"]) as server:
        answer = compatible_endpoint(server.base_url, "m").complete([{"role": "user", "content": "hello"}])
    assert answer.text.endswith("(you sent Bearer no-key)")


def test_the_compatible_endpoint_maps_errors_like_the_openai_provider():
    with FakeChatServer(script={"a": ["429"], "b": ["500"], "c": ["garbled"]}, retry_after=2.5) as server:
        ep = compatible_endpoint(server.base_url, "m", api_key=KEY)
        ep.rate_limit_retries = 0
        outcomes = ep.complete_many([[{"role": "user", "content": p}] for p in "abc"])
    limited, failed, garbled = outcomes
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.5
    assert type(failed) is ProviderError and failed.status_code == 500 and server.base_url in str(failed)
    assert isinstance(garbled, UnreadableAnswer)
    assert all(KEY not in str(o) for o in outcomes)


def test_the_compatible_endpoint_cannot_reach_a_closed_port():
    with FakeChatServer() as server:
        url = server.base_url
    outcome = compatible_endpoint(url, "m").complete_many([[{"role": "user", "content": "hi"}]])[0]
    assert type(outcome) is ProviderError and "Could not reach" in str(outcome) and transient(outcome)


# -- the ledger's schema 3 ----------------------------------------------------------------------------

def test_a_schema_2_ledger_gains_the_answer_cache_with_every_row_kept(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        for statement in Ledger._statements(script):
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO jobs (provider, job_id, model, status, raw_status, updated_at, record) VALUES "
               "('together', 'ft-1', 'llama', 'succeeded', 'completed', '2026-11-01T00:00:00+00:00', ?)",
               (json.dumps({"provider": "together", "job_id": "ft-1", "base_model": "llama",
                            "status": "succeeded", "raw_status": "completed"}),))
    db.execute("INSERT INTO costs (recorded_at, provider, job_id, kind, model, usd, basis) VALUES "
               "('2026-11-01T00:00:00+00:00', 'together', 'ft-1', 'billed', 'llama', 4.2, 'billed')")
    db.commit()
    db.close()

    ledger = Ledger(path)
    assert ledger.version == len(MIGRATIONS) == 3
    assert ledger.job("ft-1").raw_status == "completed"
    assert [(c.kind, c.usd) for c in ledger.costs()] == [("billed", 4.2)]
    ledger.save_answer("k", "h", "item-0", Completion(text="hi", finish_reason="stop", cost_usd=0.5),
                       prompt_sha256="p", provider="compatible", model="m", params=GenerationParams())
    assert ledger.cached_answers("k", "h", ["item-0", "item-9"])["item-0"].text == "hi"
    assert [(c.kind, c.usd) for c in ledger.costs()] == [("billed", 4.2), ("inference", 0.5)]
    assert ledger.spend() == {"together": 4.2}  # inference is not a job's bill


class BatchingEndpoint(Endpoint):
    """An endpoint that batches (like the local model): records each batch it was asked; one prompt's
    outcome is a transient failure the first time, and one a lasting failure."""

    batches = True

    def __init__(self) -> None:
        self.model = "batching"
        self.batch_sizes: list[int] = []
        self.flaky_failed = False

    async def _generate(self, messages, params):
        return Completion(text=f"single:{messages[-1]['content']}", finish_reason="stop")

    async def acomplete_many(self, batch, params=None, *, concurrency=4, **overrides):
        self.batch_sizes.append(len(batch))
        outcomes = []
        for messages in batch:
            question = messages[-1]["content"]
            if question == "q3" and not self.flaky_failed:
                self.flaky_failed = True
                outcomes.append(ServiceUnreachable("the worker restarted", provider="local"))
            elif question == "q5":
                outcomes.append(NotFound("out of memory", provider="local"))
            else:
                outcomes.append(Completion(text=f"batched:{question}", finish_reason="stop"))
        return outcomes


def test_an_endpoint_that_batches_is_sent_batches_and_a_transient_failure_is_asked_again_alone(tmp_path):
    items = [Item(id=f"i{n}", messages=[{"role": "user", "content": f"q{n}"}], reference="") for n in range(10)]
    endpoint = BatchingEndpoint()
    async def no_wait(seconds: float) -> None:
        return None

    runner = Runner(Ledger(tmp_path / "state.db"), concurrency=4, show_progress=False, sleep=no_wait)
    answers = runner.run("local", endpoint, "local:batching", items)
    assert endpoint.batch_sizes == [4, 4, 2]
    assert [a.text for a in answers] == [
        "batched:q0", "batched:q1", "batched:q2", "single:q3", "batched:q4", None,
        "batched:q6", "batched:q7", "batched:q8", "batched:q9"]
    assert "out of memory" in answers[5].error
