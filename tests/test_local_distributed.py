"""The local backend over several processes (torchrun, gloo on CPU): the loss curve of one process over the same
global batch, one reporter, a dead rank failing the job and resume from its checkpoint, cancel of every rank,
two machines meeting at a rendezvous endpoint (both on this machine), and what the plan and the estimate say."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.local_helpers import build_model_folder, follow, ticket_records, ticket_words, write_jsonl
from tuneproxy.contract import JobSpec, JobStatus, Stats
from tuneproxy.errors import ConfigError
from tuneproxy.local_backend import distributed, memory, preflight
from tuneproxy.local_backend.provider import LocalProvider, parallel_hours
from tuneproxy.local_backend.settings import LocalOptions, TrainSettings

WAIT_S = 240  # generous: never reached when things work
# Losses of one process and of two over the same global batch differ only in the order floats are summed.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "model", ticket_words())


def local(tmp_path, name, **options):
    return LocalProvider({"home": tmp_path / name, "cancel_timeout": WAIT_S, **options})


def job_processes(job_dir: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line names the job's folder: its worker
    (torchrun's agent) and its ranks."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(job_dir) in cmdline and state != "Z":
            found.append((int(proc.name), cmdline))
    return found


def rank_pid(job_dir: Path, rank: int) -> int:
    """The pid of the job's rank ``rank`` (its environment says RANK)."""
    for pid, cmdline in job_processes(job_dir):
        if distributed.RANK_FLAG not in cmdline:
            continue
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no rank {rank} running for {job_dir}")


def gone(job_dir: Path) -> bool:
    """Wait (bounded) until no process of the job is left."""
    deadline = time.monotonic() + WAIT_S
    while job_processes(job_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not job_processes(job_dir)


def kill_all(job_dir: Path) -> None:
    for pid, _ in job_processes(job_dir):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def spec(training_file, epochs=2, batch_size=8):
    return JobSpec(model="", training_file=training_file, intent_id="intent-1", hyperparameters={
        "epochs": epochs, "learning_rate": 1e-2, "batch_size": batch_size, "lora_rank": 4, "lora_dropout": 0.0})


def submit(provider, model_dir, tmp_path, validation=False, **kwargs):
    training = provider.upload(write_jsonl(tmp_path / "train.jsonl", ticket_records(32))).id
    update = {"model": str(model_dir)}
    if validation:  # 5 examples: the ranks get unequal shares of the holdout rows
        update["validation_file"] = provider.upload(write_jsonl(tmp_path / "valid.jsonl", ticket_records(5, seed=3)),
                                                    "validation").id
    return provider.submit(spec(training, **kwargs).model_copy(update=update))


def step_losses(provider, job_id):
    return [(e.step, e.train_loss) for e in provider.events(job_id) if e.message.startswith("step")]


def valid_losses(provider, job_id):
    return [(e.step, e.valid_loss) for e in provider.events(job_id)
            if e.message.startswith("step") and e.valid_loss is not None]


def adapter_weights(provider, job_id):
    from safetensors.torch import load_file

    return load_file(provider.home / "jobs" / job_id / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def one_process(model_dir, tmp_path_factory):
    """The reference: the job trained by one process (with a holdout scored every 2 steps)."""
    tmp_path = tmp_path_factory.mktemp("one")
    provider = local(tmp_path, "home", eval_every=2)
    record = follow(provider, submit(provider, model_dir, tmp_path, validation=True).job_id)
    assert record.status == JobStatus.SUCCEEDED, record.error
    return provider, record


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_processes_follow_one_process_over_the_same_global_batch_and_only_rank_0_reports(
        model_dir, tmp_path, one_process, parallelism):
    one, single_record = one_process
    two = local(tmp_path, "two", processes=2, parallelism=parallelism, eval_every=2)
    record = follow(two, submit(two, model_dir, tmp_path, validation=True).job_id)
    assert record.status == JobStatus.SUCCEEDED, record.error
    assert gone(two.home / "jobs" / record.job_id)

    single, double = step_losses(one, single_record.job_id), step_losses(two, record.job_id)
    assert [s for s, _ in double] == list(range(1, 9))  # one event per step: rank 1 wrote none
    assert [s for s, _ in single] == [s for s, _ in double]
    for (_, a), (_, b) in zip(single, double, strict=True):
        assert b == pytest.approx(a, rel=LOSS_RTOL)
    assert single[-1][1] < single[0][1]  # it learned something, so the match is not two flat lines
    # the holdout, split unevenly between the ranks, scores the same
    held_one, held_two = valid_losses(one, single_record.job_id), valid_losses(two, record.job_id)
    assert [s for s, _ in held_two] == [s for s, _ in held_one] == [2, 4, 6, 8]
    for (_, a), (_, b) in zip(held_one, held_two, strict=True):
        assert b == pytest.approx(a, rel=LOSS_RTOL)

    # the same update each step: the adapters end the same
    w1, w2 = adapter_weights(one, single_record.job_id), adapter_weights(two, record.job_id)
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < WEIGHT_ATOL
    # every rank's tokens were counted: the same tokens as one process
    summary = record.detail["summary"]
    assert summary["tokens"] == single_record.detail["summary"]["tokens"]
    assert summary["processes"] == 2 and record.detail["processes"] == 2
    assert summary["parallelism"] == parallelism
    if parallelism == "fsdp":  # rank 0 held half of each layer's weights, not the whole model
        assert summary["parameter_share"] < 0.85
    else:
        assert summary["parameter_share"] == 1.0
    plan = next(e.message for e in two.events(record.job_id) if e.message.startswith("Plan"))
    assert "2 processes" in plan and (("sharded" in plan) == (parallelism == "fsdp"))
    job_created = two.events(record.job_id)[0].message
    assert "per process" in job_created and "× 2 processes" in job_created


@pytest.mark.parametrize(("victim", "parallelism"), [(0, "ddp"), (1, "fsdp")])
def test_a_killed_rank_fails_the_job_naming_it_and_resume_continues_from_the_checkpoint(model_dir, tmp_path,
                                                                                         victim, parallelism):
    provider = local(tmp_path, "home", processes=2, save_every=3, parallelism=parallelism)
    record = submit(provider, model_dir, tmp_path, epochs=25)
    job_dir = provider.home / "jobs" / record.job_id
    try:
        follow(provider, record.job_id, until=lambda r: any((job_dir / "checkpoints").glob("step-*")))
        os.kill(rank_pid(job_dir, victim), signal.SIGKILL)

        record = follow(provider, record.job_id)
        assert record.status == JobStatus.FAILED
        assert f"Rank {victim} of the job's processes" in record.error and "SIGKILL" in record.error
        assert "Last log lines" in record.error and f"LocalProvider.resume({record.job_id!r})" in record.error
        assert gone(job_dir)  # the agent stopped the other rank: no stray process
        billed = next(q.amount for q in record.billable if q.kind == "gpu_hours")
        assert billed > 0

        checkpoint = int(next((job_dir / "checkpoints").glob("step-*")).name.split("-")[1])
        provider.resume(record.job_id)
        record = follow(provider, record.job_id)
        assert record.status == JobStatus.SUCCEEDED, record.error
        events = provider.events(record.job_id)
        resumed = [i for i, e in enumerate(events) if e.message.startswith("Resumed")]
        assert events[resumed[-1]].step == checkpoint
        assert events[resumed[-1] + 1].step == checkpoint + 1
        assert record.detail["step"] == record.detail["total_steps"] == 100
        assert next(q.amount for q in record.billable if q.kind == "gpu_hours") > billed
    finally:
        kill_all(job_dir)


def test_cancel_stops_every_rank_at_the_same_step_and_leaves_no_process(model_dir, tmp_path):
    provider = local(tmp_path, "home", processes=2)
    record = submit(provider, model_dir, tmp_path, epochs=100, batch_size=1)
    job_dir = provider.home / "jobs" / record.job_id
    try:
        follow(provider, record.job_id, until=lambda r: (r.detail["step"] or 0) >= 2)
        assert len(job_processes(job_dir)) == 3  # the agent and two ranks
        record = provider.cancel(record.job_id)
        assert record.status == JobStatus.CANCELLED, record.error
        assert provider.events(record.job_id)[-1].message.startswith("Cancelled")
        assert not (job_dir / "adapter").exists()
        assert gone(job_dir)
    finally:
        kill_all(job_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_meet_at_the_rendezvous_endpoint_and_train_as_one(model_dir, tmp_path):
    """Two nodes of one process each, both on this machine: the submitting client starts the first, and
    ``worker --join`` (what a user runs on each further machine) the second."""
    provider = local(tmp_path, "home", nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}")
    record = submit(provider, model_dir, tmp_path)
    job_dir = provider.home / "jobs" / record.job_id
    other = subprocess.Popen([sys.executable, "-m", "tuneproxy.local_backend.worker", "--join", str(job_dir)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        record = follow(provider, record.job_id)
        assert record.status == JobStatus.SUCCEEDED, record.error
        assert other.wait(WAIT_S) == 0
        assert [s for s, _ in step_losses(provider, record.job_id)] == list(range(1, 9))
        state = json.loads((job_dir / "state.json").read_text())
        assert state["processes"] == 2 and state["billed_devices"] == 2  # a machine-hour per node on CPU
    finally:
        other.kill()
        kill_all(job_dir)


# settings, plan and estimate (no process started) ----------------------------------------------------------


def test_several_machines_need_a_rendezvous_endpoint_said_plainly():
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        LocalOptions.parse({"nnodes": 2})
    with pytest.raises(ConfigError, match="host:port"):
        LocalOptions.parse({"nnodes": 2, "rdzv_endpoint": "node-a"})
    assert LocalOptions.parse({"nnodes": 2, "rdzv_endpoint": "10.0.0.1:29400"}).nnodes == 2


def test_a_sharded_base_is_16_or_32_bit_and_auto_picks_it(tmp_path):
    with pytest.raises(ConfigError, match="parallelism='fsdp' .* quantization='nf4'"):
        LocalOptions.parse({"parallelism": "fsdp", "quantization": "nf4"})
    from tuneproxy.local_backend import models

    assert models.pick_quantization("auto", "cuda", "fsdp") == "none"
    assert models.pick_quantization("auto", "cuda", "ddp") == "nf4"


def test_more_processes_than_gpus_is_refused_naming_both(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    settings = TrainSettings(model="m", training_file="t", processes=2)
    with pytest.raises(ConfigError, match=r"processes=2 needs 2 GPUs .* has 1"):
        preflight.check_devices(settings, "cuda")
    preflight.check_devices(settings, "cpu")  # on CPU the processes share the machine


def test_torchrun_runs_the_ranks_on_one_node_standalone_or_meets_the_others_at_the_endpoint(tmp_path):
    one = TrainSettings(model="m", training_file="t", processes=2)
    args = distributed.torchrun_args(one, tmp_path, "ljob-1")
    assert "--standalone" in args and "--nproc-per-node=2" in args and "--max-restarts=0" in args
    assert args[-4:] == ["-m", "tuneproxy.local_backend.worker", "--rank", str(tmp_path)]
    nodes = TrainSettings(model="m", training_file="t", processes=4, nnodes=3, rdzv_endpoint="10.0.0.1:29400")
    args = distributed.torchrun_args(nodes, tmp_path, "ljob-1")
    assert "--standalone" not in args
    assert {"--nnodes=3", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29400",
            "--rdzv-id=ljob-1"} <= set(args)


def test_each_rank_takes_its_share_of_the_global_batch_and_together_they_take_all_of_it():
    batch = list(range(7))
    shares = [distributed.shard(batch, rank, 3) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(x for share in shares for x in share) == batch


def test_processes_on_one_cpu_machine_share_its_memory(model_dir):
    from tuneproxy.local_backend import models

    model = models.meta_model(models.load_config(models.resolve(str(model_dir)), Path("/nonexistent")))
    common = dict(targets={"q_proj"}, rank=4, quantization="none", device="cpu", dtype_bytes=4, row_tokens=64,
                  checkpointing=False)
    one = memory.plan(model, limit_gb=1.5, **common)
    assert one.fits
    two = memory.plan(model, limit_gb=1.5, copies=2, **common)
    assert two.total == one.total and not two.fits  # the same per process, but two of them
    with pytest.raises(memory.WillNotFit, match="run fewer processes than 2"):
        memory.ensure_fits(two, "none", False)
    sharded = memory.plan(model, limit_gb=1.5, shards=2, **common)
    assert sharded.weights == one.weights // 2 and sharded.total < one.total


def test_the_estimate_spreads_the_time_over_gpus_but_not_over_one_cpus_processes(tmp_path, monkeypatch):
    assert parallel_hours(1.0, 1, 1, on_gpu=True) == (1, 1.0)
    devices, wall = parallel_hours(1.0, 4, 1, on_gpu=True)
    assert devices == 4 and wall == pytest.approx(1 / (4 * 0.9))
    assert parallel_hours(1.0, 2, 1, on_gpu=False) == (1, 1.0)  # the processes share the cores
    devices, wall = parallel_hours(1.0, 2, 2, on_gpu=False)
    assert devices == 2 and wall == pytest.approx(1 / 1.8)

    stats = Stats(examples=100, total_tokens=100_000)
    job = JobSpec(model="smollm2-135m-instruct", training_file="f", intent_id="i",
                  hyperparameters={"epochs": 1})
    alone = LocalProvider({"home": tmp_path, "device": "cuda"}).estimate(stats, job)
    four = LocalProvider({"home": tmp_path, "device": "cuda", "processes": 4}).estimate(stats, job)
    assert four.wall_time_s == pytest.approx(alone.wall_time_s / 3.6)
    assert four.quantities[0].amount == pytest.approx(alone.quantities[0].amount / 0.9)  # GPU-hours, all 4
    assert "4 processes" in four.basis and "per process" in four.requirements
    # an 8B base sharded over 4 GPUs in 16-bit: a quarter of its weights each
    big = job.model_copy(update={"model": "meta-llama/Meta-Llama-3.1-8B-Instruct"})
    sharded = LocalProvider({"home": tmp_path, "device": "cuda", "processes": 4, "parallelism": "fsdp"}).estimate(
        stats, big)
    assert sharded.requirements.startswith("~5.2 GiB per process in 16-bit")
    assert "sharded over 4" in sharded.requirements


def test_processes_reach_the_local_estimate_from_a_flag_and_from_the_config_file(tmp_path, capsys, monkeypatch):
    from tests.cli_helpers import run_cli
    from tests.fit_helpers import SAMPLE

    monkeypatch.setenv("TUNEPROXY_HOME", str(tmp_path / "tp-home"))
    # planned against a stated memory, so the check does not depend on this machine's RAM
    args = ["estimate", str(SAMPLE), "-p", "local", "-m", "smollm2-135m-instruct", "--json",
            "-o", "memory_limit_gb=100"]
    code, out, err = run_cli(capsys, *args, "-o", "processes=4")
    assert code == 0, err
    assert "4 processes" in json.loads(out)["basis"]
    config = tmp_path / "tuneproxy.toml"
    config.write_text('[tune]\nprovider = "local"\n\n[providers.local]\nprocesses = 2\nparallelism = "fsdp"\n')
    code, out, err = run_cli(capsys, *args, "--config", str(config))
    assert code == 0, err
    assert "2 processes" in json.loads(out)["basis"] and "sharded over 2" in json.loads(out)["requirements"]
    code, _, err = run_cli(capsys, *args, "-o", "nnodes=2")
    assert code == 2 and "rdzv_endpoint" in err and "Traceback" not in err
