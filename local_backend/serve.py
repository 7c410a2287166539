"""An OpenAI-compatible HTTP server for local models: a base model and the LoRA adapters tuned from it.

Starlette answers ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain or streamed as server-sent
events); uvicorn runs it. Generation is the local backend's own: each served model is a
:class:`~tuneproxy.local_backend.generate.LocalEndpoint`, and a :class:`RequestBatcher` per model gathers
the requests that arrive within a few milliseconds of each other (and those that arrive while the model is
busy) and sends them to the endpoint's batch path together.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneproxy.contract import Completion, Endpoint, GenerationParams, Message, Outcome
from tuneproxy.errors import ProviderError

GATHER_S = 0.005  # how long the first request of a batch waits for others to join it
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class ServedModel:
    """A model the server answers for: its name in requests, what generates it, and the base it was tuned
    from (None for a base model)."""

    name: str
    endpoint: Endpoint
    parent: str | None = None


class RequestBatcher:
    """Gathers concurrent requests for one endpoint and generates them together.

    The first request waits ``gather_s`` for others; then everything pending is taken, grouped by its
    generation settings (one batch generates with one set), and each group goes to the endpoint's
    ``acomplete_many`` in one call. Requests that arrive while a batch generates form the next one.
    ``batch_sizes`` records the size of every call, so a caller can see that batching happened.
    """

    def __init__(self, endpoint: Endpoint, gather_s: float = GATHER_S) -> None:
        self.endpoint = endpoint
        self.gather_s = gather_s
        self.batch_sizes: list[int] = []
        self._pending: list[tuple[Sequence[Message], GenerationParams, asyncio.Future[Outcome]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def complete(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        """The reply to ``messages``, generated in a batch with whatever else is pending; a failed
        generation raises its :class:`ProviderError`."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((messages, params, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        outcome = await future
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self.gather_s)
            taken, self._pending = self._pending, []
            groups: dict[GenerationParams, list[tuple[Sequence[Message], asyncio.Future[Outcome]]]] = {}
            for messages, params, future in taken:
                groups.setdefault(params, []).append((messages, future))
            for params, items in groups.items():
                await self._generate(params, items)

    async def _generate(self, params: GenerationParams,
                        items: list[tuple[Sequence[Message], asyncio.Future[Outcome]]]) -> None:
        self.batch_sizes.append(len(items))
        try:
            outcomes = await self.endpoint.acomplete_many([messages for messages, _ in items], params)
        except Exception as exc:  # the model could not be loaded: every waiting request hears why
            outcomes = [ProviderError(f"Local generation failed: {type(exc).__name__}: {exc}", provider="local",
                                      raw=type(exc).__name__)] * len(items)
        for (_, future), outcome in zip(items, outcomes, strict=True):
            if not future.done():  # a client that went away cancelled its future
                future.set_result(outcome)


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


def create_app(models: Sequence[ServedModel], *, gather_s: float = GATHER_S) -> Any:
    """The Starlette app serving ``models``. ``app.state.batchers`` maps each model name to its
    :class:`RequestBatcher`; ``app.state.models`` lists the :class:`ServedModel` s."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    batchers = {m.name: RequestBatcher(m.endpoint, gather_s) for m in models}
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
        try:
            completion = await batchers[chat.model].complete([m.as_message() for m in chat.messages],
                                                             chat.params())
        except ProviderError as exc:
            return error_response(500, str(exc), error_type="server_error")
        answer = Answer(chat.model, completion)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(answer.events(include_usage), media_type="text/event-stream")
        return JSONResponse(answer.body())

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


class Answer:
    """One completion as OpenAI's wire objects: a ``chat.completion``, or its ``chat.completion.chunk`` s."""

    def __init__(self, model: str, completion: Completion) -> None:
        self.model = model
        self.completion = completion
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def usage(self) -> dict[str, int]:
        """Tokens read and written, OpenAI's way."""
        usage = self.completion.usage
        return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens}

    def body(self) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        choice = {"index": 0, "message": {"role": "assistant", "content": self.completion.text},
                  "finish_reason": self.completion.finish_reason, "logprobs": None}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage()}

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: the role, the text, the finish reason, the usage (when asked for), then
        ``[DONE]``. The text is one chunk: the reply is generated in a batch, not token by token."""
        deltas = [({"role": "assistant", "content": ""}, None), ({"content": self.completion.text}, None),
                  ({}, self.completion.finish_reason)]
        for delta, finish in deltas:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            yield self._event([choice], None, include_usage)
        if include_usage:
            yield self._event([], self.usage(), include_usage)
        yield "data: [DONE]\n\n"

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, int] | None, include_usage: bool) -> str:
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
    from tuneproxy.errors import ConfigError

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


def serve_from_ledger(job_ids: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000, base: str | None = None,
                      console: Any = None) -> None:
    """``tuneproxy serve``: serve the adapters of these succeeded local jobs (none: every one the ledger knows,
    those tuned from ``base`` when it is given) and their base, saying on ``console`` (a rich Console) where
    and what. A job that is not a succeeded local one is a ConfigError; with nothing to serve, too."""
    from tuneproxy.contract import JobStatus
    from tuneproxy.errors import ConfigError, TuneproxyError
    from tuneproxy.jobs import Job
    from tuneproxy.ledger import Ledger
    from tuneproxy.registry import create

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
    provider = jobs[0].provider if jobs else create("local")
    models = served_models(provider.endpoint(base), adapters)
    url = f"http://{host}:{port}/v1"
    console.print(f"Serving {len(models)} model(s) at {url} (OpenAI's chat API; Ctrl-C stops):", highlight=False)
    for model in models:
        console.print(f"  {model.name}" + (f"  (adapter on {model.parent})" if model.parent else "  (base)"),
                      highlight=False, soft_wrap=True)
    serve(models, host=host, port=port)

