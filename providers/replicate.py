"""Replicate: data rules and upload format for its language-model LoRA trainers (lifecycle not built yet).

Replicate's trainers take ``{"prompt", "completion"}`` or ``{"text"}`` lines (reference §2.5), so chat
examples are rendered to prompt/completion pairs. Billing is per second of hardware, not per token.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tuneproxy.contract import Capabilities, Credentials, DatasetRules, JobStatus, ParameterSpec
from tuneproxy.dataset.convert import prompt_completion_record, text_record
from tuneproxy.dataset.examples import Example

from ._profile import ProfileOnlyProvider


class ReplicateProvider(ProfileOnlyProvider):
    """Replicate trainings (Llama-family LoRA trainers)."""

    name: ClassVar[str] = "replicate"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        display_name="Replicate",
        credentials=Credentials(env_var="REPLICATE_API_TOKEN", key_pattern=r"r8_[A-Za-z0-9]{8,}"),
        parameters={
            "epochs": ParameterSpec(minimum=1),
            "learning_rate": ParameterSpec(),
            "batch_size": ParameterSpec(minimum=1),
            "lora_rank": ParameterSpec(minimum=1),
            "lora_alpha": ParameterSpec(),
            "lora_dropout": ParameterSpec(minimum=0, maximum=1),
            "seed": ParameterSpec(),
        },
        rules=DatasetRules(
            formats=frozenset({"chat", "completion", "text"}),
            min_examples=1,
            roles=frozenset({"system", "user", "assistant"}),
            default_context_tokens=2048,
        ),
    )
    STATUS_MAP: ClassVar[dict[str, JobStatus]] = {
        "starting": JobStatus.QUEUED,
        "processing": JobStatus.RUNNING,
        "succeeded": JobStatus.SUCCEEDED,
        "failed": JobStatus.FAILED,
        "canceled": JobStatus.CANCELLED,
    }

    def serialize(self, example: Example) -> dict[str, Any]:
        """``{"text"}`` for text examples, ``{"prompt", "completion"}`` for everything else."""
        return text_record(example) if example.format == "text" else prompt_completion_record(example)
