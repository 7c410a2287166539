"""Assistant-only labels from the chat template, and packing that keeps examples apart."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from tests.local_helpers import build_model_folder, build_tokenizer, ticket_records, ticket_words  # noqa: E402
from tuneproxy.local_backend.collate import IGNORE, collate_row, encode_chat, pack_rows  # noqa: E402
from tuneproxy.local_backend.errors import TemplateError  # noqa: E402
from tuneproxy.local_backend.train import loss_sum  # noqa: E402

CONVERSATION = [
    {"role": "system", "content": "Be brief ."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello there", "weight": 0},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ok bye"},
]
WORDS = ["Be", "brief", ".", "hi", "hello", "there", "bye", "ok"]


def labelled(tokenizer, messages):
    encoded = encode_chat(tokenizer, messages, max_length=512)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    return [(tok, label != IGNORE) for tok, label in zip(tokens, encoded.labels, strict=True)], encoded


def test_only_weighted_assistant_tokens_carry_labels_token_by_token():
    pairs, encoded = labelled(build_tokenizer(WORDS), CONVERSATION)
    assert pairs == [
        ("<|im_start|>", False), ("system", False), ("Be", False), ("brief", False), (".", False),
        ("<|im_end|>", False),
        ("<|im_start|>", False), ("user", False), ("hi", False), ("<|im_end|>", False),
        ("<|im_start|>", False), ("assistant", False), ("hello", False), ("there", False),
        ("<|im_end|>", False),  # weight 0: context only
        ("<|im_start|>", False), ("user", False), ("bye", False), ("<|im_end|>", False),
        ("<|im_start|>", False), ("assistant", False), ("ok", True), ("bye", True), ("<|im_end|>", True),
    ]
    trained = [label for label in encoded.labels if label != IGNORE]
    assert trained == encoded.input_ids[-3:]  # labels are the token ids themselves


def test_every_assistant_turn_is_trained_when_none_has_weight_zero():
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in CONVERSATION]
    pairs, _ = labelled(build_tokenizer(WORDS), messages)
    assert [tok for tok, trained in pairs if trained] == ["hello", "there", "<|im_end|>", "ok", "bye", "<|im_end|>"]


def test_truncation_keeps_labels_aligned_with_tokens():
    encoded = encode_chat(build_tokenizer(WORDS), CONVERSATION, max_length=22)
    assert len(encoded.input_ids) == len(encoded.labels) == 22
    assert encoded.trained_tokens == 1  # only "ok" survives the cut


def test_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = build_tokenizer(WORDS)
    # renders the last message differently from the others, so prefixes do not line up
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(TemplateError, match="prefix by prefix"):
        encode_chat(tokenizer, CONVERSATION, max_length=512)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_model_folder(tmp_path_factory.mktemp("tiny") / "model", ticket_words())
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    return AutoTokenizer.from_pretrained(folder), model


def test_packed_examples_give_the_same_logits_as_each_example_alone(tiny):
    tokenizer, model = tiny
    examples = [encode_chat(tokenizer, r["messages"], 512) for r in ticket_records(3, seed=5)]
    row = collate_row(examples)
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0]
        start = 0
        for ex in examples:
            alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            torch.testing.assert_close(packed[start:start + len(ex)], alone, rtol=1e-4, atol=1e-5)
            start += len(ex)


def test_without_restarting_positions_the_examples_would_see_each_other(tiny):
    tokenizer, model = tiny
    first, second = (encode_chat(tokenizer, r["messages"], 512) for r in ticket_records(2, seed=5))
    ids = torch.tensor([first.input_ids + second.input_ids])
    with torch.no_grad():
        contaminated = model(input_ids=ids).logits[0, len(first):]
        alone = model(input_ids=torch.tensor([second.input_ids])).logits[0]
    assert not torch.allclose(contaminated, alone, atol=1e-3)


def test_packed_loss_equals_the_sum_of_unpacked_losses(tiny):
    tokenizer, model = tiny
    examples = [encode_chat(tokenizer, r["messages"], 512) for r in ticket_records(4, seed=6)]
    with torch.no_grad():
        packed = loss_sum(model, collate_row(examples), "cpu")
        separate = sum(loss_sum(model, collate_row([ex]), "cpu") for ex in examples)
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-4)


def test_rows_hold_every_example_once_within_the_token_budget(tiny):
    tokenizer, _ = tiny
    examples = [encode_chat(tokenizer, r["messages"], 512) for r in ticket_records(20, seed=7)]
    budget = 3 * max(len(e) for e in examples)
    rows = pack_rows(examples, budget)
    assert sorted(id(e) for row in rows for e in row) == sorted(id(e) for e in examples)
    assert all(sum(len(e) for e in row) <= budget for row in rows)
    assert len(rows) < len(examples)
