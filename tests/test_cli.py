"""The command line: exit codes, --json, tables, and no traceback for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cli_helpers import run_cli
from tests.conftest import FIXTURES

SAMPLE = FIXTURES / "datasets" / "sample.jsonl"
BAD = FIXTURES / "datasets" / "bad"




def test_valid_sample_exits_zero_with_stats_and_verdict(capsys):
    code, out, _ = run_cli(capsys, "validate", SAMPLE, "--provider", "openai", "--model", "gpt-4o-mini")
    assert code == 0
    assert "OK: 400 examples are ready to train" in out
    assert "36,224" in out and "tiktoken o200k_base" in out


def test_json_output_has_findings_stats_and_verdict(capsys):
    code, out, _ = run_cli(capsys, "validate", BAD / "weight_invalid.jsonl", "--json")
    data = json.loads(out)
    assert code == 1
    assert data["ok"] is False and data["verdict"].startswith("FAILED")
    assert [f["line"] for f in data["findings"] if f["code"] == "TP305"] == [1, 2, 3]
    assert data["stats"]["epochs"] == 3


def test_table_groups_findings_by_code_with_first_lines(capsys):
    code, out, _ = run_cli(capsys, "validate", BAD / "messages_invalid.jsonl")
    assert code == 1
    row = next(line for line in out.splitlines() if "TP301" in line)
    assert "3" in row and "1, 2, 3" in row


@pytest.mark.parametrize("name", sorted(p.name for p in BAD.glob("*.jsonl")))
def test_every_bad_file_gets_a_verdict_and_no_traceback(capsys, name):
    code, out, err = run_cli(capsys, "validate", BAD / name)
    assert code in (0, 1)
    assert "Traceback" not in out + err
    assert "OK:" in out or "FAILED:" in out


def test_missing_file_is_a_usage_error_with_advice(capsys, tmp_path):
    code, _, err = run_cli(capsys, "validate", tmp_path / "nope.jsonl")
    assert code == 2 and "no such file" in err


def test_directory_is_a_usage_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "validate", tmp_path)
    assert code == 2 and "is a directory" in err


def test_unknown_provider_lists_the_known_ones(capsys):
    code, _, err = run_cli(capsys, "validate", SAMPLE, "--provider", "nope")
    assert code == 2 and "together" in err


def test_providers_json_lists_each_with_its_hyperparameters(capsys):
    code, out, _ = run_cli(capsys, "providers", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert {"openai", "together", "fireworks", "replicate"} <= set(rows)
    assert "lora_rank" in rows["together"]["hyperparameters"]
    assert "lora_rank" not in rows["openai"]["hyperparameters"]
    assert rows["openai"]["sunset"] == "2027-01-06"


def test_jobs_list_on_an_empty_ledger_says_how_to_start(capsys):
    code, out, _ = run_cli(capsys, "jobs", "list")
    assert code == 0 and "tuneproxy fit" in out
    code, out, _ = run_cli(capsys, "jobs", "list", "--json")
    assert json.loads(out) == []


def test_unknown_job_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "jobs", "show", "ft-missing", "--offline")
    assert code == 2 and "tuneproxy jobs list" in err


def test_fit_without_a_key_names_the_variable_and_never_traces(capsys):
    code, _, err = run_cli(capsys, "fit", SAMPLE, "-p", "together", "-m",
                           "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference")
    assert code == 2
    assert "TOGETHER_API_KEY" in err and "Traceback" not in err


def test_fit_with_an_unsupported_parameter_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "fit", SAMPLE, "-p", "openai", "-m", "gpt-4o-mini", "--lora-rank", "8")
    assert code == 2 and "Together AI" in err


def test_console_script_help_starts_without_torch_or_sdks():
    code = ("import sys, runpy; sys.argv = ['tuneproxy', '--help'];\n"
            "try:\n    runpy.run_module('tuneproxy.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'openai', 'together', 'fireworks', 'replicate')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_validate_works_with_torch_unavailable(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            f"sys.argv = ['tuneproxy', 'validate', {str(SAMPLE)!r}, '--provider', 'together', '--json']\n"
            "from tuneproxy.cli import main\nmain()")
    env = {**os.environ, "TUNEPROXY_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stats"]["examples"] == 400


def test_estimate_prints_the_figure_and_its_basis_as_json(capsys):
    code, out, _ = run_cli(capsys, "estimate", SAMPLE, "-p", "openai", "-m", "gpt-4o-mini", "--epochs", "2", "--json")
    data = json.loads(out)
    assert code == 0 and data["billable_tokens"] == 2 * 36_224 and data["authoritative"] is False


def test_fit_option_must_be_key_equals_value(capsys):
    code, _, err = run_cli(capsys, "fit", SAMPLE, "-p", "local", "-m", "smollm2", "-o", "bogus")
    assert code == 2 and "KEY=VALUE" in err


def test_a_broken_holdout_fails_validation_too(capsys):
    code, out, _ = run_cli(capsys, "validate", SAMPLE, "--holdout", BAD / "binary.jsonl", "--json")
    data = json.loads(out)
    assert code == 1 and data["ok"] is True and data["holdout"]["ok"] is False
    assert data["holdout"]["counts"] == {"TP004": 1}


def test_without_the_local_extra_fit_says_how_to_install_it_and_providers_marks_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if `pip install tuneproxy` without [local]
    code, out, _ = run_cli(capsys, "providers", "--json")
    local = {r["name"]: r for r in json.loads(out)}["local"]
    assert code == 0 and local["available"] is False and "pip install 'tuneproxy[local]'" in local["reason"]
    code, _, err = run_cli(capsys, "fit", SAMPLE, "-p", "local", "-m", "smollm2-135m-instruct")
    assert code == 2 and "pip install 'tuneproxy[local]'" in err and "internal error" not in err


def test_a_misspelt_backend_option_names_the_nearest_valid_one(capsys):
    code, _, err = run_cli(capsys, "estimate", SAMPLE, "-p", "together", "-m",
                       "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "-o", "n_eval=2")
    assert code == 2 and "'n_eval' (did you mean 'n_evals'?)" in err


def test_a_backend_option_of_the_wrong_type_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "estimate", SAMPLE, "-p", "together", "-m",
                       "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "-o", "n_evals=many")
    assert code == 2 and "n_evals" in err and "Traceback" not in err


def test_estimate_takes_every_hyperparameter_flag_that_fit_takes(capsys):
    from tuneproxy.contract import Hyperparameters

    for command in ("estimate", "fit"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0
        for name in Hyperparameters.model_fields:
            assert f"--{name.replace('_', '-')}" in out, (command, name)


def test_help_shows_flags_without_a_type(capsys):
    code, out, _ = run_cli(capsys, "jobs", "show", "--help")
    assert code == 0 and "--json" in out and "<bool>" not in out and "BOOLEAN" not in out


def test_a_replayed_command_the_cassette_does_not_hold_is_a_mismatch_not_a_network_error(capsys, monkeypatch):
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(FIXTURES / "cassettes" / "together" / "fit_happy_path.json"))
    code, _, err = run_cli(capsys, "fit", SAMPLE, "-p", "together", "-m",
                       "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "--epochs", "1", "--poll-interval", "0")
    assert code == 3 and "does not match the cassette" in err
    assert "Check the network" not in err and "did not confirm the job" not in err


@pytest.mark.parametrize(("model", "band_usd_per_million"), [
    ("accounts/fireworks/models/deepseek-v3-671b", 10.0),  # not the ≤16B band because "1b" is in "671b"
    ("accounts/fireworks/models/gemma2-27b-it", 3.0),      # not the ≤16B band because "7b" is in "27b"
    ("accounts/fireworks/models/llama-v3p1-8b-instruct", 0.5),
])
def test_fireworks_estimates_use_the_size_band_of_the_whole_parameter_count(capsys, model, band_usd_per_million):
    code, out, _ = run_cli(capsys, "estimate", SAMPLE, "-p", "fireworks", "-m", model, "--epochs", "1", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["usd"] == pytest.approx(data["billable_tokens"] * band_usd_per_million / 1e6)
    assert data["price_source"].startswith("http")


def test_an_option_value_that_looks_like_a_number_stays_text_for_a_text_option(capsys):
    code, out, err = run_cli(capsys, "estimate", SAMPLE, "-p", "together", "-m",
                         "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "-o", "project_id=12345",
                         "-o", "n_evals=2", "--json")
    assert code == 0, err
    assert json.loads(out)["provider"] == "together"
