"""Held-out examples become items cut before their answer; a fit keeps its holdout with the job; a
few-shot prompt is drawn from the training examples only, the same way every run, spread over slices."""

from __future__ import annotations

import json
import stat

import pytest

from tests.fit_helpers import SAMPLE, make_tuner
from tuneproxy.dataset.examples import Example
from tuneproxy.dataset.validate import load_examples
from tuneproxy.errors import ConfigError, DatasetError
from tuneproxy.evaluation.items import few_shot_examples, to_item, to_items, with_shots
from tuneproxy.evaluation.plan import holdout_items
from tuneproxy.holdouts import example_id, load
from tuneproxy.recording import ReplayTransport, cassette_path


def chat(question: str, answer: str, category: str | None = None, system: str | None = None) -> Example:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    record: dict = {"messages": messages}
    if category:
        record["metadata"] = {"category": category}
    return Example("chat", record)


def test_an_item_is_the_conversation_before_the_final_answer_and_that_answer():
    example = chat("Ticket: refund?", '{"category": "billing"}', "billing", system="Reply in JSON.")
    item = to_item(example, slice_by="category")
    assert item.messages == [{"role": "system", "content": "Reply in JSON."},
                             {"role": "user", "content": "Ticket: refund?"}]
    assert item.reference == '{"category": "billing"}'
    assert item.slice == "billing"


def test_an_items_id_does_not_depend_on_key_order_but_on_content():
    one = Example("chat", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    same = Example("chat", {"messages": [{"content": "a", "role": "user"}, {"content": "b", "role": "assistant"}]})
    other = Example("chat", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]})
    assert to_item(one).id == to_item(same).id != to_item(other).id


def test_an_example_with_nothing_before_its_answer_or_no_answer_is_refused():
    with pytest.raises(DatasetError, match="no prompt"):
        to_item(Example("chat", {"messages": [{"role": "assistant", "content": "b"}]}))
    with pytest.raises(DatasetError, match="no prompt"):
        to_item(Example("chat", {"messages": [{"role": "user", "content": "a"}]}))


def test_a_slice_key_no_example_has_is_an_error_not_one_unsliced_group():
    with pytest.raises(ConfigError, match="catgory"):
        to_items([chat("q", "a", "billing")], slice_by="catgory")


def test_few_shot_draws_the_same_examples_every_time_and_one_of_each_slice_first():
    training = [chat(f"q{i}", f"a{i}", category) for i, category in
                enumerate(["billing"] * 6 + ["security"] * 3 + ["account"] * 2)]
    first = few_shot_examples(training, 3, slice_by="category")
    again = few_shot_examples(list(reversed(training)), 3, slice_by="category")  # file order does not matter
    assert [example_id(e.record) for e in first] == [example_id(e.record) for e in again]
    assert sorted(e.record["metadata"]["category"] for e in first) == ["account", "billing", "security"]
    assert len(few_shot_examples(training, 50, slice_by="category")) == len(training)


def test_the_shots_come_after_the_system_prompt_and_before_the_question():
    item = to_item(chat("the question", "the answer", system="Be brief."))
    shots = [chat("shot question", "shot answer", system="Be brief.")]
    assert with_shots(item, shots) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "shot question"}, {"role": "assistant", "content": "shot answer"},
        {"role": "user", "content": "the question"}]


@pytest.mark.filterwarnings("ignore::tuneproxy.tuner.SunsetWarning")
@pytest.mark.filterwarnings("ignore::tuneproxy.tuner.DatasetWarning")
def test_a_fit_keeps_its_holdout_privately_and_evaluation_refuses_what_it_trained_on(isolated_home, tmp_path):
    tuned = make_tuner("openai", ReplayTransport(cassette_path("openai", "fit_happy_path"))).fit(SAMPLE, holdout=0.1)
    kept = load(tuned.record.intent_id)
    assert kept is not None and len(kept.holdout) == 40 and len(kept.trained) == 360
    path = isolated_home / "holdouts" / f"{tuned.record.intent_id}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    items = holdout_items(tuned, slice_by="category")
    assert {item.id for item in items} == {example_id(record) for record in kept.holdout}
    assert not {item.id for item in items} & set(kept.trained)

    trained_on = tmp_path / "leaky.jsonl"
    records = [ex.record for ex in load_examples(SAMPLE)]
    trained_on.write_text("".join(json.dumps(r) + "\n" for r in records[:20]))
    held = sum(example_id(r) not in set(kept.trained) for r in records[:20])
    with pytest.raises(DatasetError, match=f"{20 - held} of the 20 evaluation examples were trained on"):
        holdout_items(tuned, trained_on)


def test_on_a_deployment_the_candidate_is_asked_at_its_serving_name_and_only_once_it_is_ready():
    from tuneproxy.contract import Deployment, JobRecord, JobStatus
    from tuneproxy.evaluation.plan import candidate_system
    from tuneproxy.ledger import Ledger
    from tuneproxy.providers.together import TogetherProvider
    from tuneproxy.tuned import TunedModel

    record = JobRecord(provider="together", job_id="ft-1", base_model="meta-llama/Meta-Llama-3.1-8B-Instruct",
                       status=JobStatus.SUCCEEDED, raw_status="completed", tuned_model="acme/llama-tuned")
    tuned = TunedModel(TogetherProvider(api_key="tgp_v1_testkeytestkey"), record, Ledger())
    ready = Deployment(provider="together", deployment_id="dep-1", model="acme/llama-tuned",
                       serving_model="acme/llama-tuned-dep-1", state="ready", raw_state="STARTED")
    system = candidate_system(tuned, ready)
    assert system.endpoint.model == "acme/llama-tuned-dep-1"
    assert system.key == "together:acme/llama-tuned-dep-1"  # its answers are not the serverless model's
    with pytest.raises(ConfigError, match="dep-1 is creating"):
        candidate_system(tuned, ready.model_copy(update={"state": "creating"}))
