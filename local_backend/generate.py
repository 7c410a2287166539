"""The local Endpoint: batched generation with a base model, with or without a trained adapter.

The model is loaded on first use, the same way training loaded it (same source, same quantization), so
a tuned model and its base are compared like for like. Generation runs in a worker thread, so the
endpoint's async methods never block the event loop; one model generates one batch at a time. ``stream``
generates one reply and hands its text over piece by piece as it is generated (what `tuneproxy serve` sends
to a streamed request).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuneproxy.contract import Completion, Endpoint, GenerationParams, Message, Outcome, Usage, generation_params
from tuneproxy.errors import ProviderError
from tuneproxy.local_backend import models


class LocalEndpoint(Endpoint):
    """Generates replies locally. ``adapter`` is a PEFT adapter folder, or None for the base model.

    ``acomplete_many`` generates in batches of ``batch_size`` (``concurrency`` plays no part here). Each
    :class:`~tuneproxy.contract.Completion` says why it ended: ``stop`` (an end-of-turn token, or one of
    the ``stop`` strings, where the text is cut) or ``length`` (``max_tokens`` reached). ``cost_usd`` is
    None: local generation is not priced (only training time is billed, at ``price_per_gpu_hour``).
    """

    batches = True  # a batch generates together: far faster than its prompts one at a time

    def __init__(self, model: str, *, base: str, home: Path, adapter: Path | None = None,
                 quantization: str = "auto", device: str = "auto", batch_size: int = 8) -> None:
        self.model = model
        self.base = base
        self.home = home
        self.adapter = adapter
        self.quantization = quantization
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.RLock()  # held while loading and while generating
        self._loaded: tuple[Any, Any, str] | None = None

    def __repr__(self) -> str:
        return f"<LocalEndpoint {self.model}>"

    def load(self) -> tuple[Any, Any, str]:
        """The tokenizer, the model in eval mode, and its device (loaded once)."""
        with self._lock:
            return self._load()

    def _load(self) -> tuple[Any, Any, str]:
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

                with models.peft_quietly():
                    model = PeftModel.from_pretrained(model, str(self.adapter))
                if quantization == "none":
                    model = model.merge_and_unload()  # faster generation, same outputs
            model.eval()
            self._loaded = (tokenizer, model, device)
        return self._loaded

    async def _generate(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        outcome = (await asyncio.to_thread(self.generate, [messages], params))[0]
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    async def acomplete_many(self, batch: Sequence[Sequence[Message]], params: GenerationParams | None = None,
                             *, concurrency: int = 4, **overrides: Any) -> list[Outcome]:
        """One outcome per conversation, in order, generated in batches of ``batch_size``."""
        settings = generation_params(params, overrides)
        return await asyncio.to_thread(self.generate, batch, settings)

    def generate(self, conversations: Sequence[Sequence[Message]], params: GenerationParams | None = None,
                 **overrides: Any) -> list[Outcome]:
        """Replies to ``conversations``, in order: greedy when ``temperature`` is 0, else sampled.

        A batch that fails to generate (out of memory, say) gives its error as the outcome of each of its
        conversations; the other batches still answer. A model that cannot be loaded raises.
        """
        settings = generation_params(params, overrides)
        with self._lock:  # one model, one generation at a time
            tokenizer, model, device = self.load()
            out: list[Outcome] = []
            for start in range(0, len(conversations), self.batch_size):
                chunk = conversations[start:start + self.batch_size]
                try:
                    out += self._generate_chunk(tokenizer, model, device, chunk, settings)
                except Exception as exc:  # every item gets an outcome, whatever broke
                    error = ProviderError(f"Local generation failed: {type(exc).__name__}: {exc}",
                                          provider="local", raw=type(exc).__name__)
                    out += [error] * len(chunk)
            return out

    def _generate_chunk(self, tokenizer: Any, model: Any, device: str, chunk: Sequence[Sequence[Message]],
                        params: GenerationParams) -> list[Completion]:
        import torch

        enc = self._encode(tokenizer, device, chunk)
        sampling = self._sampling(params)
        stop_ids = self._stop_ids(tokenizer, model)
        started = time.perf_counter()
        with torch.no_grad():
            generated = model.generate(**enc, max_new_tokens=params.max_tokens,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids, **sampling)
        latency = time.perf_counter() - started
        new_tokens = generated[:, enc["input_ids"].shape[1]:]
        completions = []
        for row, prompt_mask in zip(new_tokens.tolist(), enc["attention_mask"].tolist(), strict=True):
            ended = next((i + 1 for i, t in enumerate(row) if t in stop_ids), None)
            produced = ended if ended is not None else len(row)
            text = tokenizer.decode(row[:produced], skip_special_tokens=True)
            text, stopped = cut_at_stop(text, params.stop)
            completions.append(Completion(
                text=text.strip(),
                finish_reason="stop" if ended is not None or stopped else "length",
                usage=Usage(prompt_tokens=sum(prompt_mask), completion_tokens=produced),
                latency_s=latency,
                cost_usd=None,
            ))
        return completions

    def stream(self, messages: Sequence[Message], params: GenerationParams, emit: Callable[[str], None],
               cancelled: threading.Event | None = None) -> Completion:
        """Generate one reply, calling ``emit`` with each new piece of its text as it is generated, and return
        the whole :class:`~tuneproxy.contract.Completion`.

        The pieces join to the completion's text, which is :meth:`generate`'s for the same conversation (greedy:
        the same words): stripped, and cut at the first ``stop`` string — generation ends there, and nothing
        after it is emitted, since the text's last ``len(longest stop) - 1`` characters wait until they cannot
        begin one. Setting ``cancelled`` (the client went away) ends generation after the current token.
        Blocking: run it in a worker thread. A model that cannot be loaded, or a failed generation, raises."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        release = TextRelease(params.stop)

        class Watch(StoppingCriteria):
            """Called after every token: hands the settled text on, and ends generation at a stop string or
            when cancelled."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                piece = release.update(tokenizer.decode(input_ids[0, start:].tolist(), skip_special_tokens=True))
                if piece:
                    emit(piece)
                done = release.stopped or (cancelled is not None and cancelled.is_set())
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        with self._lock:  # one model, one generation at a time
            tokenizer, model, device = self._load()
            enc = self._encode(tokenizer, device, [messages])
            start = enc["input_ids"].shape[1]
            stop_ids = self._stop_ids(tokenizer, model)
            started = time.perf_counter()
            with torch.no_grad():
                generated = model.generate(**enc, max_new_tokens=params.max_tokens,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids,
                                           stopping_criteria=StoppingCriteriaList([Watch()]),
                                           **self._sampling(params))
            latency = time.perf_counter() - started
        row = generated[0, start:].tolist()
        ended = next((i + 1 for i, t in enumerate(row) if t in stop_ids), None)
        produced = ended if ended is not None else len(row)
        piece = release.finish(tokenizer.decode(row[:produced], skip_special_tokens=True))
        if piece:
            emit(piece)
        return Completion(text=release.released, finish_reason="stop" if ended is not None or release.stopped
                          else "length", usage=Usage(prompt_tokens=start, completion_tokens=produced),
                          latency_s=latency, cost_usd=None)

    @staticmethod
    def _encode(tokenizer: Any, device: str, conversations: Sequence[Sequence[Message]]) -> Any:
        """The conversations' prompts (chat template, generation prompt), tokenized and left-padded."""
        prompts = [tokenizer.apply_chat_template([dict(m) for m in msgs], tokenize=False,
                                                 add_generation_prompt=True) for msgs in conversations]
        return tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)

    @staticmethod
    def _sampling(params: GenerationParams) -> dict[str, Any]:
        """``generate``'s sampling arguments (greedy at temperature 0); seeds torch when a seed is given."""
        if params.temperature == 0:
            return {"do_sample": False}
        if params.seed is not None:
            import torch

            torch.manual_seed(params.seed)
        return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}

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


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first of the ``stop`` strings, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


class TextRelease:
    """The text of a reply being generated, released as it settles into what the finished reply will say.

    :meth:`update` takes the whole text decoded so far and gives the part not released before that the
    finished reply is sure to begin with: without the last ``len(longest stop) - 1`` characters (they may
    begin a stop string), without a trailing half-decoded character, without trailing whitespace (the reply
    is stripped). Once a stop string appears, the text before it is released and :attr:`stopped` is set.
    :meth:`finish` releases the rest of the final text. :attr:`released` is everything released so far.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.released = ""
        self.stopped = False

    def update(self, text: str) -> str:
        """The newly settled part of ``text`` (the reply so far)."""
        if self.stopped:
            return ""
        cut, self.stopped = cut_at_stop(text, self.stop)
        if self.stopped:
            return self._release(cut.strip())
        return self._release(text[:len(text) - self.hold].rstrip("\ufffd").strip())

    def finish(self, text: str) -> str:
        """What is left to release of the finished reply ``text``."""
        if self.stopped:
            return ""
        cut, self.stopped = cut_at_stop(text, self.stop)
        return self._release(cut.strip())

    def _release(self, settled: str) -> str:
        if not settled.startswith(self.released):  # decoding rewrote released text: nothing more is sure
            return ""
        piece = settled[len(self.released):]
        self.released = settled
        return piece
