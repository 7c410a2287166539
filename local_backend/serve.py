"""An OpenAI-compatible HTTP server for local models: a base model and the LoRA adapters tuned from it.

Starlette answers ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain or streamed as server-sent
events); uvicorn runs it. Generation is the local backend's own: each served model is a
:class:`~tuneproxy.local_backend.generate.LocalEndpoint`. Plain requests go through a :class:`RequestBatcher`
per model, which generates the requests that arrive together in one batch; a streamed request is generated
on its own, token by token, its text sent as it comes (:func:`generate_streaming`).

``tuneproxy serve --engine vllm`` (or ``auto``, on a CUDA GPU with vLLM installed) launches vLLM's
OpenAI server on the same base and adapters instead (:func:`vllm_command`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneproxy.contract import Completion, Endpoint, GenerationParams, Message, Outcome
from tuneproxy.errors import ConfigError, ProviderError

GATHER_S = 0.005  # how long a request reaching an idle model waits for others to join its batch
RETURN_S = 0.05  # how long a batch waits for the clients just answered to come back with their next request
DEFAULT_MAX_TOKENS = 256
BATCH_HEADER = "x-tuneproxy-batch-size"  # on a plain answer: how many requests its batch generated together
ENGINES = ("auto", "builtin", "vllm")
# vLLM's --max-lora-rank takes one of these (vllm/config/lora.py, MaxLoRARanks, v0.11 docs)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class ServedModel:
    """A model the server answers for: its name in requests, what generates it (a local endpoint: its
    ``load`` and ``stream`` serve streamed requests), and the base it was tuned from (None for a base
    model)."""

    name: str
    endpoint: Endpoint
    parent: str | None = None


class RequestBatcher:
    """Gathers concurrent requests for one endpoint and generates them together.

    Requests that arrive while a batch generates form the next one. Before a batch starts, it waits for
    the requests it can expect, up to the endpoint's ``batch_size``: at an idle model, the first request
    waits ``gather_s`` for others; right after a batch, the batcher waits up to ``return_s`` for the
    clients it just answered to come back (clients that ask again as soon as they are answered would
    otherwise split into two half-size batches, each generating while the other's clients reply). A lone
    client, answered, is expected alone: its next request starts at once. Everything pending is then
    grouped by its generation settings (one batch generates with one set), and each group goes to the
    endpoint's ``acomplete_many`` in one call. ``batch_sizes`` records the size of every call, so a
    caller can see that batching happened (each answer says its own: :data:`BATCH_HEADER`).
    """

    def __init__(self, endpoint: Endpoint, gather_s: float = GATHER_S, return_s: float = RETURN_S) -> None:
        self.endpoint = endpoint
        self.gather_s = gather_s
        self.return_s = return_s
        self.max_batch: int = getattr(endpoint, "batch_size", 8)
        self.batch_sizes: list[int] = []
        self._pending: list[tuple[Sequence[Message], GenerationParams, asyncio.Future[tuple[Outcome, int]]]] = []
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._answered_at = float("-inf")  # when the last batch was answered (the event loop's clock)
        self._expected = 0  # how many requests to expect right after it: those waiting, those answered

    async def complete(self, messages: Sequence[Message], params: GenerationParams) -> tuple[Completion, int]:
        """The reply to ``messages``, generated in a batch with whatever else is pending, and the size of that
        batch; a failed generation raises its :class:`ProviderError`."""
        future: asyncio.Future[tuple[Outcome, int]] = asyncio.get_running_loop().create_future()
        self._pending.append((messages, params, future))
        self._arrived.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        outcome, size = await future
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome, size

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await self._gather(loop)
            taken, self._pending = self._pending, []
            groups: dict[GenerationParams, list[tuple[Sequence[Message], asyncio.Future[tuple[Outcome, int]]]]] = {}
            for messages, params, future in taken:
                groups.setdefault(params, []).append((messages, future))
            for params, items in groups.items():
                await self._generate(params, items)
            self._answered_at, self._expected = loop.time(), len(self._pending) + len(taken)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the requests this batch can expect are pending, or its wait is over."""
        if loop.time() - self._answered_at < self.return_s:
            target, deadline = min(self._expected, self.max_batch), self._answered_at + self.return_s
        else:
            target, deadline = self.max_batch, loop.time() + self.gather_s
        while len(self._pending) < target and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin TimeoutError on 3.10
                await asyncio.wait_for(self._arrived.wait(), left)

    async def _generate(self, params: GenerationParams,
                        items: list[tuple[Sequence[Message], asyncio.Future[tuple[Outcome, int]]]]) -> None:
        self.batch_sizes.append(len(items))
        try:
            outcomes = await self.endpoint.acomplete_many([messages for messages, _ in items], params)
        except Exception as exc:  # the model could not be loaded: every waiting request hears why
            outcomes = [generation_failed(exc)] * len(items)
        for (_, future), outcome in zip(items, outcomes, strict=True):
            if not future.done():  # a client that went away cancelled its future
                future.set_result((outcome, len(items)))


# the request, as OpenAI's chat completions API defines it (the part a local model can honour) ----------


class TextPart(BaseModel):
    """One text part of a message's content given as a list."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_message(self) -> dict[str, str]:
        """The message as the chat template takes it (a developer message is a system message)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    """Options of a streamed answer."""

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``. Fields OpenAI defines that play no part here are ignored;
    a field of the wrong type or out of range is refused."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    def params(self) -> GenerationParams:
        """The generation settings the request asks for."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return GenerationParams(max_tokens=self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS,
                                temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=tuple(stop))


# the app -----------------------------------------------------------------------------------------------


def create_app(models: Sequence[ServedModel], *, gather_s: float = GATHER_S, return_s: float = RETURN_S) -> Any:
    """The Starlette app serving ``models`` (``gather_s`` and ``return_s`` as :class:`RequestBatcher` takes
    them). ``app.state.batchers`` maps each model name to its :class:`RequestBatcher`; ``app.state.models``
    lists the :class:`ServedModel` s."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    batchers = {m.name: RequestBatcher(m.endpoint, gather_s, return_s) for m in models}
    started = int(time.time())

    async def list_models(request: Request) -> Response:
        data = [{"id": m.name, "object": "model", "created": started, "owned_by": "tuneproxy",
                 "root": m.parent or m.name, "parent": m.parent} for m in models]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error_response(400, f"The body is not valid JSON: {exc}.")
        if not isinstance(body, dict):
            return error_response(400, "The body must be a JSON object.")
        try:
            chat = ChatRequest.model_validate(body)
        except ValidationError as exc:
            param, problem = first_problem(exc)
            return error_response(400, f"Invalid request: {param}: {problem}.", param=param)
        if chat.model not in batchers:
            return error_response(404, f"The model {chat.model!r} is not served here; these are: "
                                       f"{', '.join(batchers)}.", param="model", code="model_not_found")
        messages = [m.as_message() for m in chat.messages]
        if chat.stream:
            endpoint: Any = batchers[chat.model].endpoint  # a LocalEndpoint: it loads and streams
            try:
                await asyncio.to_thread(endpoint.load)  # a model that cannot load is a 500, not a broken stream
            except Exception as exc:
                return error_response(500, generation_failed(exc).message, error_type="server_error")
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            pieces = generate_streaming(endpoint, messages, chat.params())
            return StreamingResponse(Answer(chat.model).events(pieces, include_usage),
                                     media_type="text/event-stream")
        try:
            completion, batch_size = await batchers[chat.model].complete(messages, chat.params())
        except ProviderError as exc:
            return error_response(500, str(exc), error_type="server_error")
        return JSONResponse(Answer(chat.model).body(completion), headers={BATCH_HEADER: str(batch_size)})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}.")

    async def server_error(request: Request, exc: Exception) -> Response:  # a bug: uvicorn logs its traceback
        return error_response(500, f"Internal error: {type(exc).__name__}.", error_type="server_error")

    app = Starlette(routes=[Route("/v1/models", list_models, methods=["GET"]),
                            Route("/v1/chat/completions", chat_completions, methods=["POST"])],
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.batchers = batchers
    app.state.models = list(models)
    return app


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """The field the first validation error is about (as ``messages.0.content``) and what is wrong with it.

    A value that fits none of a union's types gives one error per type, each under the type's name; they
    are reported together, under the field they share."""
    errors = exc.errors()
    field = errors[0]["loc"][:1]
    same = [e for e in errors if e["loc"][:1] == field]
    common = list(same[0]["loc"])
    for error in same[1:]:
        shared = 0
        while shared < min(len(common), len(error["loc"])) and common[shared] == error["loc"][shared]:
            shared += 1
        common = common[:shared]
    problems = dict.fromkeys(e["msg"] for e in same)
    return ".".join(str(part) for part in common), " or ".join(problems)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   error_type: str = "invalid_request_error") -> Any:
    """A JSON error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": error_type, "param": param, "code": code}},
                        status_code=status)


async def generate_streaming(endpoint: Any, messages: Sequence[Message],
                             params: GenerationParams) -> AsyncGenerator[str | Completion, None]:
    """The reply's text in pieces as ``endpoint.stream`` generates it (in a worker thread, so the event loop
    goes on serving), then the whole :class:`Completion`. Closing the iterator early (a client gone) stops
    the generation after its current token. A failed generation raises its :class:`ProviderError`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | Completion | ProviderError] = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: str | Completion | ProviderError) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop closed: the server is stopping
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            put(endpoint.stream(messages, params, put, cancelled))
        except Exception as exc:  # every stream ends: with its completion, or with why not
            put(generation_failed(exc))

    generation = loop.run_in_executor(None, work)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, ProviderError):
                raise item
            yield item
            if isinstance(item, Completion):
                break
    finally:
        cancelled.set()
    await generation


def generation_failed(exc: Exception) -> ProviderError:
    """The error a client hears when generation failed."""
    return ProviderError(f"Local generation failed: {type(exc).__name__}: {exc}", provider="local",
                         raw=type(exc).__name__)


class Answer:
    """One answer as OpenAI's wire objects: a ``chat.completion``, or ``chat.completion.chunk`` s."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    @staticmethod
    def usage(completion: Completion) -> dict[str, int]:
        """Tokens read and written, OpenAI's way."""
        usage = completion.usage
        return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens}

    def body(self, completion: Completion) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        choice = {"index": 0, "message": {"role": "assistant", "content": completion.text},
                  "finish_reason": completion.finish_reason, "logprobs": None}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage(completion)}

    async def events(self, pieces: AsyncGenerator[str | Completion, None], include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: the role, a chunk per piece of text as it is generated, the finish reason, the
        usage (when asked for), then ``[DONE]``. A generation that fails midway ends the stream with an
        ``error`` event, as OpenAI's does (its SDK raises it)."""
        yield self._event({"role": "assistant", "content": ""}, None, include_usage)
        completion = None
        async with contextlib.aclosing(pieces):  # closed when the client goes: the generation stops
            try:
                async for piece in pieces:
                    if isinstance(piece, Completion):
                        completion = piece
                    elif piece:
                        yield self._event({"content": piece}, None, include_usage)
            except ProviderError as exc:
                error = {"message": exc.message, "type": "server_error", "param": None, "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
        assert completion is not None  # generate_streaming ends with the completion or raises
        yield self._event({}, completion.finish_reason, include_usage)
        if include_usage:
            yield self._chunk([], self.usage(completion), include_usage)
        yield "data: [DONE]\n\n"

    def _event(self, delta: dict[str, Any], finish_reason: str | None, include_usage: bool) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return self._chunk([choice], None, include_usage)

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None, include_usage: bool) -> str:
        chunk: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                 "model": self.model, "choices": choices}
        if include_usage:
            chunk["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        return f"data: {json.dumps(chunk)}\n\n"


# what the command serves -----------------------------------------------------------------------------


def tuned_from(adapter: Endpoint, base: str) -> bool:
    """Whether the local ``adapter`` endpoint was tuned from the model ``base`` (the same model, however
    named: an alias and its file, a folder by two paths)."""
    from tuneproxy.local_backend import models

    return models.resolve(getattr(adapter, "base", adapter.model)).location == models.resolve(base).location


def served_models(base: Endpoint, adapters: Sequence[Endpoint]) -> list[ServedModel]:
    """The base model and the adapters tuned from it (local endpoints, each named as the local backend names
    its tuned models, ``local:<job-id>``), as the server lists them: the base first.

    An adapter tuned from another base is a :class:`ConfigError`: one server serves one base."""
    others = [a for a in adapters if not tuned_from(a, base.model)]
    if others:
        listed = ", ".join(f"{a.model} (tuned from {getattr(a, 'base', '?')})" for a in others)
        raise ConfigError(f"Every adapter served must be tuned from the base {base.model}; these are not: "
                          f"{listed}.")
    return [ServedModel(base.model, base), *(ServedModel(a.model, a, parent=base.model) for a in adapters)]


def serve(models: Sequence[ServedModel], *, host: str = "127.0.0.1", port: int = 8000,
          gather_s: float = GATHER_S) -> None:
    """Serve ``models`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(models, gather_s=gather_s), host=host, port=port, log_level="info")


# vLLM ------------------------------------------------------------------------------------------------


def vllm_installed() -> bool:
    """Whether the ``vllm`` package can be imported here."""
    return importlib.util.find_spec("vllm") is not None


def cuda_present() -> bool:
    """Whether torch sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_engine(asked: str, *, vllm_installed: bool, gpu: bool) -> Literal["builtin", "vllm"]:
    """The engine that serves: ``builtin`` when asked; vLLM when asked or, for ``auto``, when it is installed
    and a CUDA GPU is present (else builtin). ``vllm`` asked for where it cannot run is a ConfigError."""
    if asked not in ENGINES:
        raise ConfigError(f"Unknown engine {asked!r}; choose one of {', '.join(ENGINES)}.")
    if asked == "builtin":
        return "builtin"
    if vllm_installed and gpu:
        return "vllm"
    if asked == "auto":
        return "builtin"
    if not vllm_installed:
        raise ConfigError("--engine vllm: vLLM is not installed. Install it with `pip install vllm` (it needs a "
                          "CUDA GPU), or serve with --engine builtin.")
    raise ConfigError("--engine vllm: vLLM is installed but torch sees no CUDA GPU (torch.cuda.is_available() is "
                      "False), and vLLM serves LoRA adapters on a GPU only. Serve with --engine builtin.")


def adapter_rank(folder: Path) -> int:
    """The LoRA rank of the PEFT adapter in ``folder``: its ``r``, or a larger one its ``rank_pattern`` gives a
    layer."""
    config_path = Path(folder) / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
        return max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"Cannot read the LoRA rank from {config_path}: {type(exc).__name__}: {exc}.") from exc


def vllm_rank(rank: int) -> int:
    """The smallest value vLLM's ``--max-lora-rank`` accepts that holds ``rank``."""
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise ConfigError(f"An adapter has LoRA rank {rank}; vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}.")
    return fitting[0]


def vllm_command(base: str, location: str, adapters: Mapping[str, Path], *, host: str, port: int,
                 python: str = sys.executable) -> list[str]:
    """The command that serves the base model (named ``base``, loaded from ``location``) and ``adapters``
    (served name -> PEFT adapter folder) with vLLM's OpenAI-compatible server, as the built-in server
    would: the same names, host and port.

    Flags as vLLM's docs give them (``vllm serve --help``; docs.vllm.ai "LoRA Adapters" and "Engine
    Arguments"): ``--enable-lora``, ``--lora-modules name=path ...``, ``--max-lora-rank`` (one of
    :data:`VLLM_LORA_RANKS`, at least every adapter's rank), ``--max-loras`` (adapters in one batch: all)."""
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", location,
               "--served-model-name", base, "--host", host, "--port", str(port)]
    if adapters:
        rank = max(adapter_rank(folder) for folder in adapters.values())
        command += ["--enable-lora", "--lora-modules", *(f"{name}={folder}" for name, folder in adapters.items()),
                    "--max-lora-rank", str(vllm_rank(rank)), "--max-loras", str(len(adapters))]
    return command


def run_forwarding_signals(command: Sequence[str]) -> int:
    """Run ``command`` and wait for it, passing Ctrl-C and SIGTERM on to it once (it runs in its own session
    and process group, so the terminal's Ctrl-C reaches it only through here); its exit code, 128 + N when signal N
    ended it."""
    child = subprocess.Popen(list(command), start_new_session=True)  # process_group= needs Python 3.11
    previous = {}
    if threading.current_thread() is threading.main_thread():  # only the main thread may handle signals
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


# the command -------------------------------------------------------------------------------------------


def serve_from_ledger(job_ids: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000, base: str | None = None,
                      engine: str = "auto", console: Any = None) -> int:
    """``tuneproxy serve``: serve the adapters of these succeeded local jobs (none: every one the ledger knows,
    those tuned from ``base`` when it is given) and their base, saying on ``console`` (a rich Console) where
    and what, with the built-in server or vLLM (:func:`choose_engine`); the exit code. A job that is not a
    succeeded local one is a ConfigError; with nothing to serve, too."""
    from tuneproxy.contract import JobStatus
    from tuneproxy.errors import TuneproxyError
    from tuneproxy.jobs import Job
    from tuneproxy.ledger import Ledger
    from tuneproxy.registry import create

    installed = engine in ("auto", "vllm") and vllm_installed()
    chosen = choose_engine(engine, vllm_installed=installed, gpu=installed and cuda_present())
    explicit, ledger = bool(job_ids), Ledger()
    ids = job_ids or [r.job_id for r in ledger.jobs("local", limit=10_000)]
    jobs = []
    for job_id in ids:
        known = ledger.job(job_id)
        if known.provider != "local":
            raise ConfigError(f"Job {job_id} ran on {known.provider}; `tuneproxy serve` serves local jobs only.")
        job = Job.attach(job_id)
        try:
            record = job.refresh()
        except TuneproxyError:
            if explicit:
                raise
            continue  # its folder was deleted: nothing to serve
        if record.status is JobStatus.SUCCEEDED:
            jobs.append(job)
        elif explicit:
            raise ConfigError(f"Job {job_id} is {record.raw_status}; only a succeeded job has an adapter to serve.")
    adapters = [job.provider.endpoint(job.record.tuned_model) for job in jobs]
    if base is None and not adapters:
        raise ConfigError("Nothing to serve: no succeeded local job in the ledger. Name a base model with --base.")
    base = base or jobs[0].record.base_model
    if not explicit:
        adapters = [a for a in adapters if tuned_from(a, base)]
    provider: Any = jobs[0].provider if jobs else create("local")  # the local provider: it has a home
    models = served_models(provider.endpoint(base), adapters)
    if chosen == "vllm":
        from tuneproxy.local_backend.export import base_location

        location, _ = base_location(base, provider.home)
        adapters_at = {m.name: m.endpoint.adapter for m in models[1:]}  # type: ignore[attr-defined]  # LocalEndpoints
        command = vllm_command(base, location, adapters_at, host=host, port=port)
        console.print(f"Launching vLLM (Ctrl-C stops it): {shlex.join(command)}", highlight=False, soft_wrap=True)
        return run_forwarding_signals(command)
    url = f"http://{host}:{port}/v1"
    console.print(f"Serving {len(models)} model(s) at {url} (OpenAI's chat API; Ctrl-C stops):", highlight=False)
    for model in models:
        console.print(f"  {model.name}" + (f"  (adapter on {model.parent})" if model.parent else "  (base)"),
                      highlight=False, soft_wrap=True)
    serve(models, host=host, port=port)
    return 0
