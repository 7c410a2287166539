"""The runner: asks one endpoint every held-out item and keeps every answer.

- Resumable: an answer is saved in the ledger's answer cache the moment it arrives (one short
  transaction each, on a thread of its own, so the requests in flight never wait for the disk), keyed by
  the endpoint, the generation settings (:func:`params_hash`) and the item; a rerun after Ctrl-C or a
  crash asks only for what is missing, and says which answers came from the cache (``Answer.cached``).
  A priced answer's cost is recorded in the spend ledger with it, once.
- Bounded: at most ``concurrency`` requests at once, and optionally at most ``requests_per_minute`` and
  ``tokens_per_minute`` (requests spaced evenly; a request counts its prompt's approximate tokens, a
  quarter of its characters, plus the ``max_tokens`` it may generate, as services count it).
- Nothing lost: a rate limit is waited out by the endpoint (it honours ``Retry-After``); a transient
  failure (:func:`transient`) is asked again with exponential backoff and jitter (tenacity), a few times;
  an item that still fails becomes an :class:`Answer` with its ``error`` — the other answers stand.
- Generation is exactly the :class:`GenerationParams` given (default: temperature 0, greedy), and they
  are stored with every answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from tuneproxy.contract import Completion, Endpoint, GenerationParams, Message, run_blocking
from tuneproxy.display import PLAIN_LINES_PER_RUN, duration
from tuneproxy.errors import (
    ConfigError,
    ProviderError,
    RateLimited,
    ServiceUnreachable,
    TuneproxyError,
    UnreadableAnswer,
    redact,
)
from tuneproxy.evaluation.model import Answer, Item
from tuneproxy.ledger import CachedAnswer, Ledger

Sleep = Callable[[float], Awaitable[None]]


def params_hash(params: GenerationParams) -> str:
    """The answer cache's key for generation settings: sha256 of their canonical JSON."""
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def prompt_sha256(messages: Sequence[Message]) -> str:
    """A fingerprint of the exact prompt sent: a cached answer to another prompt is not served."""
    canonical = json.dumps([dict(m) for m in messages], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def approximate_tokens(messages: Sequence[Message]) -> int:
    """A prompt's tokens, roughly: a quarter of its characters (enough to keep under a tokens-per-minute
    limit without loading a tokenizer)."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):  # content parts: count the text ones
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return chars // 4 + 1


def transient(exc: BaseException) -> bool:
    """Worth asking again: no answer came (a dropped connection, a timeout), an answer that could not be
    read, or a server error (5xx, 408). A rate limit is not: the endpoint has already waited it out as
    long as the service asked. A refusal (another 4xx) would only be refused again."""
    if isinstance(exc, (ServiceUnreachable, UnreadableAnswer)):
        return True
    if isinstance(exc, RateLimited) or not isinstance(exc, ProviderError):
        return False
    if exc.status_code is None:  # a plain ProviderError without a status: the service was not reached
        return type(exc) is ProviderError
    return exc.status_code == 408 or exc.status_code >= 500


class Pace:
    """Spaces requests so that at most ``per_minute`` units (requests, or tokens) go out in a minute:
    each request waits for its turn, and holds the next one back by its share of the minute."""

    def __init__(self, per_minute: float, sleep: Sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds_per_unit = 60.0 / per_minute
        self.sleep = sleep
        self.clock = clock
        self.next_free = 0.0

    async def take(self, units: float = 1.0) -> None:
        now = self.clock()
        turn = max(now, self.next_free)
        self.next_free = turn + units * self.seconds_per_unit
        if turn > now:
            await self.sleep(turn - now)


class Runner:
    """Asks endpoints for answers to items, through the ledger's answer cache (see the module docstring).

    ``ledger``: the ledger whose file keeps the answers (the runner reads and writes it through a
    connection of its own, on a thread of its own). ``retries``: how many more times a transient failure
    is asked (0: never), waiting at most ``max_backoff`` seconds between tries. ``console``: where progress
    goes (default stderr): a live bar with rate, ETA and running cost on a terminal, a plain line every
    tenth of the items otherwise, nothing with ``show_progress=False``. ``sleep`` is the seam tests use to
    skip the backoff's waits.
    """

    def __init__(self, ledger: Ledger, *, concurrency: int = 8, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, show_progress: bool = True, retries: int = 3,
                 max_backoff: float = 30.0, console: Console | None = None, sleep: Sleep = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1 (got {concurrency}).")
        if retries < 0:
            raise ConfigError(f"retries must be 0 or more (got {retries}).")
        for name, limit in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if limit is not None and limit <= 0:
                raise ConfigError(f"{name} must be above 0 (got {limit}); leave it out for no limit.")
        self.ledger = ledger
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.show_progress = show_progress
        self.retries = retries
        self.max_backoff = max_backoff
        self.console = console
        self.sleep = sleep
        self.clock = clock  # the per-minute limits' clock (a test seam, with sleep)

    def run(self, system: str, endpoint: Endpoint, endpoint_key: str, items: Sequence[Item],
            params: GenerationParams | None = None) -> list[Answer]:
        """Blocking twin of :meth:`arun`; works inside a running event loop (a notebook) too."""
        return run_blocking(self.arun(system, endpoint, endpoint_key, items, params))

    async def arun(self, system: str, endpoint: Endpoint, endpoint_key: str, items: Sequence[Item],
                   params: GenerationParams | None = None) -> list[Answer]:
        """One answer per item, in the items' order: cached ones first, the missing ones asked.

        ``system`` names the answers ('tuned', 'base', ...); ``endpoint_key`` names the endpoint and its
        model for the cache (the same key, the same answers). One item's failure is its answer's
        ``error``, never an exception. The endpoint is closed at the end.
        """
        if not endpoint_key:
            raise ConfigError("Give an endpoint key: the name the answer cache keeps this endpoint's answers by.")
        cache = _AnswerCache(self.ledger)
        try:
            batch = _Batch(self, cache, system, endpoint, endpoint_key, params or GenerationParams(), items)
            await batch.read_cache()
            with _ProgressDisplay(system, total=len(batch.unique), cached=len(batch.answers),
                                  console=self.console or Console(stderr=True), enabled=self.show_progress) as shown:
                await batch.ask_missing(shown)
        finally:
            try:
                await cache.close()  # every answer received is saved before this returns, or raises
            finally:
                await endpoint.aclose()
        return [batch.answers[item.id] for item in items]


class _AnswerCache:
    """The ledger's answer cache through a connection of its own, on a thread of its own: saving an answer
    (a short transaction, synced to disk) never holds up the requests in flight, and the cache works from
    whatever thread the event loop runs in (a notebook's :func:`run_blocking` uses a worker thread).

    Answers are handed to the thread as they arrive; the thread saves everything handed over since it last
    looked, one transaction per answer, so a busy run wakes it once per handful of answers, not per answer.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.path = ledger.path
        self.clock = ledger.clock
        self.thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneproxy-answers")
        self.ledger: Ledger | None = None  # opened on the thread, the only one that uses it
        self.lock = threading.Lock()
        self.pending: list[Callable[[Ledger], None]] = []
        self.flush_queued = False
        self.unsaved: list[Exception] = []

    def _open(self) -> Ledger:
        if self.ledger is None:
            self.ledger = Ledger(self.path, clock=self.clock)
        return self.ledger

    async def lookup(self, endpoint_key: str, params_hash: str, item_ids: list[str]) -> dict[str, CachedAnswer]:
        return await asyncio.get_running_loop().run_in_executor(
            self.thread, lambda: self._open().cached_answers(endpoint_key, params_hash, item_ids))

    def save(self, endpoint_key: str, params_hash: str, item_id: str, completion: Completion, *,
             prompt_sha256: str, provider: str, model: str, params: GenerationParams) -> None:
        """Hand one answer to the thread to save (:meth:`close` waits until every one is saved)."""
        def work(ledger: Ledger) -> None:
            ledger.save_answer(endpoint_key, params_hash, item_id, completion, prompt_sha256=prompt_sha256,
                               provider=provider, model=model, params=params)

        with self.lock:
            self.pending.append(work)
            if self.flush_queued:
                return
            self.flush_queued = True
        self.thread.submit(self._flush)

    def _flush(self) -> None:
        """On the thread: save every answer handed over so far."""
        while True:
            with self.lock:
                batch, self.pending = self.pending, []
                if not batch:
                    self.flush_queued = False
                    return
            for work in batch:
                try:
                    work(self._open())
                except Exception as exc:  # reported at close; the answer is returned anyway
                    self.unsaved.append(exc)

    async def close(self) -> None:
        """Save what is still pending and close the connection; answers that could not be saved are a
        warning (they are returned all the same, and a rerun asks for them again)."""
        def finish() -> None:
            self._flush()
            if self.ledger is not None:
                self.ledger.close()

        try:
            # shielded, and the thread waited for: a Ctrl-C now still lets every answer received reach the disk
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(self.thread, finish))
        finally:
            self.thread.shutdown(wait=True)
        if self.unsaved:
            what = "1 answer" if len(self.unsaved) == 1 else f"{len(self.unsaved)} answers"
            warnings.warn(f"{what} could not be saved in the answer cache at {self.path} "
                          f"({_reason(self.unsaved[0])}); a rerun asks for them again.", RuntimeWarning,
                          stacklevel=3)


class _Batch:
    """One run of one endpoint over the items: what the cache holds, and asking for the rest."""

    def __init__(self, runner: Runner, cache: _AnswerCache, system: str, endpoint: Endpoint, endpoint_key: str,
                 params: GenerationParams, items: Sequence[Item]) -> None:
        self.runner = runner
        self.cache = cache
        self.system = system
        self.endpoint = endpoint
        self.endpoint_key = endpoint_key
        self.params = params
        self.params_hash = params_hash(params)
        self.unique: dict[str, Item] = {}
        for item in items:  # a repeated id is the same example: asked once, the first one
            self.unique.setdefault(item.id, item)
        self.prompts = {item_id: prompt_sha256(item.messages) for item_id, item in self.unique.items()}
        self.answers: dict[str, Answer] = {}
        # made in the running loop: an asyncio primitive belongs to the loop that first uses it
        self.gate = asyncio.Semaphore(runner.concurrency)
        self.requests = (Pace(runner.requests_per_minute, runner.sleep, runner.clock)
                         if runner.requests_per_minute else None)
        self.tokens = Pace(runner.tokens_per_minute, runner.sleep, runner.clock) if runner.tokens_per_minute else None

    async def read_cache(self) -> None:
        """Take the answers the cache holds for these items (given to the same prompt)."""
        cached = await self.cache.lookup(self.endpoint_key, self.params_hash, list(self.unique))
        self.answers.update({item_id: self._from_cache(row) for item_id, row in cached.items()
                             if row.prompt_sha256 == self.prompts[item_id]})

    async def ask_missing(self, shown: _ProgressDisplay) -> None:
        missing = [item for item_id, item in self.unique.items() if item_id not in self.answers]
        if self.endpoint.batches:
            await self._ask_in_batches(missing, shown)
            return

        async def one(item: Item) -> None:
            answer = await self._answer(item)
            self.answers[item.id] = answer
            shown.advance(answer)

        await asyncio.gather(*(one(item) for item in missing))

    async def _ask_in_batches(self, missing: Sequence[Item], shown: _ProgressDisplay) -> None:
        """An endpoint that answers a batch faster than one item at a time (a local model) gets batches of
        ``concurrency`` items; an item whose outcome is a transient error is then asked again on its own."""
        size = self.runner.concurrency
        for start in range(0, len(missing), size):
            chunk = missing[start:start + size]
            outcomes = await self.endpoint.acomplete_many([item.messages for item in chunk], self.params,
                                                          concurrency=size)
            for item, outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, Completion):
                    answer = self._accept(item, outcome)
                elif transient(outcome):
                    answer = await self._answer(item)
                else:
                    answer = Answer(system=self.system, item_id=item.id, error=_reason(outcome))
                self.answers[item.id] = answer
                shown.advance(answer)

    async def _answer(self, item: Item) -> Answer:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.runner.retries + 1),
            wait=wait_random_exponential(multiplier=0.5, max=self.runner.max_backoff),
            retry=retry_if_exception(transient), sleep=self.runner.sleep, reraise=True)
        try:
            completion = await retrying(self._ask, item.messages)
        except Exception as exc:  # one item's failure is its answer; the others go on
            return Answer(system=self.system, item_id=item.id, error=_reason(exc))
        return self._accept(item, completion)

    def _accept(self, item: Item, completion: Completion) -> Answer:
        """Keep a received answer: saved to the cache (as it arrives), and returned as the cache keeps it."""
        self.cache.save(
            self.endpoint_key, self.params_hash, item.id, completion, prompt_sha256=self.prompts[item.id],
            provider=getattr(self.endpoint, "provider", "") or "unknown", model=self.endpoint.model,
            params=self.params)
        # the text as the cache keeps it (any key it echoes removed), so a rerun reads the same answer
        return Answer(system=self.system, item_id=item.id, text=redact(completion.text),
                      finish_reason=completion.finish_reason, prompt_tokens=completion.usage.prompt_tokens,
                      completion_tokens=completion.usage.completion_tokens, cost_usd=completion.cost_usd,
                      latency_s=completion.latency_s)

    async def _ask(self, messages: Sequence[Message]) -> Completion:
        """One request: waits for a free slot, then for its turn under the per-minute limits."""
        async with self.gate:
            if self.requests:
                await self.requests.take()
            if self.tokens:
                await self.tokens.take(approximate_tokens(messages) + self.params.max_tokens)
            return await self.endpoint.acomplete(messages, self.params)

    def _from_cache(self, row: CachedAnswer) -> Answer:
        return Answer(system=self.system, item_id=row.item_id, text=row.text, finish_reason=row.finish_reason,
                      prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
                      cost_usd=row.cost_usd, latency_s=row.latency_s, cached=True)


def _reason(exc: Exception) -> str:
    if isinstance(exc, TuneproxyError):
        return str(exc)  # already without secrets
    return redact(f"{type(exc).__name__}: {exc}")


class _ProgressDisplay:
    """Answers so far, rate, ETA and what this run spent: a live bar on a terminal, plain lines elsewhere."""

    def __init__(self, system: str, *, total: int, cached: int, console: Console, enabled: bool) -> None:
        self.system = system
        self.total = total
        self.cached = cached
        self.console = console
        self.enabled = enabled
        self.live = console.is_interactive or console.is_jupyter
        self.asked = total - cached
        self.answered = 0
        self.failed = 0
        self.spent: float | None = None
        self.start = time.monotonic()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), console=console, transient=False)
        self.task: TaskID | None = None
        self.every = max(1, -(-self.asked // PLAIN_LINES_PER_RUN))

    def __enter__(self) -> _ProgressDisplay:
        if not self.enabled:
            return self
        if self.live:
            self.progress.start()
            self.task = self.progress.add_task(self.system, total=self.total, completed=self.cached,
                                               detail=self._detail())
        else:
            self._line(f"{self.system}: {self.total} items, {self.cached} from the cache, asking {self.asked}")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.enabled:
            return
        if self.live:
            self.progress.stop()
        elif kind is None:
            failed = f", {self.failed} failed" if self.failed else ""
            cost = f", ${self.spent:.4f} spent" if self.spent is not None else ""
            self._line(f"{self.system}: done, {self.answered} answered{failed}, {self.cached} from the cache, "
                       f"in {duration(time.monotonic() - self.start)}{cost}")

    def advance(self, answer: Answer) -> None:
        if answer.ok:
            self.answered += 1
        else:
            self.failed += 1
        if answer.cost_usd is not None:
            self.spent = (self.spent or 0.0) + answer.cost_usd
        if not self.enabled:
            return
        done = self.answered + self.failed
        if self.task is not None:
            self.progress.update(self.task, advance=1, detail=self._detail())
        elif not self.live and done % self.every == 0 and done < self.asked:
            self._line(f"{self.system}: {self.cached + self.answered + self.failed}/{self.total}  {self._detail()}")

    def _detail(self) -> str:
        done = self.answered + self.failed
        elapsed = time.monotonic() - self.start
        parts: list[str] = []
        if done and elapsed > 0:
            rate = done / elapsed
            parts += [f"{rate:.1f}/s", f"ETA {duration((self.asked - done) / rate)}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.spent is not None:
            parts.append(f"${self.spent:.4f}")
        return "  ".join(parts)

    def _line(self, text: str) -> None:
        # straight to the file: no markup, colour or cursor codes in a log
        self.console.file.write(text + "\n")
        self.console.file.flush()


__all__ = ["Pace", "Runner", "approximate_tokens", "params_hash", "prompt_sha256", "transient"]
