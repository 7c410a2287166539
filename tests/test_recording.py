"""Record/replay transports: one seam (the transport) for httpx and httpx2, sync and async."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import httpx2
import pydantic
import pytest

from tuneproxy import registry
from tuneproxy.errors import KEY_VARIABLES, redact
from tuneproxy.recording import (
    Cassette,
    CassetteMismatch,
    Interaction,
    JsonBody,
    LostResponseTransport,
    RecordedRequest,
    RecordedResponse,
    RecordingTransport,
    ReplayTransport,
    transport_for,
)

FAKE_KEY = "sk-test-abcdefgh12345678"


@pytest.fixture
def key_shapes_registered() -> None:
    """Redaction knows a key's variable and shape once the registry has loaded its provider (the CLI and
    the Tuner load theirs through the registry); these tests rely on OpenAI's and Together's."""
    for name in ("openai", "together"):
        registry.provider_class(name)


def json_interaction(
    method: str, url: str, answer: object, *, sent: object = None, status: int = 200
) -> Interaction:
    return Interaction(
        request=RecordedRequest(
            method=method, url=url, body=JsonBody(json=sent) if sent is not None else None
        ),
        response=RecordedResponse(
            status=status, headers={"content-type": "application/json"}, body=JsonBody(json=answer)
        ),
    )


def cassette(*interactions: Interaction) -> Cassette:
    return Cassette(
        provider="demo",
        scenario="unit",
        source="authored from API reference",
        description="unit test",
        interactions=list(interactions),
    )


# --------------------------------------------------------------------------- replay


def test_replay_serves_interactions_in_order_to_an_httpx_client() -> None:
    replay = ReplayTransport(
        cassette(
            json_interaction("GET", "https://api.example.com/v1/a", {"n": 1}),
            json_interaction("GET", "https://api.example.com/v1/b", {"n": 2}),
        )
    )
    client = httpx.Client(transport=replay)
    answers = [
        client.get("https://api.example.com/v1/a").json(),
        client.get("https://api.example.com/v1/b").json(),
    ]
    assert answers == [{"n": 1}, {"n": 2}]
    replay.assert_all_played()


def test_replay_answers_an_async_httpx2_client_with_httpx2_responses() -> None:
    replay = ReplayTransport(
        cassette(json_interaction("POST", "https://api.example.com/v1/x", {"ok": True}, sent={"q": 1}))
    )

    async def go() -> httpx2.Response:
        async with httpx2.AsyncClient(transport=replay) as client:
            return await client.post("https://api.example.com/v1/x", json={"q": 1})

    response = asyncio.run(go())
    assert isinstance(response, httpx2.Response) and response.json() == {"ok": True}


def test_replay_matches_query_parameters_in_any_order() -> None:
    replay = ReplayTransport(cassette(json_interaction("GET", "https://api.example.com/v1/l?a=1&b=2", [])))
    assert httpx.Client(transport=replay).get("https://api.example.com/v1/l?b=2&a=1").json() == []


def test_a_request_to_another_url_fails_naming_expected_and_actual() -> None:
    replay = ReplayTransport(cassette(json_interaction("GET", "https://api.example.com/v1/a", {})))
    with pytest.raises(CassetteMismatch) as caught:
        httpx.Client(transport=replay).get("https://api.example.com/v1/zzz")
    assert "expected: GET https://api.example.com/v1/a" in str(caught.value)
    assert "actual:   GET https://api.example.com/v1/zzz" in str(caught.value)


def test_a_different_json_body_fails_the_match() -> None:
    replay = ReplayTransport(
        cassette(json_interaction("POST", "https://api.example.com/v1/a", {}, sent={"n": 1}))
    )
    with pytest.raises(CassetteMismatch, match="JSON body differs"):
        httpx.Client(transport=replay).post("https://api.example.com/v1/a", json={"n": 2})


def test_a_request_beyond_the_cassette_fails() -> None:
    replay = ReplayTransport(cassette(json_interaction("GET", "https://api.example.com/v1/a", {})))
    client = httpx.Client(transport=replay)
    client.get("https://api.example.com/v1/a")
    with pytest.raises(CassetteMismatch, match="no interaction left"):
        client.get("https://api.example.com/v1/a")


def test_assert_all_played_reports_unused_interactions() -> None:
    replay = ReplayTransport(
        cassette(
            json_interaction("GET", "https://api.example.com/v1/a", {}),
            json_interaction("GET", "https://api.example.com/v1/b", {}),
        )
    )
    httpx.Client(transport=replay).get("https://api.example.com/v1/a")
    with pytest.raises(CassetteMismatch, match="1 interaction\\(s\\) never requested.*v1/b"):
        replay.assert_all_played()


def test_assert_all_played_reports_a_mismatch_even_if_the_client_swallowed_it() -> None:
    replay = ReplayTransport(cassette(json_interaction("GET", "https://api.example.com/v1/a", {})))
    with pytest.raises(CassetteMismatch):
        httpx.Client(transport=replay).get("https://api.example.com/v1/other")
    with pytest.raises(CassetteMismatch, match="URL differs"):
        replay.assert_all_played()


def test_cassette_schema_rejects_an_unknown_source() -> None:
    with pytest.raises(pydantic.ValidationError):
        Cassette(provider="p", scenario="s", source="made up", description="d")


# --------------------------------------------------------------------------- record (real sockets)


class _Echo(BaseHTTPRequestHandler):
    """Answers every POST with JSON describing what it received, including the auth header."""

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        length = int(self.headers.get("content-length", 0))
        sent = json.loads(self.rfile.read(length) or b"null")
        body = json.dumps({"received": sent, "auth_seen": self.headers.get("authorization")}).encode()
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.send_header("x-request-id", "req_echo")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_recording_over_a_real_socket_with_httpx_then_replaying_without_the_server(
    server: str, tmp_path: Path
) -> None:
    path = tmp_path / "demo" / "echo.json"
    recorder = RecordingTransport(
        path, provider="demo", scenario="echo", description="echo server", inner=httpx.HTTPTransport()
    )
    with httpx.Client(transport=recorder) as client:
        live = client.post(
            f"{server}/v1/echo?x=1", json={"hello": "world"}, headers={"Authorization": f"Bearer {FAKE_KEY}"}
        )
    assert live.status_code == 201 and live.json()["received"] == {"hello": "world"}

    replay = ReplayTransport(path)
    again = httpx.Client(transport=replay).post(f"{server}/v1/echo?x=1", json={"hello": "world"})
    assert (again.status_code, again.json()) == (
        201,
        {"received": {"hello": "world"}, "auth_seen": "Bearer REDACTED"},
    )
    replay.assert_all_played()


def test_recording_over_a_real_socket_with_an_async_httpx2_client(server: str, tmp_path: Path) -> None:
    path = tmp_path / "demo" / "echo2.json"
    recorder = RecordingTransport(
        path,
        provider="demo",
        scenario="echo2",
        description="echo server",
        async_inner=httpx2.AsyncHTTPTransport(),
    )

    async def go() -> httpx2.Response:
        async with httpx2.AsyncClient(transport=recorder) as client:
            return await client.post(f"{server}/v1/echo", json={"n": 2})

    assert asyncio.run(go()).json()["received"] == {"n": 2}
    replay = ReplayTransport(path)
    assert httpx2.Client(transport=replay).post(f"{server}/v1/echo", json={"n": 2}).status_code == 201


@pytest.mark.usefixtures("key_shapes_registered")
def test_recorded_cassettes_hold_no_secret(server: str, tmp_path: Path) -> None:
    path = tmp_path / "demo" / "secret.json"
    recorder = RecordingTransport(
        path, provider="demo", scenario="secret", description="d", inner=httpx.HTTPTransport()
    )
    with httpx.Client(transport=recorder) as client:
        client.post(
            f"{server}/v1/echo?api_key={FAKE_KEY}",
            json={"key": FAKE_KEY, "other": "tgp_abcdefgh1234"},
            headers={"Authorization": f"Bearer {FAKE_KEY}"},
        )
    text = path.read_text()
    assert FAKE_KEY not in text and "tgp_abcdefgh1234" not in text
    saved = Cassette.load(path)
    assert saved.source == "recorded"
    assert saved.interactions[0].request.headers["authorization"] == "Bearer REDACTED"


def test_multipart_uploads_are_recorded_as_fields_and_a_file_summary(server: str, tmp_path: Path) -> None:
    path = tmp_path / "demo" / "multipart.json"
    recorder = RecordingTransport(
        path,
        provider="demo",
        scenario="multipart",
        description="d",
        inner=httpx.MockTransport(lambda r: httpx.Response(200, json={})),
    )
    httpx.Client(transport=recorder).post(
        f"{server}/v1/files", data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", b'{"a": 1}\n')}
    )
    body = Cassette.load(path).interactions[0].request.body
    assert body is not None and body.multipart.fields == {"purpose": "fine-tune"}  # type: ignore[union-attr]
    (summary,) = body.multipart.files  # type: ignore[union-attr]
    assert (summary.filename, summary.bytes) == ("train.jsonl", 9)


# --------------------------------------------------------------------------- faults and helpers


def test_lost_response_forwards_the_request_then_raises_a_read_timeout() -> None:
    replay = ReplayTransport(
        cassette(json_interaction("POST", "https://api.example.com/v1/jobs", {"id": "j1"}))
    )
    lossy = LostResponseTransport(replay, method="POST", path="/v1/jobs")
    with pytest.raises(httpx.ReadTimeout):
        httpx.Client(transport=lossy).post("https://api.example.com/v1/jobs")
    replay.assert_all_played()  # the service did receive it


def test_transport_for_replays_by_default_and_records_when_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNEPROXY_CASSETTES", str(tmp_path))
    cassette(json_interaction("GET", "https://api.example.com/v1/a", {})).save(tmp_path / "demo" / "s.json")
    monkeypatch.delenv("TUNEPROXY_RECORD", raising=False)
    assert isinstance(transport_for("demo", "s"), ReplayTransport)
    monkeypatch.setenv("TUNEPROXY_RECORD", "1")
    recorder = transport_for("demo", "s")
    assert isinstance(recorder, RecordingTransport) and recorder.path == tmp_path / "demo" / "s.json"


@pytest.mark.usefixtures("key_shapes_registered")
def test_redact_hides_together_and_openai_shaped_keys() -> None:
    assert redact("key tgp_v2_abcdefgh12 and sk-proj-abcdefgh12") == "key REDACTED and REDACTED"


@pytest.mark.usefixtures("key_shapes_registered")
def test_presigned_url_signatures_and_the_environments_keys_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "0123456789abcdef" * 4)
    url = ("https://bucket.s3.amazonaws.com/f?X-Amz-Credential=AKIAXX%2F2026&X-Amz-Signature=abc123"
           "&X-Amz-Security-Token=zzz&part=1")
    assert redact(url) == ("https://bucket.s3.amazonaws.com/f?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
                           "&X-Amz-Security-Token=REDACTED&part=1")
    assert "0123456789abcdef" not in redact("invalid key " + "0123456789abcdef" * 4)


def test_loading_a_provider_makes_redaction_hide_the_value_of_its_key_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "plain0123456789secret"  # no known shape: only the variable's value gives it away
    for name in registry.names():
        credentials = registry.provider_class(name).CAPABILITIES.credentials
        if credentials is not None:
            monkeypatch.setenv(credentials.env_var, secret)
            assert credentials.env_var in KEY_VARIABLES
            assert redact(f"echo {secret}!") == "echo REDACTED!", name
            monkeypatch.delenv(credentials.env_var)
