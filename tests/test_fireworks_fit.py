"""Fireworks through the whole of tuneproxy: ``Tuner.fit`` replayed from its Tuner-level cassettes (the loss
curve from the job's metrics file), and the CLI when Fireworks does not cooperate (a dataset that never becomes
ready, a deployment that fails), each a clear message, exit code 3 and a ledger that says what happened."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from rich.console import Console

from tests.contract.cases import FIREWORKS, never_sleep
from tests.fit_helpers import MODELS, SAMPLE, make_tuner
from tuneproxy import JobStatus, Ledger, cli, registry
from tuneproxy.contract import JobRecord
from tuneproxy.recording import Cassette, LostResponseTransport, ReplayTransport, cassette_path, transport_from_env

pytestmark = [pytest.mark.filterwarnings("ignore::tuneproxy.tuner.SunsetWarning"),
              pytest.mark.filterwarnings("ignore::tuneproxy.tuner.DatasetWarning")]

STORAGE = "storage.googleapis.com"
EVERY_NINTH_STEP = list(range(9, 136, 9))  # 360 examples in batches of 8: 45 steps an epoch, 3 epochs


@pytest.fixture(autouse=True)
def fireworks_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREWORKS_ACCOUNT_ID", "acme")


def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["tuneproxy", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# --------------------------------------------------------------------------- the loss curve


def test_fireworks_metrics_reach_the_tuned_model() -> None:
    transport = ReplayTransport(cassette_path("fireworks", "fit_happy_path"))
    tuned = make_tuner("fireworks", transport).fit(SAMPLE, holdout=0.1)
    steps = [(m.step, m.train_loss is not None, m.valid_loss is not None) for m in tuned.metrics]
    # training loss every 9 steps; one evaluation of the validation dataset per epoch
    assert steps == [(step, True, step in (45, 90, 135)) for step in EVERY_NINTH_STEP]
    evaluated = [(m.step, m.valid_loss) for m in tuned.metrics if m.valid_loss is not None]
    assert evaluated == [(45, 0.6533), (90, 0.4871), (135, 0.4512)]
    assert (tuned.metrics[0].train_loss, tuned.metrics[-1].train_loss) == (1.1384, 0.34)
    assert tuned.record.trained_tokens == 96417  # jobProgress.inputTokens
    assert tuned.record.billed_usd == pytest.approx(0.0482085)  # estimatedCost: units "0", nanos 48208500


def test_the_ledger_keeps_each_step_once_and_the_status_at_each_change() -> None:
    transport = ReplayTransport(cassette_path("fireworks", "fit_happy_path"))
    tuned = make_tuner("fireworks", transport).fit(SAMPLE, holdout=0.1)
    ids = [e.id for e in Ledger().events("fireworks", tuned.job_id)]
    assert [i for i in ids if i.startswith("metrics-")] == [f"metrics-{step}" for step in EVERY_NINTH_STEP]
    assert [i for i in ids if i.startswith("state-")] == [
        "state-JOB_STATE_RUNNING-epoch1-40pct-step45", "state-JOB_STATE_RUNNING-epoch2-80pct-step99",
        "state-JOB_STATE_COMPLETED-epoch2-100pct-step135"]


def test_the_metrics_file_is_read_at_each_events_poll_without_the_api_key() -> None:
    transport = ReplayTransport(cassette_path("fireworks", "fit_happy_path"))
    make_tuner("fireworks", transport).fit(SAMPLE, holdout=0.1)
    fetched = [r for r in transport.log if urlsplit(r.url).netloc == STORAGE]
    assert len(fetched) == 3 and all("authorization" not in r.headers for r in fetched)
    assert all(r.headers.get("authorization") == "Bearer REDACTED" for r in transport.log
               if urlsplit(r.url).netloc == "api.fireworks.ai")


def test_a_reconciled_job_s_metrics_in_the_nested_shape_reach_the_tuned_model_with_their_own_times() -> None:
    replay = ReplayTransport(cassette_path("fireworks", "fit_lost_create"))
    transport = LostResponseTransport(replay, method="POST", path="/v1/accounts/acme/supervisedFineTuningJobs")
    tuned = make_tuner("fireworks", transport).fit(SAMPLE, holdout=0.1)
    assert [m.step for m in tuned.metrics] == EVERY_NINTH_STEP
    # each row's timestamp (unix seconds): 1795867500 + 20 × step
    assert tuned.metrics[0].time == dt.datetime(2026, 11, 28, 12, 8, tzinfo=dt.timezone.utc)
    assert tuned.metrics[0].epoch == 0 and tuned.metrics[-1].epoch == 2


# --------------------------------------------------------------------------- a dataset that never becomes ready


def stuck_uploading(tmp_path: Path) -> Path:
    """The start of fit_happy_path with the training dataset still UPLOADING at both checks allowed."""
    recorded = Cassette.load(cassette_path("fireworks", "fit_happy_path"))
    create, upload, ready = recorded.interactions[:3]
    body = ready.response.body.json_  # type: ignore[union-attr]
    uploading = ready.model_copy(update={"response": ready.response.model_copy(update={
        "body": ready.response.body.model_copy(update={"json_": {**body, "state": "UPLOADING"}})})})  # type: ignore[union-attr]
    path = tmp_path / "stuck_uploading.json"
    recorded.model_copy(update={"scenario": "stuck_uploading", "interactions": [create, upload, uploading, uploading]}
                        ).save(path)
    return path


def test_cli_fit_with_a_dataset_stuck_uploading_exits_3_saying_what_to_do_and_the_ledger_marks_it_failed(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cassette = stuck_uploading(tmp_path)
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette))
    code, out, err = run_cli(
        capsys, monkeypatch, "fit", str(SAMPLE), "-p", "fireworks", "-m", MODELS["fireworks"], "--epochs", "3",
        "--batch-size", "8", "--suffix", "support-bot", "--holdout", "0.1", "--poll-interval", "0",
        "-o", "upload_poll_attempts=2", "-o", "upload_poll_seconds=0")
    assert code == 3, err
    text = " ".join(err.split())  # rich wraps long lines
    assert "tp-train-30de45cdaae4 is still UPLOADING after 2 checks" in text
    assert "no job was created" in text and "firectl get dataset tp-train-30de45cdaae4" in text
    assert "run the same command again" in text and "-o upload_poll_attempts=" in text
    assert "Traceback" not in out + err
    ledger = Ledger()
    (intent,) = [row[0] for row in ledger.db.execute("SELECT intent_id FROM submissions").fetchall()]
    submission = ledger.submission(intent)
    assert submission.state == "failed" and "still UPLOADING" in (submission.error or "")
    assert ledger.jobs() == []  # nothing was submitted, so nothing can be lost either


def test_cli_fit_says_the_tuned_lora_needs_a_deployment_that_bills_while_up(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path("fireworks", "fit_happy_path")))
    code, out, err = run_cli(
        capsys, monkeypatch, "fit", str(SAMPLE), "-p", "fireworks", "-m", MODELS["fireworks"], "--epochs", "3",
        "--batch-size", "8", "--suffix", "support-bot", "--holdout", "0.1", "--poll-interval", "0")
    assert code == 0, err
    text = " ".join(out.split())  # rich wraps long lines
    assert "Done:" in text and "Note: Fireworks serves a tuned LoRA only on a dedicated deployment" in text
    assert "`tuneproxy deployments delete ID`" in text


# --------------------------------------------------------------------------- deployments create --wait


TUNED = "accounts/acme/models/support-bot-tp8f14e45fce"
DEPLOYMENT = "accounts/acme/deployments/support-bot-tp8f14e45fce"


def succeeded_job(ledger: Ledger) -> str:
    """A succeeded Fireworks job in the ledger, as a fit leaves it (the deploy cassettes' tuned model)."""
    intent, _ = ledger.claim_intent("fireworks", MODELS["fireworks"], "fp-deploy", {"epochs": 2},
                                    {"account_id": "acme"})
    job_id = FIREWORKS.job_id
    ledger.mark_submission(intent.intent_id, "submitted", job_id=job_id)
    ledger.save_job(JobRecord(provider="fireworks", job_id=job_id, base_model=MODELS["fireworks"],
                              status=JobStatus.SUCCEEDED, raw_status="JOB_STATE_COMPLETED", tuned_model=TUNED,
                              intent_id=intent.intent_id))
    return job_id


def replayed(monkeypatch: pytest.MonkeyPatch, cassette: Path,
             sleep: Callable[[float], None] = never_sleep) -> ReplayTransport:
    """Every provider the CLI builds replays ``cassette`` and waits with ``sleep`` (by default a wait fails)."""
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette))
    replay = transport_from_env("fireworks")
    assert isinstance(replay, ReplayTransport)
    real_create = registry.create

    def create(name: str, options: Any = None, **kwargs: Any) -> Any:
        kwargs.update(transport=replay, sleep=sleep)
        return real_create(name, options, **kwargs)

    monkeypatch.setattr(registry, "create", create)
    return replay


def test_deployments_create_wait_on_a_deployment_that_fails_exits_3_naming_it_and_how_to_delete_it(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger()
    job_id = succeeded_job(ledger)
    waits: list[float] = []
    replay = replayed(monkeypatch, cassette_path("fireworks", "deploy_failed"), waits.append)
    code, out, err = run_cli(capsys, monkeypatch, "deployments", "create", job_id, "--hardware", "NVIDIA_H100_80GB",
                             "--wait", "--poll-interval", "5")
    assert code == 3, err
    text = " ".join(err.split())
    assert f"Deployment {DEPLOYMENT} of {TUNED} is failed (FAILED)" in text
    assert f"`tuneproxy deployments delete {DEPLOYMENT}`" in text and "Traceback" not in out + err
    # progress without a terminal: one plain line per state seen (the create's answer, then each read)
    assert [line for line in err.splitlines() if line.startswith("Deployment ")] == [
        f"Deployment {DEPLOYMENT}: creating (CREATING)", f"Deployment {DEPLOYMENT}: failed (FAILED)"]
    assert waits == [5.0, 5.0]  # the poll interval, through the provider's sleep, before each read
    replay.assert_all_played()
    [row] = ledger.deployments(active_only=False)
    assert (row.deployment_id, row.state, row.raw_state) == (DEPLOYMENT, "failed", "FAILED")


def test_deployments_create_wait_returns_once_the_deployment_is_ready(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ledger = Ledger()
    job_id = succeeded_job(ledger)
    recorded = Cassette.load(cassette_path("fireworks", "deploy_happy_path"))
    cassette = tmp_path / "deploy_ready.json"
    recorded.model_copy(update={"interactions": recorded.interactions[:2]}).save(cassette)  # CREATING, READY
    replay = replayed(monkeypatch, cassette, [].append)
    code, out, err = run_cli(capsys, monkeypatch, "deployments", "create", job_id, "--hardware", "NVIDIA_H100_80GB",
                             "--wait", "--poll-interval", "0", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["deployment_id"], shown["state"], shown["serving_model"]) == (DEPLOYMENT, "ready",
                                                                                f"{TUNED}#{DEPLOYMENT}")
    replay.assert_all_played()
    assert [(d.deployment_id, d.state) for d in ledger.deployments()] == [(DEPLOYMENT, "ready")]


def test_deployments_create_wait_interrupted_says_the_deployment_goes_on_and_how_to_delete_it(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = succeeded_job(Ledger())

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt  # Ctrl-C while waiting between two reads

    replayed(monkeypatch, cassette_path("fireworks", "deploy_failed"), interrupted)
    code, _, err = run_cli(capsys, monkeypatch, "deployments", "create", job_id, "--hardware", "NVIDIA_H100_80GB",
                           "--wait", "--poll-interval", "5")
    text = " ".join(err.split())
    assert code == 130
    assert f"Deployment {DEPLOYMENT} goes on starting" in text and f"tuneproxy deployments delete {DEPLOYMENT}" in text
    assert [d.state for d in Ledger().deployments()] == ["creating"]  # recorded, so `deployments list` shows it


def test_deployments_create_wait_on_a_terminal_shows_a_live_status_instead_of_lines(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = succeeded_job(Ledger())
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=200)
    shown: list[str] = []
    real_status = terminal.status

    def status(text: str, **kwargs: Any) -> Any:
        live = real_status(text, **kwargs)
        update = live.update
        live.update = lambda line, **more: (shown.append(line), update(line, **more))  # type: ignore[method-assign]
        return live

    monkeypatch.setattr(terminal, "status", status)
    monkeypatch.setattr(cli, "err_console", terminal)
    replayed(monkeypatch, cassette_path("fireworks", "deploy_failed"), [].append)
    code, _, err = run_cli(capsys, monkeypatch, "deployments", "create", job_id, "--hardware", "NVIDIA_H100_80GB",
                           "--wait", "--poll-interval", "0")
    assert code == 3
    creating, failed = f"Deployment {DEPLOYMENT}: creating (CREATING)", f"Deployment {DEPLOYMENT}: failed (FAILED)"
    assert shown == [creating, creating, failed]
    written = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert f"{creating}\n" not in written and "deployments delete" in written
