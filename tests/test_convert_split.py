"""Conversion to each provider's upload format (round trips) and holdout splits."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES
from tuneproxy import registry
from tuneproxy.dataset import load_examples, validate
from tuneproxy.dataset.convert import write_jsonl
from tuneproxy.dataset.split import split_holdout
from tuneproxy.dataset.validate import fingerprint_hash
from tuneproxy.errors import ConfigError

SAMPLE = FIXTURES / "datasets" / "sample.jsonl"
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello", "weight": 1}], "metadata": {"category": "greet"}}
PREFERENCE = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
              "preferred_output": [{"role": "assistant", "content": "Hello!"}],
              "non_preferred_output": [{"role": "assistant", "content": "Go away."}], "metadata": {"k": 1}}


def roundtrip(provider: str, record: dict, tmp_path):
    prov = registry.provider_class(provider)(api_key="x")
    path = tmp_path / f"{provider}.jsonl"
    write_jsonl(load_examples([record]), path, prov.serialize)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    return written, load_examples(path)


@pytest.mark.parametrize("provider", ["openai", "together", "fireworks"])
def test_chat_survives_the_round_trip_through_each_chat_upload_format(provider, tmp_path):
    written, back = roundtrip(provider, CHAT, tmp_path)
    assert "metadata" not in written[0]
    assert back[0].messages() == CHAT["messages"]


@pytest.mark.parametrize("provider", ["openai", "together"])
def test_preference_pairs_survive_the_round_trip(provider, tmp_path):
    written, back = roundtrip(provider, PREFERENCE, tmp_path)
    assert written[0] == {k: v for k, v in PREFERENCE.items() if k != "metadata"}
    assert back[0].format == "preference"


def test_replicate_renders_chat_as_prompt_and_completion(tmp_path):
    written, back = roundtrip("replicate", CHAT, tmp_path)
    assert written[0] == {"prompt": "system: Be brief.\nuser: Hi\nassistant: ", "completion": "Hello"}
    assert back[0].format == "completion" and back[0].reference() == "Hello"


def test_replicate_keeps_text_examples_as_text(tmp_path):
    written, _ = roundtrip("replicate", {"text": "plain text"}, tmp_path)
    assert written == [{"text": "plain text"}]


def test_every_converted_sample_file_validates_for_its_provider(tmp_path):
    for name in registry.names():
        provider = registry.provider_class(name)(api_key="x")
        path = tmp_path / f"{name}.jsonl"
        write_jsonl(load_examples(SAMPLE), path, provider.serialize)
        caps = provider.capabilities
        report = validate(path, rules=caps.rules, service=caps.display_name)
        assert report.ok, (name, report.counts)


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    examples = load_examples(SAMPLE)
    a = split_holdout(examples, 0.25, seed=1)[1]
    b = split_holdout(examples, 0.25, seed=1)[1]
    c = split_holdout(examples, 0.25, seed=2)[1]
    assert [e.line for e in a] == [e.line for e in b] != [e.line for e in c]


def test_split_by_count_and_fraction_keeps_every_example_once():
    examples = load_examples(SAMPLE)
    train, held = split_holdout(examples, 150, seed=0)
    assert len(held) == 150 and len(train) == len(examples) - 150
    assert {e.line for e in train} | {e.line for e in held} == {e.line for e in examples}
    assert len(split_holdout(examples, 0.1)[1]) == 40


def test_stratified_split_keeps_each_category_share():
    examples = load_examples(SAMPLE)
    _, held = split_holdout(examples, 100, seed=3, stratify="category")
    total = {c: sum(e.metadata["category"] == c for e in examples) for c in {e.metadata["category"] for e in examples}}
    got = {c: sum(e.metadata["category"] == c for e in held) for c in total}
    assert len(held) == 100
    for category, n in total.items():
        assert abs(got[category] - 100 * n / len(examples)) <= 1.5, (category, got, total)


def test_split_train_and_holdout_do_not_leak():
    examples = load_examples(SAMPLE)
    train, held = split_holdout(examples, 0.2, seed=0)
    report = validate([e.record for e in train], holdout=[e.record for e in held])
    assert "TP506" not in report.counts
    assert not {fingerprint_hash(e, True) for e in train} & {fingerprint_hash(e, True) for e in held}


@pytest.mark.parametrize("size", [0.0, 1.5, -3, 400])
def test_impossible_holdout_sizes_are_refused_with_guidance(size):
    with pytest.raises(ConfigError):
        split_holdout(load_examples(SAMPLE), size)


def test_strict_loading_names_the_first_bad_line(tmp_path):
    from tuneproxy.errors import DatasetError

    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n[1]\n{"text": "b"}\n')
    assert [e.line for e in load_examples(path)] == [1, 3]
    with pytest.raises(DatasetError, match="line 2: The line is a JSON list"):
        load_examples(path, strict=True)
