"""`tuneproxy serve`'s server: OpenAI's chat API over a tiny base model and an adapter trained for 2 steps,
spoken to by the OpenAI SDK through a real uvicorn server on a free local port."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

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

from tuneproxy.contract import Completion, GenerationParams, Usage  # noqa: E402
from tuneproxy.errors import ConfigError  # noqa: E402
from tuneproxy.ledger import Ledger  # noqa: E402
from tuneproxy.local_backend import serve as serve_module  # noqa: E402
from tuneproxy.local_backend.generate import TextRelease  # noqa: E402
from tuneproxy.local_backend.provider import LocalProvider  # noqa: E402
from tuneproxy.local_backend.serve import (  # noqa: E402
    RequestBatcher,
    choose_engine,
    create_app,
    served_models,
    vllm_command,
)

FIND_VLLM = serve_module.vllm_installed
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
    ask = client.chat.completions.with_raw_response.create
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        raw = list(pool.map(lambda p: ask(model=tuned, messages=p, **GREEDY), prompts))
    replies = [r.parse() for r in raw]
    assert len(replies) == 8 and all(r.usage.completion_tokens > 0 for r in replies)
    sizes = batcher.batch_sizes[calls_before:]
    assert sum(sizes) == 8 and max(sizes) > 1  # the batch path took more than one request at once
    told = sorted(int(r.headers[serve_module.BATCH_HEADER]) for r in raw)  # each answer names its batch's size
    assert told == sorted(size for size in sizes for _ in range(size))


def stream(client, **request):
    """The chunks of a streamed answer, read with the OpenAI SDK."""
    return list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request))


def streamed_text(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_stream_comes_token_by_token_joins_to_the_plain_answer_and_ends_with_usage(client, trained):
    request = {"model": trained[2], "messages": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = client.chat.completions.create(**request)
    chunks = stream(client, **request)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1 and plain.usage.completion_tokens > 1  # sent as generated, not once at the end
    assert streamed_text(chunks) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_a_streamed_stop_string_cuts_the_text_where_the_plain_answer_cuts_it(client, trained):
    request = {"model": trained[2], "messages": PROMPT, "max_tokens": 12, "temperature": 0}
    words = client.chat.completions.create(**request).choices[0].message.content.split()
    assert len(words) > 3, words
    stop = " ".join(words[2:4])  # two words: a stop string longer than one token
    plain = client.chat.completions.create(stop=stop, **request)
    chunks = stream(client, stop=stop, **request)
    assert streamed_text(chunks) == plain.choices[0].message.content == " ".join(words[:2])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens < 12  # generation ended at the stop string


def test_a_client_leaving_mid_stream_stops_its_generation_and_the_server_goes_on_answering(
        server, client, trained, monkeypatch):
    endpoint = server[0].state.batchers[trained[2]].endpoint
    generated, stream_of = [], endpoint.stream
    monkeypatch.setattr(endpoint, "stream", lambda *args: generated.append(stream_of(*args)) or generated[-1])
    body = {"model": trained[2], "messages": PROMPT, "stream": True, "max_tokens": 200, "temperature": 0}
    with httpx.stream("POST", f"{server[1]}/chat/completions", json=body, timeout=60) as response:
        first = next(response.iter_lines())
    assert first.startswith("data: ") and json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    request = {"model": trained[2], "messages": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = client.chat.completions.create(**request)
    assert plain.usage.completion_tokens > 0
    assert streamed_text(stream(client, **request)) == plain.choices[0].message.content
    # this reply runs to 200 tokens when nobody leaves; the one left behind ended early
    assert generated[0].usage.completion_tokens < 200 and generated[0].finish_reason == "length"


def test_streamed_text_is_released_only_when_no_stop_string_can_begin_in_it():
    release = TextRelease(["STOP", "##"])
    assert release.update(" Hello world") == "Hello wo"  # 3 characters (len("STOP") - 1) wait
    assert release.update(" Hello world ST") == "rld"  # the space may end the reply: it waits too
    assert release.update(" Hello world STOP and more") == ""  # the stop string ends it
    assert release.stopped and release.released == "Hello world"
    assert release.finish(" Hello world STOP and more") == "" and release.released == "Hello world"


def test_streamed_text_ends_with_what_was_held_back():
    release = TextRelease(["STOP"])
    assert release.update("one two ST") == "one two"
    assert release.finish("one two STAR ") == " STAR" and not release.stopped
    assert release.released == "one two STAR"


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


class BrokenEndpoint:
    """A local endpoint whose model cannot load, or that fails after its first piece of text."""

    model, batch_size = "broken", 8

    def __init__(self, loads):
        self.loads = loads

    def load(self):
        if not self.loads:
            raise OSError("no weights here")

    def stream(self, messages, params, emit, cancelled):
        emit("Hel")
        raise RuntimeError("out of memory")


@pytest.mark.parametrize("loads", [False, True])
def test_a_stream_that_fails_says_why_in_openais_error_shape(loads):
    from starlette.testclient import TestClient

    app = create_app([serve_module.ServedModel("broken", BrokenEndpoint(loads))])
    body = {"model": "broken", "messages": PROMPT, "stream": True}
    with TestClient(app) as http:
        response = http.post("/v1/chat/completions", json=body)
    if not loads:  # before the stream starts: a plain 500
        assert response.status_code == 500 and "OSError: no weights here" in response.json()["error"]["message"]
        return
    events = [json.loads(e[6:]) for e in response.text.split("\n\n") if e]
    assert [e["choices"][0]["delta"].get("content") for e in events[:2]] == ["", "Hel"]
    assert "RuntimeError: out of memory" in events[-1]["error"]["message"]  # the OpenAI SDK raises it


# the batcher ---------------------------------------------------------------------------------------------


class CountingEndpoint:
    """An endpoint that answers a batch after a pause, as a model generating it would."""

    batch_size = 8

    async def acomplete_many(self, batch, params):
        await asyncio.sleep(0.01)
        return [Completion(text="ok", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=1))
                for _ in batch]


def test_clients_that_ask_again_when_answered_are_batched_together():
    async def clients():
        batcher = RequestBatcher(CountingEndpoint(), gather_s=0.005, return_s=60)

        async def client(i):
            for _ in range(4):
                await batcher.complete([{"role": "user", "content": str(i)}], GenerationParams(max_tokens=1))
                await asyncio.sleep(0.005 * i)  # each client takes its own time to ask again

        await asyncio.gather(*(client(i) for i in range(8)))
        return batcher.batch_sizes

    assert asyncio.run(clients()) == [8, 8, 8, 8]


def test_a_lone_client_is_not_kept_waiting_for_others():
    async def one_client():
        batcher = RequestBatcher(CountingEndpoint(), gather_s=0, return_s=3600)
        for _ in range(3):  # waiting for a client that will not come would take an hour
            await asyncio.wait_for(batcher.complete([{"role": "user", "content": "hi"}], GenerationParams()), 60)
        return batcher.batch_sizes

    assert asyncio.run(one_client()) == [1, 1, 1]


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
    """What `tuneproxy serve` would serve, instead of serving it (no vLLM found, whatever this machine has)."""
    calls = []
    monkeypatch.setattr(serve_module, "serve", lambda models, **where: calls.append((models, where)))
    monkeypatch.setattr(serve_module, "vllm_installed", lambda: False)
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


# vLLM ----------------------------------------------------------------------------------------------------


def lora_folder(path, rank, **extra):
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA", **extra}))
    return path


def test_the_vllm_command_serves_one_adapter_at_its_rank(trained):
    folder = adapter_folder(trained)
    rank = json.loads((Path(folder) / "adapter_config.json").read_text())["r"]
    command = vllm_command("tiny", "/models/tiny", {trained[2]: folder}, host="0.0.0.0", port=9000, python="py")
    assert command == ["py", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny",
                       "--served-model-name", "tiny", "--host", "0.0.0.0", "--port", "9000", "--enable-lora",
                       "--lora-modules", f"{trained[2]}={folder}", "--max-lora-rank",
                       str(next(r for r in (1, 8, 16, 32, 64) if r >= rank)), "--max-loras", "1"]


def test_the_vllm_command_serves_several_adapters_at_the_largest_rank_vllm_takes(tmp_path):
    adapters = {"local:a": lora_folder(tmp_path / "a", 4), "local:b": lora_folder(tmp_path / "b", 16,
                                                                                rank_pattern={"q_proj": 24})}
    command = vllm_command("tiny", "/models/tiny", adapters, host="127.0.0.1", port=8000, python="py")
    modules = command[command.index("--lora-modules") + 1:command.index("--max-lora-rank")]
    assert modules == [f"local:a={tmp_path / 'a'}", f"local:b={tmp_path / 'b'}"]
    assert command[-4:] == ["--max-lora-rank", "32", "--max-loras", "2"]  # 24 rounds up to a rank vLLM takes


def test_the_vllm_command_for_a_base_alone_enables_no_lora():
    command = vllm_command("tiny", "/models/tiny", {}, host="127.0.0.1", port=8000, python="py")
    assert "--enable-lora" not in command and command[-2:] == ["--port", "8000"]


@pytest.mark.parametrize(("asked", "installed", "gpu", "engine"), [
    ("auto", True, True, "vllm"),
    ("auto", True, False, "builtin"),
    ("auto", False, True, "builtin"),
    ("auto", False, False, "builtin"),
    ("builtin", True, True, "builtin"),
    ("vllm", True, True, "vllm"),
])
def test_the_engine_is_vllm_only_where_it_is_installed_and_a_gpu_is_present(asked, installed, gpu, engine):
    assert choose_engine(asked, vllm_installed=installed, gpu=gpu) == engine


@pytest.mark.parametrize(("installed", "says"), [(False, "pip install vllm"), (True, "no CUDA GPU")])
def test_serve_command_refuses_engine_vllm_where_it_cannot_run(ledger_home, launched, monkeypatch, capsys,
                                                                installed, says):
    monkeypatch.setattr(serve_module, "vllm_installed", lambda: installed)
    monkeypatch.setattr(serve_module, "cuda_present", lambda: False)
    code, _, err = run_cli(capsys, "serve", "--engine", "vllm")
    assert code == 2 and says in err and "Traceback" not in err and not launched


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """A stand-in ``vllm`` package, found as vLLM is (on a "GPU"): its OpenAI server records the arguments it
    was started with in the file this returns, and exits 7."""
    server = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for package in (server, server.parent, server.parent.parent):
        (package / "__init__.py").write_text("")
    (server / "api_server.py").write_text(
        "import json, os, sys\n"
        "open(os.environ['FAKE_VLLM_RECORD'], 'w').write(json.dumps(sys.argv[1:]))\n"
        "sys.exit(7)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))  # found here...
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))  # ...and by the process the command starts
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(tmp_path / "argv.json"))
    monkeypatch.setattr(serve_module, "vllm_installed", FIND_VLLM)  # the real look-up: it finds the stand-in
    monkeypatch.setattr(serve_module, "cuda_present", lambda: True)
    return tmp_path / "argv.json"


def test_serve_command_launches_vllm_with_the_adapters_and_returns_its_exit_code(
        ledger_home, launched, trained, fake_vllm, capsys):
    _, base, tuned = trained
    code, out, err = run_cli(capsys, "serve", "--port", "8123")  # --engine auto: vLLM and a GPU are found
    assert code == 7, err
    argv = json.loads(fake_vllm.read_text())
    assert argv == vllm_command(base, base, {tuned: adapter_folder(trained)}, host="127.0.0.1", port=8123)[3:]
    assert "Launching vLLM" in out and f"{sys.executable} -m vllm.entrypoints.openai.api_server" in out
    assert not launched  # the built-in server did not start


def test_serve_command_gives_vllm_the_dequantized_folder_of_a_gguf_base(
        ledger_home, launched, trained, fake_vllm, capsys, request):
    from tuneproxy.local_backend import models

    plain = models.gguf_cache_dir(Path(models.resolve("smollm2-135m-instruct").location), trained[0].home)
    plain.mkdir(parents=True)
    request.addfinalizer(lambda: shutil.rmtree(plain))  # the home is shared with the other tests
    (plain / "config.json").write_text("{}")  # as if dequantized before: nothing to convert here
    code, _, err = run_cli(capsys, "serve", "--base", "smollm2-135m-instruct", "--engine", "vllm")
    assert code == 7, err
    argv = json.loads(fake_vllm.read_text())
    assert argv[argv.index("--model") + 1] == str(plain)
    assert argv[argv.index("--served-model-name") + 1] == "smollm2-135m-instruct"
    assert "--enable-lora" not in argv  # the trained adapter is from another base: not served


def test_the_launched_server_hears_sigterm_and_its_exit_code_is_returned(tmp_path):
    """``run_forwarding_signals`` in a process of its own, told to stop as a service manager would."""
    ready, heard = tmp_path / "ready", tmp_path / "heard"
    child = (f"import pathlib, signal, sys, time\n"
             f"def stop(signum, frame):\n"
             f"    pathlib.Path({str(heard)!r}).write_text(str(signum)); sys.exit(5)\n"
             f"signal.signal(signal.SIGTERM, stop)\n"
             f"pathlib.Path({str(ready)!r}).write_text('')\n"
             f"time.sleep(30)\n")
    wrapper = ("import sys\nfrom tuneproxy.local_backend.serve import run_forwarding_signals\n"
               f"sys.exit(run_forwarding_signals([sys.executable, '-c', {child!r}]))\n")
    process = subprocess.Popen([sys.executable, "-c", wrapper])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and process.poll() is None, "the launched process did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 5 and heard.read_text() == str(int(signal.SIGTERM))
