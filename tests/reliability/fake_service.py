"""A fine-tuning service on 127.0.0.1 that outlives its clients: OpenAI's or Together's HTTP API, answering
with the bodies of the recorded happy-path cassette (the shapes the real service sends), but keeping real
state — files, jobs created, jobs progressing poll by poll — so that a client killed at any moment can be
rerun against the same service and must find the job it already paid for.

``kill_at`` makes the service itself ``kill -9`` its client at a chosen request: before answering (the
request reached the service, the answer never left) or just after (the client dies while handling it).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tuneproxy.recording import Cassette, JsonBody, cassette_path

Answer = tuple[int, dict[str, str], Any]  # status, headers, body: JSON, or text as is (None: no body)


@dataclass
class Kill:
    """Kill the client (pid) at request number ``at`` (counted from 0), ``before`` or ``after`` answering."""

    pid: int
    at: int
    before: bool
    delay_s: float = 0.0


@dataclass
class FakeJob:
    id: str
    created: dict[str, Any]  # the create answer, already rewritten for this job
    intent: str
    polls: int = 0
    cancelled: bool = False
    events: list[str] = field(default_factory=list)


def _kill(pid: int) -> None:
    """``kill -9`` the client; one that has already finished (a kill after its last answer) is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class QuietServer(ThreadingHTTPServer):
    """A killed client's connection reset is expected here: not worth a traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeService:
    """The shared machinery: the HTTP server, the request log, the kill switch and the job table."""

    provider = ""
    template_job_id = ""
    api_prefix = ""

    def __init__(self) -> None:
        interactions = Cassette.load(cassette_path(self.provider, "fit_happy_path")).interactions
        self.recorded = [(i.request.method, urlsplit(i.request.url).path, i.response) for i in interactions]
        self.jobs: dict[str, FakeJob] = {}
        self.log: list[tuple[str, str]] = []
        self.kill: Kill | None = None
        # a hostile service: given (method, path, the Authorization header), an answer to send instead
        self.override: Callable[[str, str, str], Answer | None] | None = None
        self.failure: str | None = None  # the failure message the job ends with instead of succeeding
        # chat completions: given the model and the messages, the reply (an answer to evaluate)
        self.chat: Callable[[str, list[dict[str, Any]]], str] | None = None
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.server = QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- life -------------------------------------------------------------------------------------------
    def __enter__(self) -> FakeService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """What the provider's ``base_url`` option is set to (each SDK adds its own part of the path)."""
        return self.root + self.api_prefix

    def creates(self) -> int:
        """How many job-creating requests reached the service (answered or not)."""
        return len(self.jobs)

    # -- recorded bodies --------------------------------------------------------------------------------
    def body(self, method: str, path_pattern: str, nth: int = 0) -> Any:
        """The ``nth`` recorded answer body to a request matching ``path_pattern`` (a regex)."""
        matches = [r for m, p, r in self.recorded if m == method and re.fullmatch(path_pattern, p)]
        response = matches[min(nth, len(matches) - 1)]
        return copy.deepcopy(response.body.json_) if isinstance(response.body, JsonBody) else None

    def recorded_answer(self, method: str, path_pattern: str) -> Any:
        return next(r for m, p, r in self.recorded if m == method and re.fullmatch(path_pattern, p))

    def rewrite(self, value: Any, job: FakeJob) -> Any:
        """A recorded job body made this job's: its id and its intent tag in place of the recorded ones."""
        text = json.dumps(value).replace(self.template_job_id, job.id)
        for old, new in self.identity_swaps(job):
            text = text.replace(old, new)
        return json.loads(text)

    def identity_swaps(self, job: FakeJob) -> list[tuple[str, str]]:
        raise NotImplementedError

    # -- HTTP -------------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                payload = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                with service.lock:
                    number = len(service.log)
                    service.log.append((self.command, url.path))
                    answer = (service.override and service.override(
                        self.command, url.path, self.headers.get("authorization", ""))) or service.route(
                        self.command, url.path, parse_qs(url.query), payload)
                    kill = service.kill if service.kill and service.kill.at == number else None
                if kill and kill.before:
                    _kill(kill.pid)
                    self.close_connection = True
                    return
                status, headers, body = answer
                data = body.encode() if isinstance(body, str) else b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if kill:
                    threading.Timer(kill.delay_s, _kill, (kill.pid,)).start()

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler

    def route(self, method: str, path: str, query: dict[str, list[str]], payload: bytes) -> Answer:
        raise NotImplementedError

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids):08d}-fake"


class FakeOpenAI(FakeService):
    """``/v1/files``, ``/v1/fine_tuning/jobs`` (create, list by metadata, retrieve, events, cancel)."""

    provider = "openai"
    api_prefix = "/v1"
    template_job_id = "ftjob-Fq3ZtR8wLm2VnB6xKc9HdY1s"
    template_intent = "71c1ad204d7e3c06be0ef1ec349468a0"

    def identity_swaps(self, job: FakeJob) -> list[tuple[str, str]]:
        return [(self.template_intent, job.intent)]

    def route(self, method: str, path: str, query: dict[str, list[str]], payload: bytes) -> Answer:
        jobs = "/v1/fine_tuning/jobs"
        if (method, path) == ("POST", "/v1/chat/completions") and self.chat is not None:
            request = json.loads(payload)
            body = self.body("POST", "/v1/chat/completions")
            body["model"] = request["model"]
            body["choices"][0]["message"]["content"] = self.chat(request["model"], request["messages"])
            return 200, {}, body
        if (method, path) == ("POST", "/v1/files"):
            body = self.body("POST", "/v1/files")
            body.update(id=self.next_id("file-"), bytes=len(payload))
            return 200, {}, body
        if (method, path) == ("POST", jobs):
            request = json.loads(payload)
            job = FakeJob(id=self.next_id("ftjob-"), created={}, intent=request["metadata"]["tuneproxy_intent"])
            job.created = self.rewrite(self.body("POST", jobs), job)
            self.jobs[job.id] = job
            return 200, {}, job.created
        if (method, path) == ("GET", jobs):
            wanted = query.get("metadata[tuneproxy_intent]", [None])[0]
            found = [self._state(j) for j in self.jobs.values() if wanted in (None, j.intent)]
            return 200, {}, {"object": "list", "data": found, "has_more": False}
        match = re.fullmatch(rf"{jobs}/([^/]+)(/events|/cancel)?", path)
        if not match or match.group(1) not in self.jobs:
            return 404, {}, {"error": {"message": f"No such job: {path}", "type": "invalid_request_error"}}
        job, tail = self.jobs[match.group(1)], match.group(2)
        if tail == "/cancel":
            job.cancelled = True
            return 200, {}, self._state(job)
        if tail == "/events":
            return 200, {}, self.rewrite(self.body("GET", rf"{jobs}/[^/]+/events", max(job.polls - 1, 0)), job)
        job.polls += 1
        return 200, {}, self._state(job)

    def _state(self, job: FakeJob) -> Any:
        if job.polls == 0:
            return job.created
        state = self.rewrite(self.body("GET", r"/v1/fine_tuning/jobs/[^/]+", job.polls - 1), job)
        if job.cancelled and state["status"] != "succeeded":
            state["status"] = "cancelled"
        if self.failure and state["status"] == "succeeded":
            state.update(status="failed", fine_tuned_model=None, trained_tokens=None,
                         error={"code": "invalid_training_file", "message": self.failure, "param": "training_file"})
        return state


class FakeTogether(FakeService):
    """``/v1/files`` (302 to a presigned PUT on this same server, then preprocess), ``/v1/fine-tunes`` (estimate,
    limits, create, list, retrieve, events, metrics, cancel)."""

    provider = "together"
    template_job_id = "ft-5b2e8d1c-4a7f-4e3b-9c6d-2f1a0e9b8c7d"
    template_suffix = "support-bot-tpa3b19842d0"

    def identity_swaps(self, job: FakeJob) -> list[tuple[str, str]]:
        return [(self.template_suffix, job.intent)]

    def route(self, method: str, path: str, query: dict[str, list[str]], payload: bytes) -> Answer:
        tunes = "/v1/fine-tunes"
        if (method, path) == ("POST", "/v1/files"):
            file_id = self.next_id("file-")
            headers = dict(self.recorded_answer("POST", "/v1/files").headers)
            headers.update({"location": f"{self.root}/upload/{file_id}", "x-together-file-id": file_id})
            return 302, headers, None
        if method == "PUT" and path.startswith("/upload/"):
            return 200, {"etag": '"fake"'}, None
        match = re.fullmatch(r"/v1/files/([^/]+)/preprocess", path)
        if method == "POST" and match:
            body = self.body("POST", r"/v1/files/[^/]+/preprocess")
            body["id"] = match.group(1)
            return 200, {}, body
        if (method, path) == ("POST", f"{tunes}/estimate-price"):
            return 200, {}, self.body("POST", f"{tunes}/estimate-price")
        if (method, path) == ("GET", f"{tunes}/models/limits"):
            return 200, {}, self.body("GET", f"{tunes}/models/limits")
        if (method, path) == ("POST", tunes):
            request = json.loads(payload)
            job = FakeJob(id=self.next_id("ft-"), created={}, intent=request["suffix"])
            job.created = self.rewrite(self.body("POST", tunes), job)
            self.jobs[job.id] = job
            return 200, {}, job.created
        if (method, path) == ("GET", tunes):
            return 200, {}, {"data": [self._state(j) for j in self.jobs.values()]}
        match = re.fullmatch(rf"{tunes}/([^/]+)(/events|/metrics|/cancel)?", path)
        if not match or match.group(1) not in self.jobs:
            return 404, {}, {"error": {"message": f"No such job: {path}"}}
        job, tail = self.jobs[match.group(1)], match.group(2)
        if tail == "/cancel":
            job.cancelled = True
            return 200, {}, self._state(job)
        if tail in ("/events", "/metrics"):
            return 200, {}, self.rewrite(self.body("GET", rf"{tunes}/[^/]+{tail}", max(job.polls - 1, 0)), job)
        job.polls += 1
        return 200, {}, self._state(job)

    def _state(self, job: FakeJob) -> Any:
        if job.polls == 0:
            return job.created
        state = self.rewrite(self.body("GET", r"/v1/fine-tunes/[^/]+", job.polls - 1), job)
        if job.cancelled and state["status"] != "completed":
            state["status"] = "cancelled"
        if self.failure and state["status"] == "completed":
            state["status"] = "error"
            state["events"] = [*state["events"], {"object": "fine-tune-event", "created_at": state["updated_at"],
                                                  "message": self.failure, "type": "job_error", "level": "error"}]
        return state


SERVICES: dict[str, type[FakeService]] = {"openai": FakeOpenAI, "together": FakeTogether}
