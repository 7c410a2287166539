"""Token counts: tiktoken's own encodings offline, OpenAI's chat overhead, local tokenizers, estimates."""

from __future__ import annotations

import hashlib

from tuneproxy import tokens


def test_offline_o200k_encoding_gives_openais_token_ids():
    enc = tokens.tiktoken_encoding("o200k_base")
    assert enc.encode("hello world") == [24912, 2375]


def test_offline_cl100k_encoding_gives_openais_token_ids():
    enc = tokens.tiktoken_encoding("cl100k_base")
    assert enc.encode("hello world") == [15339, 1917]


def test_rebuilt_vocabulary_file_matches_the_hash_tiktoken_pins():
    tokens.tiktoken_encoding.cache_clear()
    tokens.tiktoken_encoding("o200k_base")
    url, expected = tokens._OFFICIAL["o200k_base"]
    cached = tokens.cache_dir() / hashlib.sha1(url.encode()).hexdigest()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == expected


def test_openai_model_count_is_content_plus_cookbook_chat_overhead():
    counter = tokens.counter_for("gpt-4o-mini-2024-07-18", "tiktoken")
    conv = [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "Hi there!"}]
    enc = tokens.tiktoken_encoding("o200k_base")
    content = sum(len(enc.encode(t)) for t in ("user", "hello world", "assistant", "Hi there!"))
    assert counter.exact
    assert counter.count_batch([conv]) == [content + 3 * 2 + 3]


def test_older_openai_models_use_their_own_encoding():
    assert tokens.counter_for("gpt-3.5-turbo", "tiktoken").encoding_name == "cl100k_base"
    assert tokens.counter_for("ft:gpt-4o-mini-2024-07-18:org:x:abc", "tiktoken").encoding_name == "o200k_base"


def test_unknown_open_model_gets_an_estimate_with_its_error_bound():
    counter = tokens.counter_for("llama-3.1-8b-instruct")
    assert not counter.exact
    assert counter.error_bound == tokens.APPROX_ERROR_BOUND
    assert "±25%" in counter.name


def test_local_tokenizer_folder_counts_exactly_with_its_chat_template(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "user": 3, "assistant": 4, ":": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    fast.save_pretrained(tmp_path)
    counter = tokens.counter_for(str(tmp_path))
    assert counter.exact
    assert counter.count_batch([[{"role": "user", "content": "hello world"}]]) == [4]


def test_a_model_named_like_openai_gets_tiktoken_only_when_its_provider_says_so():
    assert not tokens.counter_for("gpt-4o-mini-2024-07-18").exact
    assert tokens.counter_for("gpt-4o-mini-2024-07-18", "tiktoken").exact


def test_a_hub_id_not_on_disk_does_not_import_transformers(tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delitem(sys.modules, "transformers", raising=False)
    counter = tokens.counter_for("meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "huggingface")
    assert not counter.exact and "transformers" not in sys.modules
