"""Exporting a succeeded local job's tuned model: the PEFT adapter, a merged model, or GGUF.

- ``adapter``: the job's PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors`` and
  the tokenizer), as vLLM (``--lora-modules``) and transformers/peft (``PeftModel.from_pretrained``) load it.
  Its ``base_model_name_or_path`` names the base the adapter was trained on, as a location that
  ``from_pretrained`` loads: the model folder, the hub id, or — for a ``.gguf`` base such as the bundled
  SmolLM2 — the plain (dequantized) folder the backend made from it under ``<home>/models/``. A README.md in
  the folder says which.
- ``merged``: the base with the adapter merged in (``merge_and_unload``), saved as safetensors with the
  tokenizer, loadable by ``AutoModelForCausalLM.from_pretrained``. The merge always runs on a base loaded in
  full precision (float32, on the CPU): an adapter trained on a 4-bit (nf4) base is merged into the
  unquantized weights that base was quantized from, because 4-bit weights cannot take the update exactly.
- ``gguf``: for a job whose base was itself read from a llama-architecture ``.gguf`` file (the bundled
  SmolLM2 is one): ``model.gguf``, a copy of that file's metadata (architecture, tokenizer, chat template...)
  whose tensors are the ``merged`` model's weights, renamed and Q/K-permuted back into llama.cpp's layout
  (the exact inverse of what transformers undoes when it loads a llama GGUF), written F16 with 1-D norms in
  F32. Any other base is a :class:`ConfigError` saying to export ``merged`` and run llama.cpp's
  ``convert_hf_to_gguf.py`` on it: the tokenizer's GGUF form and the per-architecture tensor rules live there.

Nothing is written at ``out`` until the export is complete: it is staged beside it and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneproxy.contract import JobStatus
from tuneproxy.errors import ConfigError
from tuneproxy.local_backend import models
from tuneproxy.local_backend.jobfiles import ADAPTER_DIR

Format = Literal["adapter", "merged", "gguf"]
FORMATS: tuple[str, ...] = ("adapter", "merged", "gguf")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
GGUF_FILE = "model.gguf"
GGUF_ARCHITECTURES = ("llama",)
GGUF_ADVICE = (
    "Export the merged model and convert it with llama.cpp: `tuneproxy export {job} --format merged --out DIR`, "
    "then `python llama.cpp/convert_hf_to_gguf.py DIR --outfile model.gguf --outtype f16` (quantize further with "
    "llama.cpp's `llama-quantize`; `ollama create` takes the .gguf through a Modelfile `FROM ./model.gguf`)."
)
GGUF_NOT_FROM_GGUF = (
    "GGUF export is built for a job whose base was read from a .gguf file (as the bundled smollm2-135m-instruct "
    "is); this job's base {model} is a {kind}. Converting a Hugging Face model to GGUF needs llama.cpp's "
    "converter (tensor renaming, the rotary permutation and the tokenizer's GGUF form, per architecture). "
)
GGUF_NOT_LLAMA = (
    "GGUF export is built for the llama architecture only; this job's base {path} is {arch!r} (another "
    "architecture's tensors need llama.cpp's own conversion rules). "
)


@dataclass
class ExportResult:
    """What an export wrote: the folder, its format, what the adapter's base is, and notes for the user."""

    path: Path
    format: str
    base: str
    notes: list[str] = field(default_factory=list)


def check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder unless ``force``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; pass a folder path with --out.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not empty; pass --force to replace it, or choose another --out.")


def _job(provider: Any, job_id: str) -> tuple[Any, dict[str, Any], Path]:
    """(record, settings, adapter folder) of a succeeded job; a clear error otherwise."""
    record = provider.refresh(job_id)
    if record.status != JobStatus.SUCCEEDED:
        raise ConfigError(f"Job {job_id} is {record.raw_status}; only a succeeded job has a model to export.")
    files = provider._files(job_id)
    adapter = files.path(ADAPTER_DIR)
    if not all((adapter / name).is_file() for name in ADAPTER_FILES):
        raise ConfigError(f"Job {job_id} has no complete adapter at {adapter}; it cannot be exported.")
    return record, files.job()["settings"], adapter


def base_location(model: str, home: Path) -> tuple[str, str]:
    """A location ``from_pretrained`` loads for the base ``model``, and a sentence saying what it is."""
    source = models.resolve(model)
    location = models.materialize(source, home)
    if source.kind == "gguf":
        bundled = model.strip().lower() in models.BUNDLED_ALIASES
        what = ("the bundled SmolLM2-135M-Instruct GGUF (Q4_1)" if bundled else f"the GGUF file {source.location}")
        note = (f"The adapter was trained on {what}, which vLLM and peft cannot take as an adapter's base. "
                f"base_model_name_or_path points at the plain Hugging Face folder tuneproxy dequantized it into, "
                f"on this machine: {location}. Copy that folder along with this one (and fix the path in "
                "adapter_config.json), or export --format merged for a self-contained model.")
        if bundled:
            note += (" HuggingFaceTB/SmolLM2-135M-Instruct on the hub is the full-precision original: close, but "
                     "not the weights this adapter was trained against.")
        return location, note
    if source.kind == "hub":
        return location, f"base_model_name_or_path is the hub id {location}, the base the adapter was trained on."
    return location, f"base_model_name_or_path is the model folder {location} the adapter was trained on."


def _staging(out: Path) -> Path:
    staging = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out`` (replacing what ``check_out`` allowed)."""
    if out.is_dir():
        shutil.rmtree(out)
    os.replace(staging, out)


def _readme(job_id: str, fmt: str, lines: list[str]) -> str:
    return "\n\n".join([f"# local:{job_id} ({fmt} export by tuneproxy)", *lines]) + "\n"


def export_adapter(provider: Any, job_id: str, out: Path, *, force: bool = False) -> ExportResult:
    """Copy the job's PEFT adapter to ``out``, its base named as a loadable location; README.md says which."""
    out = Path(out).expanduser()
    check_out(out, force)
    _, settings, adapter = _job(provider, job_id)
    location, note = base_location(settings["model"], provider.home)
    staging = _staging(out)
    try:
        shutil.copytree(adapter, staging)
        config_path = staging / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = location
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        use = (f"Load it with peft: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "
               f"\"{out}\")`; serve it with vLLM: `vllm serve BASE --enable-lora --lora-modules "
               f"local:{job_id}={out}` (BASE = {location}).")
        (staging / "README.md").write_text(_readme(job_id, "adapter", [
            f"PEFT LoRA adapter tuned by tuneproxy's local backend from `{settings['model']}` "
            f"(quantization {settings.get('quantization')}).", note, use]))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, "adapter", location, [note])


def export_merged(provider: Any, job_id: str, out: Path, *, force: bool = False) -> ExportResult:
    """Merge the adapter into the base (loaded in full precision on the CPU) and save model and tokenizer."""
    import torch

    out = Path(out).expanduser()
    check_out(out, force)
    _, settings, adapter = _job(provider, job_id)
    location, _ = base_location(settings["model"], provider.home)
    notes = []
    if settings.get("quantization") == "nf4":
        notes.append("The adapter was trained on a 4-bit (nf4) base; it was merged into the full-precision base "
                     "weights the 4-bit ones were quantized from (4-bit weights cannot take the update exactly), so "
                     "the merged model's outputs are close to, not identical with, the QLoRA model's.")
    staging = _staging(out)
    try:
        merged = _merged_model(location, adapter)
        stored = _stored_dtype(location)
        if stored in (torch.float16, torch.bfloat16):  # merged in float32, saved at the base's own precision
            merged = merged.to(stored)
        merged.save_pretrained(staging, safe_serialization=True)
        models.load_tokenizer(str(adapter)).save_pretrained(staging)
        (staging / "README.md").write_text(_readme(job_id, "merged", [
            f"`{settings['model']}` with the LoRA adapter of local:{job_id} merged in (peft merge_and_unload). "
            "Load it with `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained("
            "folder)`, or serve it with `vllm serve folder`.", *notes,
            "For llama.cpp/Ollama convert this folder with llama.cpp's `convert_hf_to_gguf.py`."]))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, "merged", location, notes)


def _merged_model(location: str, adapter: Path) -> Any:
    """The base at ``location``, loaded in float32 on the CPU, with the adapter at ``adapter`` merged in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    with models.peft_quietly():
        return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def _stored_dtype(location: str) -> Any:
    """The dtype the base's config.json records (None when unknown or not a folder)."""
    import torch

    config = Path(location) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    name = data.get("dtype") or data.get("torch_dtype")
    return getattr(torch, name, None) if isinstance(name, str) else None


def export_gguf(provider: Any, job_id: str, out: Path, *, force: bool = False) -> ExportResult:
    """Write the merged model as ``model.gguf``: the base's own GGUF file (metadata, tokenizer, chat template)
    with its tensors replaced by the merged weights at F16. Only a job whose base was a llama ``.gguf`` file."""
    out = Path(out).expanduser()
    check_out(out, force)
    _, settings, adapter = _job(provider, job_id)
    source, reader = _gguf_base(settings["model"], job_id)
    location, _ = base_location(settings["model"], provider.home)
    staging = _staging(out)
    try:
        merged = _merged_model(location, adapter)
        staging.mkdir()
        copied = _write_gguf(reader, merged, staging / GGUF_FILE, tuned=f"local:{job_id}")
        notes = [f"Copied unchanged from the source GGUF (the merged model has no such tensor): {', '.join(copied)}."
                 ] if copied else []
        (staging / "README.md").write_text(_readme(job_id, "gguf", [
            f"`{GGUF_FILE}`: `{settings['model']}` with the LoRA adapter of local:{job_id} merged in (peft "
            f"merge_and_unload, in float32), written as GGUF in F16 (1-D norm weights in F32). Everything else is "
            f"the source GGUF's own, copied unchanged: {source} (architecture, tokenizer, chat template; "
            "general.name notes the tuning and general.file_type says F16).",
            *notes,
            "Run it with llama.cpp: `llama-cli -m model.gguf` or `llama-server -m model.gguf`. Ollama: a "
            "Modelfile with `FROM ./model.gguf`, then `ollama create NAME -f Modelfile`. It is not quantized: "
            "`llama-quantize model.gguf model.Q4_K_M.gguf Q4_K_M` shrinks it."]))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, "gguf", str(source), notes)


def _gguf_base(model: str, job_id: str) -> tuple[Path, Any]:
    """The llama ``.gguf`` file the base ``model`` was read from, and a ``gguf.GGUFReader`` of it; for any other
    base, a clear error saying what to run instead."""
    source = models.resolve(model)
    advice = GGUF_ADVICE.format(job=job_id)
    if source.kind != "gguf":
        kind = "Hugging Face model folder" if source.kind == "folder" else "hub id"
        raise ConfigError(GGUF_NOT_FROM_GGUF.format(model=model, kind=kind) + advice)
    models.require_gguf()
    import gguf

    try:
        reader = gguf.GGUFReader(source.location)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Could not read the base's GGUF file {source.location}: {exc}") from None
    stated = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    arch = stated.contents() if stated is not None else None
    if arch not in GGUF_ARCHITECTURES:
        raise ConfigError(GGUF_NOT_LLAMA.format(path=source.location, arch=arch) + advice)
    return Path(source.location), reader


def _write_gguf(reader: Any, merged: Any, path: Path, *, tuned: str) -> list[str]:
    """Write ``path``: ``reader``'s fields and tensor order, with each tensor the merged model has replaced by
    its merged weights. Returns the names of the source tensors copied unchanged (none the model has)."""
    import gguf

    weights = _gguf_weights(merged)
    names = {tensor.name for tensor in reader.tensors}
    for name in weights.keys() - names:
        if not (name == "output.weight" and merged.config.tie_word_embeddings):  # tied: llama.cpp writes none
            raise ConfigError(f"The merged model has the tensor {name} that the source GGUF lacks; a GGUF copying "
                              "the source's layout cannot hold it. Export --format merged instead.")
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _copy_fields(reader, writer, tuned)
    copied = []
    for tensor in reader.tensors:
        if tensor.name in weights:
            array = weights[tensor.name]
            if tuple(int(n) for n in reversed(tensor.shape)) != array.shape:
                raise ConfigError(f"The merged {tensor.name} has shape {array.shape}, the source GGUF's "
                                  f"{tuple(reversed(tensor.shape.tolist()))}; they are not the same model.")
            writer.add_tensor(tensor.name, array)
        else:
            copied.append(tensor.name)
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type,
                              tensor_endianess=reader.endianess)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return copied


def _copy_fields(reader: Any, writer: Any, tuned: str) -> None:
    """Every key/value of the source, but the architecture (the writer's own), the file type (now F16) and the
    name (noting the tuning)."""
    import gguf

    general = gguf.Keys.General
    for entry in reader.fields.values():
        if entry.name.startswith("GGUF.") or entry.name in (general.ARCHITECTURE, general.FILE_TYPE, general.NAME):
            continue
        if entry.name == general.ALIGNMENT:  # the writer must also pad the tensor data to it
            writer.add_custom_alignment(entry.contents())
            continue
        kind = entry.types[0]
        sub_type = entry.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(entry.name, entry.contents(), kind, sub_type=sub_type)
    name = reader.fields.get(general.NAME)
    writer.add_name(f"{name.contents()} (tuned: {tuned})" if name is not None else f"tuned: {tuned}")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def _gguf_weights(merged: Any) -> dict[str, Any]:
    """The merged model's weights as llama.cpp lays them out: GGUF names (gguf's own name map), Q and K rows
    permuted for its rotary embedding (the inverse of transformers' reverse permutation on load), F16 but for
    1-D tensors (norms), kept F32."""
    import gguf
    import numpy as np

    config = merged.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    weights = {}
    for hf_name, tensor in merged.state_dict().items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(f"The merged model's tensor {hf_name} has no llama GGUF name; it cannot be written as "
                              "GGUF. Export --format merged instead.")
        array = tensor.detach().to("cpu").float().numpy()
        if ".attn_q." in name:
            array = _rotary_permute(array, config.num_attention_heads)
        elif ".attn_k." in name:
            array = _rotary_permute(array, config.num_key_value_heads)
        if array.ndim > 1:
            array = array.astype(np.float16)
            if not np.isfinite(array).all():
                raise ConfigError(f"The merged {hf_name} has values beyond float16's range; it cannot be written "
                                  "as F16 GGUF.")
        weights[name] = array
    return weights


def _rotary_permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's Q/K row order: within each head, the two rotary halves interleaved (what its converter's
    ``permute`` does and transformers' ``_reverse_permute_weights`` undoes)."""
    half = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def export_job(provider: Any, job_id: str, fmt: str, out: Path, *, force: bool = False) -> ExportResult:
    """Export job ``job_id`` of ``provider`` (a LocalProvider) as ``fmt`` into the folder ``out``."""
    if fmt == "adapter":
        return export_adapter(provider, job_id, out, force=force)
    if fmt == "merged":
        return export_merged(provider, job_id, out, force=force)
    if fmt == "gguf":
        return export_gguf(provider, job_id, out, force=force)
    raise ConfigError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")


def export_from_ledger(job_id: str, fmt: str, out: Path, *, force: bool = False, console: Any = None) -> ExportResult:
    """``tuneproxy export``: export the ledger's local job ``job_id`` (id or unique prefix) and say on
    ``console`` (a rich Console) what was written. An unknown format, a non-empty ``out`` without
    ``force``, an unknown job, a job of another provider or one that did not succeed is a clear error."""
    from tuneproxy.jobs import Job
    from tuneproxy.ledger import Ledger

    if fmt not in FORMATS:
        raise ConfigError(f"Unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    out = Path(out).expanduser()
    check_out(out, force)
    known = Ledger().job(job_id)
    if known.provider != "local":
        raise ConfigError(f"Job {known.job_id} ran on {known.provider}; `tuneproxy export` exports local jobs only "
                          "(a managed service's tuned model stays with that service).")
    job = Job.attach(known.job_id)
    job.refresh()
    result = export_job(job.provider, known.job_id, fmt, out, force=force)
    if console is not None:
        console.print(f"Exported local:{known.job_id} ({result.format}) to {result.path}", highlight=False,
                      soft_wrap=True)
        for note in result.notes:
            console.print(note, highlight=False, soft_wrap=True)
    return result
