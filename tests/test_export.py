"""`tuneproxy export`: a tiny base model's adapter, trained for 2 steps by a real local job, exported as a PEFT
folder (loaded back with peft) and as a merged model (loaded back with transformers); GGUF is refused with
what to run instead; bad input is a clear message and exit status 2."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli
from tests.local_helpers import (
    make_job_folder,
    ticket_records,
    trained_tiny_adapter,
)
from tuneproxy.contract import JobRecord, JobStatus

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from tuneproxy.errors import ConfigError  # noqa: E402
from tuneproxy.ledger import Ledger  # noqa: E402
from tuneproxy.local_backend import export as export_module  # noqa: E402
from tuneproxy.local_backend.export import export_adapter, export_job, export_merged  # noqa: E402

PROMPTS = [r["messages"][:2] for r in ticket_records(3, seed=9)]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base model and a provider holding one succeeded job whose adapter trained for 2 steps."""
    provider, model_dir, record = trained_tiny_adapter(tmp_path_factory.mktemp("export"), "export-1",
                                                       learning_rate=5e-2)
    return provider, model_dir, record.job_id


@pytest.fixture(scope="module")
def endpoint_answers(trained):
    """The local backend's own greedy answers for the tuned model."""
    provider, _, job_id = trained
    endpoint = provider.endpoint(f"local:{job_id}")
    return [endpoint.complete(p, max_tokens=MAX_TOKENS, temperature=0).text for p in PROMPTS]


def greedy(model, tokenizer, messages):
    """What LocalEndpoint answers at temperature 0: generated text up to the end-of-turn token, stripped."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    row = out[0, enc["input_ids"].shape[1]:].tolist()
    if tokenizer.eos_token_id in row:
        row = row[:row.index(tokenizer.eos_token_id) + 1]
    return tokenizer.decode(row, skip_special_tokens=True).strip()


def logits(model, tokenizer, messages):
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


@pytest.fixture(scope="module")
def adapter_export(trained, tmp_path_factory):
    provider, _, job_id = trained
    out = tmp_path_factory.mktemp("exports") / "adapter"
    return export_adapter(provider, job_id, out)


@pytest.fixture(scope="module")
def peft_model(adapter_export):
    """The exported adapter on its base, loaded with plain transformers + peft (not merged)."""
    config = json.loads((adapter_export.path / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_export.path)).eval()
    return model, AutoTokenizer.from_pretrained(str(adapter_export.path))


def test_the_adapter_export_is_a_peft_folder_naming_its_loadable_base(adapter_export, trained):
    _, model_dir, _ = trained
    folder = adapter_export.path
    assert (folder / "adapter_model.safetensors").is_file()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert config["base_model_name_or_path"] == str(model_dir.resolve()) == adapter_export.base
    readme = (folder / "README.md").read_text()
    assert str(model_dir.resolve()) in readme and "vllm serve" in readme


def test_the_adapter_loaded_with_peft_answers_as_the_local_endpoint_does(peft_model, endpoint_answers):
    model, tokenizer = peft_model
    assert [greedy(model, tokenizer, p) for p in PROMPTS] == endpoint_answers
    assert any(endpoint_answers)  # something was generated


def test_the_merged_export_loads_with_transformers_and_matches_the_adapter_on_its_base(
        trained, peft_model, endpoint_answers, tmp_path):
    provider, _, job_id = trained
    result = export_merged(provider, job_id, tmp_path / "merged")
    folder = result.path
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not (folder / "adapter_config.json").exists() and result.notes == []  # plain LoRA: nothing to note
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    adapted, _ = peft_model
    for prompt in PROMPTS:
        torch.testing.assert_close(logits(merged, tokenizer, prompt), logits(adapted, tokenizer, prompt),
                                   rtol=1e-4, atol=1e-4)
    assert [greedy(merged, tokenizer, p) for p in PROMPTS] == endpoint_answers
    # and the adapter did change the base: the merged weights are not the base's
    base = AutoModelForCausalLM.from_pretrained(str(trained[1]))
    assert not torch.equal(base.model.layers[0].self_attn.q_proj.weight, merged.model.layers[0].self_attn.q_proj.weight)


def test_a_4bit_trained_adapter_is_merged_into_the_full_precision_base_and_says_so(trained, tmp_path, monkeypatch):
    provider, _, job_id = trained
    real_job = export_module._job

    def as_if_nf4(provider, job_id):
        record, settings, adapter = real_job(provider, job_id)
        return record, {**settings, "quantization": "nf4"}, adapter

    monkeypatch.setattr(export_module, "_job", as_if_nf4)
    result = export_merged(provider, job_id, tmp_path / "merged")
    assert "full-precision" in result.notes[0] and "4-bit" in (result.path / "README.md").read_text()


def test_gguf_is_refused_with_what_to_run_instead(trained, tmp_path):
    provider, _, job_id = trained
    with pytest.raises(ConfigError, match="convert_hf_to_gguf.py") as caught:
        export_job(provider, job_id, "gguf", tmp_path / "gguf")
    assert "--format merged" in str(caught.value) and not (tmp_path / "gguf").exists()


def test_a_bundled_gguf_base_is_named_by_its_dequantized_folder_with_a_note(monkeypatch, tmp_path):
    from tuneproxy.local_backend import models
    from tuneproxy.local_backend.models import ModelSource

    monkeypatch.setattr(models, "resolve", lambda name: ModelSource(name, "gguf", "/wheel/SmolLM2.Q4_1.gguf"))
    monkeypatch.setattr(models, "materialize", lambda source, home: str(home / "models" / "SmolLM2-plain"))
    location, note = export_module.base_location("smollm2-135m-instruct", tmp_path)
    assert location == str(tmp_path / "models" / "SmolLM2-plain")
    assert location in note and "vLLM" in note and "HuggingFaceTB/SmolLM2-135M-Instruct" in note


# the command ---------------------------------------------------------------------------------------------


@pytest.fixture
def ledger_home(trained, monkeypatch):
    """TUNEPROXY_HOME whose ledger knows the trained job (its job area is this home's local/)."""
    provider, _, job_id = trained
    monkeypatch.setenv("TUNEPROXY_HOME", str(provider.home.parent))
    Ledger().save_job(provider.refresh(job_id))
    return provider.home.parent


def test_export_command_writes_the_adapter_and_says_where(ledger_home, trained, tmp_path, capsys):
    job_id = trained[2]
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "export", job_id, "--format", "adapter", "--out", out)
    assert code == 0, err
    assert (out / "adapter_model.safetensors").is_file() and str(out) in stdout.replace("\n", "")


def test_export_command_refuses_a_non_empty_out_unless_forced(ledger_home, trained, tmp_path, capsys):
    job_id, out = trained[2], tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", job_id, "--format", "adapter", "--out", out)
    assert code == 2 and "not empty" in err and "--force" in err and (out / "keep.txt").exists()
    code, _, err = run_cli(capsys, "export", job_id, "--format", "adapter", "--out", out, "--force")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "adapter_config.json").is_file()


def test_export_command_gguf_says_what_to_run_instead(ledger_home, trained, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", trained[2], "--format", "gguf", "--out", tmp_path / "g")
    assert code == 2 and "convert_hf_to_gguf.py" in err.replace("\n", "") and "Traceback" not in err


def test_export_command_refuses_an_unknown_job(ledger_home, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", "no-such-job", "--format", "adapter", "--out", tmp_path / "o")
    assert code == 2 and "no-such-job" in err and "Traceback" not in err


def test_export_command_refuses_an_unknown_format(ledger_home, trained, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", trained[2], "--format", "onnx", "--out", tmp_path / "o")
    assert code == 2 and "onnx" in err and "adapter, merged, gguf" in err


def test_export_command_refuses_a_job_of_another_provider(ledger_home, tmp_path, capsys):
    Ledger().save_job(JobRecord(provider="openai", job_id="ftjob-export", base_model="gpt-4o-mini",
                                status=JobStatus.SUCCEEDED, raw_status="succeeded", tuned_model="ft:x"))
    code, _, err = run_cli(capsys, "export", "ftjob-export", "--format", "adapter", "--out", tmp_path / "o")
    assert code == 2 and "openai" in err and "local jobs only" in err.replace("\n", " ")


def test_export_command_refuses_a_job_that_did_not_succeed(ledger_home, trained, tmp_path, capsys):
    provider = trained[0]
    make_job_folder(provider.home, "ljob-failed-1", raw_status="failed", error="boom",
                    finished_at="2026-11-01T00:01:00+00:00")
    Ledger().save_job(provider.refresh("ljob-failed-1"))
    code, _, err = run_cli(capsys, "export", "ljob-failed-1", "--format", "merged", "--out", tmp_path / "o")
    assert code == 2 and "failed" in err and "succeeded" in err and not (tmp_path / "o").exists()
