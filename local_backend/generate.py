"""The local Endpoint: batched generation with a base model, with or without a trained adapter.

The model is loaded on first use, the same way training loaded it (same source, same quantization), so
a tuned model and its base are compared like for like.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneproxy.local_backend import models

from tuneproxy.contract import Completion, Endpoint, Message, Usage
from tuneproxy.errors import ConfigError

GENERATION_PARAMS = frozenset({"max_tokens", "temperature", "top_p", "seed"})


class LocalEndpoint(Endpoint):
    """Generates replies locally. ``adapter`` is a PEFT adapter folder, or None for the base model."""

    def __init__(self, model: str, *, base: str, home: Path, adapter: Path | None = None,
                 quantization: str = "auto", device: str = "auto", batch_size: int = 8,
                 price_per_gpu_hour: float = 0.0) -> None:
        self.model = model
        self.base = base
        self.home = home
        self.adapter = adapter
        self.quantization = quantization
        self.device = device
        self.batch_size = batch_size
        self.price_per_gpu_hour = price_per_gpu_hour
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, str] | None = None

    def __repr__(self) -> str:
        return f"<LocalEndpoint {self.model}>"

    def load(self) -> tuple[Any, Any, str]:
        """The tokenizer, the model in eval mode, and its device (loaded once)."""
        if self._loaded is None:
            source = models.resolve(self.base)
            location = models.materialize(source, self.home)
            device = models.pick_device(self.device)
            quantization = models.pick_quantization(self.quantization, device)
            tokenizer = models.load_tokenizer(str(self.adapter) if self.adapter else location)
            tokenizer.padding_side = "left"  # generation continues the right end of every prompt
            model = models.load_model(location, quantization=quantization, device=device, source=source)
            if self.adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(self.adapter))
                if quantization == "none":
                    model = model.merge_and_unload()  # faster generation, same outputs
            model.eval()
            self._loaded = (tokenizer, model, device)
        return self._loaded

    async def acomplete(self, messages: Sequence[Message], **params: Any) -> Completion:
        """Generate one reply (see :meth:`generate` for the parameters)."""
        return (await asyncio.to_thread(self.generate, [messages], **params))[0]

    async def acomplete_many(self, batch: Sequence[Sequence[Message]], concurrency: int = 4,
                             **params: Any) -> list[Completion]:
        """Generate a reply for each conversation in batches (``concurrency`` is not needed locally)."""
        return await asyncio.to_thread(self.generate, batch, **params)

    def generate(self, conversations: Sequence[Sequence[Message]], max_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 **unknown: Any) -> list[Completion]:
        """Replies to ``conversations``, in order: greedy when ``temperature`` is 0, else sampled."""
        if unknown:
            raise ConfigError(
                f"The local endpoint does not take {', '.join(sorted(unknown))}; "
                f"it takes {', '.join(sorted(GENERATION_PARAMS))}."
            )
        with self._lock:  # one model, one generation at a time
            tokenizer, model, device = self.load()
            out: list[Completion] = []
            for start in range(0, len(conversations), self.batch_size):
                chunk = conversations[start:start + self.batch_size]
                out += self._generate_chunk(
                    tokenizer, model, device, chunk, max_tokens, temperature, top_p, seed
                )
            return out

    def _generate_chunk(self, tokenizer: Any, model: Any, device: str, chunk: Sequence[Sequence[Message]],
                        max_tokens: int, temperature: float, top_p: float,
                        seed: int | None) -> list[Completion]:
        import torch

        prompts = [tokenizer.apply_chat_template([dict(m) for m in msgs], tokenize=False,
                                                 add_generation_prompt=True) for msgs in chunk]
        enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if seed is not None:
                torch.manual_seed(seed)
        started = time.perf_counter()
        with torch.no_grad():
            generated = model.generate(**enc, max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=self._stop_ids(tokenizer, model), **sampling)
        latency = time.perf_counter() - started
        new_tokens = generated[:, enc["input_ids"].shape[1]:]
        stop_ids = set(self._stop_ids(tokenizer, model))
        completions = []
        for row, prompt_mask in zip(new_tokens.tolist(), enc["attention_mask"].tolist(), strict=True):
            produced = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
            completions.append(Completion(
                text=tokenizer.decode(row[:produced], skip_special_tokens=True).strip(),
                usage=Usage(prompt_tokens=sum(prompt_mask), completion_tokens=produced),
                latency_s=latency,
                cost_usd=self.price_per_gpu_hour * latency / 3600 / len(chunk),
            ))
        return completions

    @staticmethod
    def _stop_ids(tokenizer: Any, model: Any) -> list[int]:
        """End-of-turn tokens: the tokenizer's EOS plus whatever the model's generation config adds."""
        ids = {tokenizer.eos_token_id}
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return sorted(i for i in ids if i is not None)
