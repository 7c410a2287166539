"""Builders for the local backend's tests: a tiny random Llama and a word-level chat tokenizer.

Everything is made on the spot in a temporary folder, so the tests never download anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>"]
BASE_WORDS = ["system", "user", "assistant", "tool"]
WORD = re.compile(r"\w+|[^\w\s]+")

CATEGORIES = ["billing", "login", "shipping", "refund"]
TICKETS = {
    "billing": ["I was charged twice this month", "my invoice total looks wrong",
                "why is my card billed again"],
    "login": ["I cannot sign in to my account", "password reset link does not work",
              "locked out after update"],
    "shipping": ["my parcel has not arrived yet", "tracking shows no movement",
                 "package went to old address"],
    "refund": ["I want my money back for the order", "please refund the broken item",
               "return approved but no refund"],
}


def words_of(texts: Iterable[str]) -> list[str]:
    """Every distinct word and punctuation mark in ``texts``, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in WORD.findall(text):
            seen.setdefault(word, None)
    return list(seen)


def build_tokenizer(words: Sequence[str]) -> Any:
    """A word-level fast tokenizer over ``words`` with a ChatML-style chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in [*BASE_WORDS, *words]:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", unk_token="<|unk|>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model_folder(folder: Path, words: Sequence[str], *, hidden: int = 64, layers: int = 2,
                       seed: int = 0) -> Path:
    """Save a tiny randomly initialised Llama and its tokenizer to ``folder`` (an HF model folder)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ticket_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` support-ticket triage examples whose answer is a small JSON object."""
    import random

    rng = random.Random(seed)
    records = []
    for _ in range(n):
        category = rng.choice(CATEGORIES)
        text = rng.choice(TICKETS[category])
        answer = json.dumps({"category": category})
        records.append({
            "messages": [
                {"role": "system", "content": "Classify the ticket. Answer in JSON."},
                {"role": "user", "content": text},
                {"role": "assistant", "content": answer},
            ],
            "metadata": {"category": category},
        })
    return records


def ticket_words() -> list[str]:
    """The vocabulary the ticket records need."""
    texts = ["Classify the ticket. Answer in JSON.", *CATEGORIES, '{"category": ""}']
    texts += [t for group in TICKETS.values() for t in group]
    return words_of(texts)


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write ``records`` one JSON object per line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# following jobs and racing writers ------------------------------------------------------------------


def follow(provider: Any, job_id: str, until: Any = None, timeout_s: float = 240.0, poll_s: float = 0.05) -> Any:
    """Refresh the job (pausing with the provider's own ``sleep``) until ``until(record)`` holds — by
    default, until it ends — and return that record; fail the test after ``timeout_s``.

    Only for tests where a real worker process runs: nothing else makes a job move on its own.
    """
    import time

    until = until or (lambda record: record.status.terminal)
    deadline = time.monotonic() + timeout_s
    while True:
        record = provider.refresh(job_id)
        if until(record):
            return record
        assert time.monotonic() < deadline, f"job {job_id} still {record.raw_status} after {timeout_s}s"
        provider.sleep(poll_s)


def trained_tiny_adapter(root: Path, intent_id: str, learning_rate: float = 1e-2) -> tuple[Any, Path, Any]:
    """A tiny base model built under ``root`` and a LocalProvider (home ``root/tuneproxy-home/local``, where the
    CLI looks) holding one succeeded job whose adapter trained for 2 steps on 16 tickets: (provider, model
    folder, the job's record)."""
    from tuneproxy.contract import JobSpec, JobStatus
    from tuneproxy.local_backend.provider import LocalProvider

    model_dir = build_model_folder(root / "model", ticket_words())
    provider = LocalProvider({"home": root / "tuneproxy-home" / "local", "max_steps": 2})
    training = provider.upload(write_jsonl(root / "train.jsonl", ticket_records(16))).id
    record = provider.submit(JobSpec(model=str(model_dir), training_file=training, intent_id=intent_id,
                                     hyperparameters={"epochs": 1, "learning_rate": learning_rate, "batch_size": 8,
                                                      "lora_rank": 4}))
    record = follow(provider, record.job_id)
    assert record.status == JobStatus.SUCCEEDED, record.error
    return provider, model_dir, record


def make_job_folder(home: Path, job_id: str, model: str = "some-model", **state: Any) -> Path:
    """A job folder as ``submit`` leaves it, with ``state`` as its state.json and no worker."""
    from tuneproxy.local_backend.jobfiles import JobFiles, write_json_atomic

    files = JobFiles(home / "jobs" / job_id)
    files.root.mkdir(parents=True)
    write_json_atomic(files.path("state.json"), state)
    write_json_atomic(files.path("job.json"), {
        "job_id": job_id, "intent_id": "intent-1", "created_at": "2026-11-01T00:00:00+00:00",
        "spec": {"model": model}, "settings": {"model": model}, "home": str(home),
    })
    return files.root


def hammer_state(job_dir: str, key: str, times: int, barrier: Any) -> None:
    """Set ``key`` in the job's state ``times`` times (run in its own process, all starting together)."""
    from tuneproxy.local_backend.jobfiles import JobFiles

    files = JobFiles(Path(job_dir))
    barrier.wait()
    for n in range(times):
        files.update_state(**{key: n})


def hammer_events(job_dir: str, writer: str, times: int, barrier: Any) -> None:
    """Append ``times`` events named after ``writer`` (run in its own process, all starting together)."""
    from tuneproxy.local_backend.jobfiles import JobFiles

    files = JobFiles(Path(job_dir))
    barrier.wait()
    for n in range(times):
        files.append_event(f"{writer} {n}")


def run_together(target: Any, job_dir: Path, names: list[str], times: int) -> None:
    """Run ``target(job_dir, name, times, barrier)`` in one fresh process per name, all at once."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch's threads
    barrier = context.Barrier(len(names))
    processes = [context.Process(target=target, args=(str(job_dir), name, times, barrier)) for name in names]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * len(names)
