"""A loopback OpenAI-compatible chat server on 127.0.0.1, for the runner's tests and its benchmark.

``POST /v1/chat/completions`` answers every prompt (the last message's content) deterministically, after
a fixed latency. What it does to a prompt's requests can be scripted, one action per request in turn:
``"ok"``, ``"429"`` (with ``Retry-After``), ``"500"``, ``"garbled"`` (a 200 whose body is not JSON) or
``"drop"`` (the connection closed with no answer); once a prompt's script is used up it is answered.
``die_after=N``: after N answers every further request is dropped (a server that died). The server
counts requests and answers per prompt and the most requests it held at once; ``GET /stats`` returns the
counts as JSON, for a server run in another process::

    python tests/fake_chat_server.py --latency 0.05 [--first-429-share 0.1]   # prints its port

A small HTTP/1.1 server on asyncio streams (keep-alive, Content-Length bodies only: what the openai SDK
sends), running its own event loop in a thread, so a test's client and the server do not share a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

ACTIONS = frozenset({"ok", "429", "500", "garbled", "drop"})
REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


def answer_for(prompt: str) -> str:
    """The server's answer to ``prompt``: the same every time."""
    return f"answer to: {prompt}"


def first_429_prompts(prompts: Iterable[str], share: float) -> list[str]:
    """About ``share`` of ``prompts``, chosen by a hash of each: the ones whose first request gets a 429."""
    cut = int(share * 2**32)
    return [p for p in prompts if int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "big") < cut]


class FakeChatServer:
    """The server (see the module docstring). Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, *, latency: float = 0.0, script: dict[str, list[str]] | None = None,
                 retry_after: float = 0.01, die_after: int | None = None, first_429_share: float = 0.0,
                 echo_authorization: Iterable[str] = (), port: int = 0) -> None:
        self.latency = latency
        self.script = {prompt: list(actions) for prompt, actions in (script or {}).items()}
        unknown = {a for actions in self.script.values() for a in actions} - ACTIONS
        if unknown:
            raise ValueError(f"unknown actions {sorted(unknown)}; use {sorted(ACTIONS)}")
        self.retry_after = retry_after
        self.die_after = die_after
        self.first_429_share = first_429_share
        self.echo_authorization = frozenset(echo_authorization)  # prompts whose answer leaks the key sent
        self.requests: Counter[str] = Counter()  # per prompt, every request
        self.answered: Counter[str] = Counter()  # per prompt, the successful answers
        self.bodies: list[dict[str, Any]] = []  # every request body, in order of arrival
        self.connections = 0  # connections opened: few, when clients keep them alive
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- life ---------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeChatServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fake-chat-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port, backlog=1024))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        try:
            self._loop.run_forever()
            self._server.close()
            # connections kept alive are still waiting for a next request: end them before the loop goes
            open_connections = asyncio.all_tasks(self._loop)
            for task in open_connections:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*open_connections, return_exceptions=True))
        finally:
            self._loop.close()

    def stats(self) -> dict[str, Any]:
        """The counts so far: requests and answers per prompt, the most requests held at once."""
        with self._lock:
            return {"requests": dict(self.requests), "answered": dict(self.answered),
                    "max_in_flight": self.max_in_flight, "connections": self.connections}

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in header_lines if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                reply = await self._handle(method, path, headers, body)
                if reply is None:  # "drop": no answer at all
                    return
                status, extra, payload = reply
                lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Content-Type: application/json",
                         f"Content-Length: {len(payload)}", *extra, "", ""]
                writer.write("\r\n".join(lines).encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            writer.close()

    async def _handle(self, method: str, path: str, headers: dict[str, str],
                      body: bytes) -> tuple[int, list[str], bytes] | None:
        if method == "GET" and path == "/stats":
            return 200, [], json.dumps(self.stats()).encode()
        if method != "POST" or not path.endswith("/chat/completions"):
            return 404, [], b'{"error": {"message": "no such route"}}'
        request = json.loads(body)
        messages = request.get("messages") or [{}]
        prompt = str(messages[-1].get("content", ""))
        with self._lock:
            self.bodies.append(request)
            self.requests[prompt] += 1
            action = self._next_action(prompt)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            return self._reply(action, prompt, request, headers)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _next_action(self, prompt: str) -> str:
        if self.die_after is not None and sum(self.answered.values()) >= self.die_after:
            return "drop"
        if prompt not in self.script and self.first_429_share and first_429_prompts([prompt], self.first_429_share):
            self.script[prompt] = ["429"]
        actions = self.script.get(prompt)
        action = actions.pop(0) if actions else "ok"
        if action == "ok":
            self.answered[prompt] += 1
        return action

    def _reply(self, action: str, prompt: str, request: dict[str, Any],
               headers: dict[str, str]) -> tuple[int, list[str], bytes] | None:
        if action == "drop":
            return None
        if action == "429":
            return 429, [f"Retry-After: {self.retry_after:g}"], json.dumps(
                {"error": {"message": "Rate limit reached, slow down", "type": "rate_limit_exceeded"}}).encode()
        if action == "500":
            return 500, [], b'{"error": {"message": "The server had an error", "type": "server_error"}}'
        if action == "garbled":
            return 200, [], b'{"id": "chatcmpl-1", "choices": [{"mess'
        text = answer_for(prompt)
        if prompt in self.echo_authorization:
            text += f" (you sent {headers.get('authorization', '')})"
        return 200, [], json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_790_000_000,
            "model": request.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": len(prompt) // 4 + 1, "completion_tokens": len(text) // 4 + 1,
                      "total_tokens": len(prompt) // 4 + len(text) // 4 + 2},
        }).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake chat server until killed; prints its port.")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=0.01)
    parser.add_argument("--first-429-share", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeChatServer(latency=args.latency, retry_after=args.retry_after,
                            first_429_share=args.first_429_share).start()
    print(server.port, flush=True)
    assert server._thread is not None
    server._thread.join()


if __name__ == "__main__":
    main()
