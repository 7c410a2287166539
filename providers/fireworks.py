"""Fireworks AI: data rules, upload format and prices (the job lifecycle is not built yet).

Sources: ../shared/reference/providers-fireworks-replicate.md §1.5 (dataset format, 3 to 3,000,000
examples, 150 MB through the direct ``:upload`` call) and §4 (prices).
"""

from __future__ import annotations

from typing import Any, ClassVar

from tuneproxy.contract import Capabilities, Credentials, DatasetRules, JobStatus, ParameterSpec
from tuneproxy.dataset.convert import chat_record
from tuneproxy.dataset.examples import Example

from ._profile import ProfileOnlyProvider

MESSAGE_KEYS = frozenset({"role", "content", "weight", "tool_calls", "tool_call_id", "name", "reasoning_content"})


class FireworksProvider(ProfileOnlyProvider):
    """Fireworks AI supervised fine-tuning (LoRA)."""

    name: ClassVar[str] = "fireworks"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        display_name="Fireworks AI",
        credentials=Credentials(env_var="FIREWORKS_API_KEY", key_pattern=r"fw_[A-Za-z0-9]{8,}"),
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
    )
    STATUS_MAP: ClassVar[dict[str, JobStatus]] = {
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
    # A job being deleted, deleted or archived says nothing about how training ended, a paused one is
    # neither running nor finished, and UNSPECIFIED is the protobuf default: shown as unknown, with a warning.
    DOCUMENTED_UNMAPPED: ClassVar[frozenset[str]] = frozenset(
        f"JOB_STATE_{s}" for s in ("UNSPECIFIED", "DELETING", "DELETING_CLEANING_UP", "PAUSED", "DELETED", "ARCHIVED")
    )

    def serialize(self, example: Example) -> dict[str, Any]:
        """Fireworks chat JSONL: ``messages`` (known keys only) and ``tools``."""
        return chat_record(example, MESSAGE_KEYS, frozenset({"tools"}))
