"""`tuneproxy serve`'s server: OpenAI's chat API over a tiny base model and an adapter trained for 2 steps,
spoken to by the OpenAI SDK through a real uvicorn server on a free local port."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import pytest

from tests.cli_helpers import run_cli
from tests.local_helpers import (
    build_model_folder,
    ticket_records,
    ticket_words,
    trained_tiny_adapter,
)

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from tuneproxy.errors import ConfigError  # noqa: E402
from tuneproxy.ledger import Ledger  # noqa: E402
from tuneproxy.local_backend import serve as serve_module  # noqa: E402
from tuneproxy.local_backend.provider import LocalProvider  # noqa: E402
from tuneproxy.local_backend.serve import create_app, served_models  # noqa: E402

PROMPT = ticket_records(1, seed=9)[0]["messages"][:2]
GREEDY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base model and a provider holding one succeeded job whose adapter trained for 2 steps."""
    provider, model_dir, record = trained_tiny_adapter(tmp_path_factory.mktemp("serve"), "serve-1")
    return provider, str(model_dir), record.tuned_model


def adapter_folder(trained):
    """The trained job's adapter folder: served as a second adapter, named by its path."""
    provider, _, tuned = trained
    return provider.refresh(tuned.removeprefix("local:")).detail["adapter"]


@pytest.fixture(scope="module")
def server(trained):
    """The app and the base URL of a uvicorn server running it in a background thread."""
    provider, base, tuned = trained
    adapters = [provider.endpoint(tuned), provider.endpoint(adapter_folder(trained))]
    app = create_app(served_models(provider.endpoint(base), adapters), gather_s=0.05)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from the start: no race with another process
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    uv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1], api_key="x", max_retries=0)


def in_process(trained, model):
    """The reply the local backend's own endpoint gives to PROMPT (a fresh provider: its own model load)."""
    provider, base, tuned = trained
    return LocalProvider({"home": provider.home}).endpoint(model).complete(PROMPT, **GREEDY)


def test_models_lists_the_base_and_each_adapter_by_its_local_name(client, trained):
    _, base, tuned = trained
    folder = adapter_folder(trained)
    models = {m.id: m for m in client.models.list().data}
    assert list(models) == [base, tuned, folder] and tuned.startswith("local:")
    assert models[base].model_extra["parent"] is None
    assert models[tuned].model_extra["parent"] == models[folder].model_extra["parent"] == base


def test_several_adapters_over_one_base_each_answer_under_their_own_name(client, trained):
    folder = adapter_folder(trained)  # the same weights as the job's: the same greedy answer
    replies = [client.chat.completions.create(model=name, messages=PROMPT, **GREEDY) for name in (trained[2], folder)]
    assert [r.model for r in replies] == [trained[2], folder]
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content


@pytest.mark.parametrize("which", ["adapter", "base"])
def test_a_greedy_completion_equals_the_local_endpoint_in_process_and_carries_usage(client, trained, which):
    model = trained[2] if which == "adapter" else trained[1]
    reply = client.chat.completions.create(model=model, messages=PROMPT, **GREEDY)
    expected = in_process(trained, model)
    assert reply.model == model and reply.object == "chat.completion"
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.completion_tokens == expected.usage.completion_tokens > 0
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_concurrent_requests_are_all_answered_and_generated_together(client, server, trained):
    tuned = trained[2]
    batcher = server[0].state.batchers[tuned]
    calls_before = len(batcher.batch_sizes)
    prompts = [r["messages"][:2] for r in ticket_records(8, seed=3)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda p: client.chat.completions.create(model=tuned, messages=p, **GREEDY),
                                prompts))
    assert len(replies) == 8 and all(r.usage.completion_tokens > 0 for r in replies)
    sizes = batcher.batch_sizes[calls_before:]
    assert sum(sizes) == 8 and max(sizes) > 1  # the batch path took more than one request at once


def test_a_stream_joins_to_the_plain_answer_and_ends_with_usage(client, trained):
    tuned = trained[2]
    plain = client.chat.completions.create(model=tuned, messages=PROMPT, **GREEDY)
    chunks = list(client.chat.completions.create(model=tuned, messages=PROMPT, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_a_raw_stream_is_server_sent_events_ending_in_done(server, trained):
    body = {"model": trained[2], "messages": PROMPT, "stream": True, **GREEDY}
    response = httpx.post(f"{server[1]}/chat/completions", json=body, timeout=60)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])  # not asked for: not sent


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": "MODEL"}).encode(), 400, "messages"),
    (json.dumps({"model": "MODEL", "messages": PROMPT, "max_tokens": "ten"}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "MODEL", "messages": [{"role": "user", "content": 3}]}).encode(), 400, "messages.0.content"),
    (json.dumps({"model": "MODEL", "messages": PROMPT, "temperature": 5}).encode(), 400, "temperature"),
    (json.dumps({"model": "no-such-model", "messages": PROMPT}).encode(), 404, "model"),
])
def test_a_malformed_request_gets_an_openai_error_and_the_server_keeps_answering(server, client, trained, body,
                                                                                 status, param):
    body = body.replace(b"MODEL", trained[2].encode())
    response = httpx.post(f"{server[1]}/chat/completions", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert client.chat.completions.create(model=trained[2], messages=PROMPT, **GREEDY).usage.completion_tokens > 0


def test_the_sdk_raises_its_own_error_for_an_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=PROMPT)
    assert caught.value.code == "model_not_found"


def test_an_unknown_path_answers_in_the_same_error_shape(server):
    response = httpx.get(f"{server[1]}/nowhere", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"


def test_an_adapter_tuned_from_another_base_is_refused(trained, tmp_path):
    provider, _, tuned = trained
    other = build_model_folder(tmp_path / "other", ticket_words(), seed=1)
    with pytest.raises(ConfigError, match="tuned from"):
        served_models(provider.endpoint(str(other)), [provider.endpoint(tuned)])


# the command ---------------------------------------------------------------------------------------------


@pytest.fixture
def ledger_home(trained, monkeypatch):
    """TUNEPROXY_HOME whose ledger knows the trained job (its job area is this home's local/)."""
    provider, _, tuned = trained
    monkeypatch.setenv("TUNEPROXY_HOME", str(provider.home.parent))
    Ledger().save_job(provider.refresh(tuned.removeprefix("local:")))
    return provider.home.parent


@pytest.fixture
def launched(monkeypatch):
    """What `tuneproxy serve` would serve, instead of serving it."""
    calls = []
    monkeypatch.setattr(serve_module, "serve", lambda models, **where: calls.append((models, where)))
    return calls


def test_serve_command_serves_the_ledgers_succeeded_jobs_and_their_base_and_says_where(
        ledger_home, launched, trained, capsys):
    _, base, tuned = trained
    code, out, err = run_cli(capsys, "serve", "--port", "8123")
    assert code == 0, err
    (models, where), = launched
    assert [(m.name, m.parent) for m in models] == [(base, None), (tuned, base)]
    assert where == {"host": "127.0.0.1", "port": 8123}
    assert "http://127.0.0.1:8123/v1" in out and tuned in out and base in out


def test_serve_command_refuses_a_job_the_ledger_does_not_know(ledger_home, launched, capsys):
    code, _, err = run_cli(capsys, "serve", "no-such-job")
    assert code == 2 and "no-such-job" in err and not launched


def test_serve_command_with_nothing_to_serve_says_so(launched, capsys):
    code, _, err = run_cli(capsys, "serve")
    assert code == 2 and "Nothing to serve" in err and not launched
