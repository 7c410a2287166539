"""The config file on the command line: `fit`, `estimate` and `estimate --all` take what the file says, a
TUNEPROXY_* variable wins over it and a flag over both; `Tuner.from_config`'s fit splits the holdout as the
file says. (The file format, the merge itself and `init` are tests/test_config.py's.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from tests.fit_helpers import SAMPLE, before_the_sunset
from tuneproxy import JobStatus, Tuner
from tuneproxy.recording import ReplayTransport, cassette_path

pytestmark = [pytest.mark.filterwarnings("ignore::tuneproxy.tuner.DatasetWarning")]




def together_file(tmp_path: Path, epochs: int = 3) -> Path:
    """What Together's fit cassette was recorded with, as a config file (no model: the backend's default)."""
    path = tmp_path / "tuneproxy.toml"
    path.write_text(f'[tune]\nprovider = "together"\nepochs = {epochs}\nbatch_size = 8\nseed = 42\n'
                    'suffix = "support-bot"\nholdout = 0.1\n')
    return path


def test_fit_with_only_a_config_file_trains_what_it_says(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path("together", "fit_happy_path")))
    code, out, err = run_cli(capsys, "fit", str(SAMPLE), "--config", str(together_file(tmp_path)), "--poll-interval",
                         "0", "--json")
    assert code == 0, err
    done = json.loads(out)  # the cassette holds the create with n_epochs 3, batch 8, the holdout uploaded
    assert done["status"] == "succeeded" and done["base_model"] == "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
    assert "no model given: training llama-3.1-8b-instruct" in " ".join(err.split())


def test_a_flag_wins_over_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path("together", "fit_happy_path")))
    config = together_file(tmp_path, epochs=5)  # the cassette holds 3 epochs: only the flag's 3 can replay it
    code, out, err = run_cli(capsys, "fit", str(SAMPLE), "--config", str(config), "--epochs", "3", "--poll-interval",
                         "0", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    code, _, err = run_cli(capsys, "fit", str(SAMPLE), "--config", str(config), "--poll-interval", "0")
    assert code == 3 and "does not match the cassette" in " ".join(err.split())  # 5 epochs: not what was recorded


def test_the_environment_wins_over_the_file_and_a_flag_over_the_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tuneproxy.toml"
    config.write_text('[tune]\nprovider = "fireworks"\nepochs = 2\n')
    code, out, _ = run_cli(capsys, "estimate", str(SAMPLE), "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["provider"] == "fireworks"
    assert json.loads(out)["billable_tokens"] == 2 * 36224
    monkeypatch.setenv("TUNEPROXY_PROVIDER", "openai")
    code, out, _ = run_cli(capsys, "estimate", str(SAMPLE), "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["provider"] == "openai"
    code, out, _ = run_cli(capsys, "estimate", str(SAMPLE), "--config", str(config), "-p", "together", "--json")
    assert code == 0 and json.loads(out)["provider"] == "together"


def test_the_file_is_found_from_the_working_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.tuneproxy.tune]\nprovider = "replicate"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "estimate", str(SAMPLE), "--json")
    assert code == 0, err
    assert json.loads(out)["provider"] == "replicate" and json.loads(out)["model"] == "meta/llama-2-7b"


def test_a_bad_config_file_is_a_usage_error_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    config = tmp_path / "tuneproxy.toml"
    config.write_text('[tune]\nprovider = "together"\nepoch = 3\n')
    code, _, err = run_cli(capsys, "fit", str(SAMPLE), "--config", str(config))
    assert code == 2 and "line 3" in err and "'epochs'" in err and "Traceback" not in err


def test_the_desk_takes_the_files_model_hyperparameters_and_every_providers_options(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tuneproxy.toml"
    config.write_text('[tune]\nprovider = "openai"\nmodel = "llama-3.1-8b-instruct"\nepochs = 2\nseed = 7\n\n'
                      "[providers.local]\nprice_per_gpu_hour = 2.0\n")
    code, out, err = run_cli(capsys, "estimate", str(SAMPLE), "--all", "--config", str(config), "--json")
    assert code == 0, err
    desk = json.loads(out)
    by = {r["provider"]: r for r in desk["rows"]}
    assert set(by) == {"together", "fireworks", "local"} and {r["epochs"] for r in by.values()} == {2}
    assert by["local"]["estimate"]["usd"] > 0  # its hours at the file's $2/h
    assert "it takes no seed: estimated without" in by["fireworks"]["problems"]


def test_from_config_fit_splits_the_holdout_as_the_file_says(tmp_path: Path) -> None:
    transport = ReplayTransport(cassette_path("together", "fit_happy_path"))
    tuner = Tuner.from_config(together_file(tmp_path), transport=transport, api_key="test-key", poll_interval=0,
                              show_progress=False, clock=before_the_sunset)
    tuned = tuner.fit(SAMPLE)  # no holdout here: the file's 0.1 (the cassette uploads a validation file)
    assert tuned.record.status is JobStatus.SUCCEEDED
    assert len(transport.requests("POST", "/v1/files")) == 2  # the training file, then the held-out one
    assert transport.failures == []
