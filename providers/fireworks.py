"""Fireworks AI: data rules, upload format and prices (the job lifecycle is not built yet).

Sources: ../shared/reference/providers-fireworks-replicate.md §1.5 (dataset format, 3 to 3,000,000
examples, 150 MB through the direct ``:upload`` call) and §4 (prices).
"""

from __future__ import annotations

from typing import Any, ClassVar

from tuneproxy.providers._profile import ProfileOnlyProvider

from tuneproxy.contract import Capabilities, DatasetRules, JobStatus, ParameterSpec
from tuneproxy.dataset.convert import chat_record
from tuneproxy.dataset.examples import Example

MESSAGE_KEYS = frozenset({"role", "content", "weight", "tool_calls", "tool_call_id", "name", "reasoning_content"})


class FireworksProvider(ProfileOnlyProvider):
    """Fireworks AI supervised fine-tuning (LoRA)."""

    name = "fireworks"
    capabilities = Capabilities(
        display_name="Fireworks AI",
        env_key="FIREWORKS_API_KEY",
        parameters={
            "epochs": ParameterSpec(minimum=1),
            "learning_rate": ParameterSpec(),
            "batch_size": ParameterSpec(minimum=1),
            "lora_rank": ParameterSpec(minimum=1, maximum=64, note="power of 2"),
            "max_seq_length": ParameterSpec(),
            "warmup_ratio": ParameterSpec(minimum=0, maximum=1),
        },
        rules=DatasetRules(
            formats=frozenset({"chat"}),
            min_examples=3,
            max_examples=3_000_000,
            max_file_bytes=150 * 1024 * 1024,
            upload_path="the direct dataset upload (150 MB)",
            roles=frozenset({"system", "user", "assistant", "tool"}),
            message_keys=MESSAGE_KEYS,
            weight_roles=frozenset({"system", "user", "assistant", "tool"}),
            system_only_first=True,
            default_context_tokens=32768,
        ),
        price_per_million_training_tokens={"8b": 0.50, "7b": 0.50, "3b": 0.50, "1b": 0.50, "70b": 3.00},
        prices_as_of="2026-10-08 (third-party capture of fireworks.ai/pricing)",
    )
    STATUS_MAP: ClassVar = {
        **{f"JOB_STATE_{s}": JobStatus.QUEUED for s in
           ("CREATING", "PENDING", "RE_QUEUEING", "CREATING_INPUT_DATASET", "IDLE")},
        "JOB_STATE_VALIDATING": JobStatus.VALIDATING,
        "JOB_STATE_RUNNING": JobStatus.RUNNING,
        "JOB_STATE_WRITING_RESULTS": JobStatus.RUNNING,
        "JOB_STATE_COMPLETED": JobStatus.SUCCEEDED,
        "JOB_STATE_EARLY_STOPPED": JobStatus.SUCCEEDED,
        "JOB_STATE_FAILED": JobStatus.FAILED,
        "JOB_STATE_EXPIRED": JobStatus.FAILED,
        "JOB_STATE_CANCELLED": JobStatus.CANCELLED,
        "JOB_STATE_CANCELLING": JobStatus.RUNNING,
    }

    def serialize(self, example: Example) -> dict[str, Any]:
        """Fireworks chat JSONL: ``messages`` (known keys only) and ``tools``."""
        return chat_record(example, MESSAGE_KEYS, frozenset({"tools"}))
