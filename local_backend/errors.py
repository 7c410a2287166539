"""Errors the local backend raises on purpose; each is a :class:`~tuneproxy.errors.TuneproxyError`."""

from __future__ import annotations

from tuneproxy.errors import ConfigError


class ModelNotFound(ConfigError):
    """The model name is neither a local folder, a GGUF file, a known alias nor a reachable hub id."""


class MissingDependency(ConfigError):
    """A package the local backend needs for this model or setting is not installed."""


class WillNotFit(ConfigError):
    """The memory estimate for the run is larger than the memory this machine has."""


class UnknownTargetModule(ConfigError):
    """A LoRA target module name matches no linear layer of the model."""


class TemplateError(ConfigError):
    """The tokenizer's chat template cannot be used to find the assistant tokens."""
