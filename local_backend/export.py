"""Exporting a succeeded local job's tuned model: the PEFT adapter, a merged model, or (not built) GGUF.

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
- ``gguf``: not built. The ``gguf`` package writes GGUF files but has no HF-to-GGUF converter (tensor
  renaming, the Q/K rotary permutation, the tokenizer's GGUF form per architecture live in llama.cpp's
  ``convert_hf_to_gguf.py``); asking for it is a :class:`ConfigError` saying to export ``merged`` and run
  that script on the folder.

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
GGUF_ADVICE = (
    "GGUF export is not built: the `gguf` package writes GGUF files but cannot convert a Hugging Face model "
    "(llama.cpp's converter does the tensor renaming, rotary permutation and tokenizer conversion). Export "
    "the merged model and convert it with llama.cpp: `tuneproxy export {job} --format merged --out DIR`, then "
    "`python llama.cpp/convert_hf_to_gguf.py DIR --outfile model.gguf --outtype f16` (quantize further with "
    "llama.cpp's `llama-quantize`; `ollama create` takes the .gguf through a Modelfile `FROM ./model.gguf`)."
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
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

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
        base = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
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


def _stored_dtype(location: str) -> Any:
    """The dtype the base's config.json records (None when unknown or not a folder)."""
    import torch

    config = Path(location) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    name = data.get("dtype") or data.get("torch_dtype")
    return getattr(torch, name, None) if isinstance(name, str) else None


def export_job(provider: Any, job_id: str, fmt: str, out: Path, *, force: bool = False) -> ExportResult:
    """Export job ``job_id`` of ``provider`` (a LocalProvider) as ``fmt`` into the folder ``out``."""
    if fmt == "adapter":
        return export_adapter(provider, job_id, out, force=force)
    if fmt == "merged":
        return export_merged(provider, job_id, out, force=force)
    if fmt == "gguf":
        check_out(Path(out).expanduser(), force)
        _job(provider, job_id)
        raise ConfigError(GGUF_ADVICE.format(job=job_id))
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
