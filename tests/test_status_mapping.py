"""Every documented raw status maps to exactly one JobStatus; anything unseen becomes UNKNOWN, loudly."""

from __future__ import annotations

import warnings
from typing import get_args

import pytest
from tuneproxy.providers.openai import OpenAIProvider
from tuneproxy.providers.together import TogetherProvider

from tuneproxy.contract import JobStatus, UnknownStatusWarning


def openai_documented() -> list[str]:
    from openai.types.fine_tuning import FineTuningJob

    # The SDK enum, plus the two the docs add (pause/resume) that the SDK does not know.
    return [*get_args(FineTuningJob.model_fields["status"].annotation), "pausing", "paused"]


def together_documented() -> list[str]:
    from together.lib.types.fine_tuning import FinetuneJobStatus
    from together.types.finetune_response import FinetuneResponse

    generated = get_args(FinetuneResponse.model_fields["status"].annotation)
    return sorted(set(generated) | {s.value for s in FinetuneJobStatus})


CASES = [(OpenAIProvider, s) for s in openai_documented()] + [
    (TogetherProvider, s) for s in together_documented()
]


@pytest.mark.parametrize(("cls", "raw"), CASES, ids=lambda v: getattr(v, "name", v))
def test_every_documented_status_is_accounted_for(cls: type, raw: str) -> None:
    mapped = raw in cls.STATUS_MAP
    deliberately_unmapped = raw in getattr(cls, "DOCUMENTED_UNMAPPED", frozenset())
    assert mapped != deliberately_unmapped  # exactly one of the two
    if mapped:
        assert isinstance(cls.STATUS_MAP[raw], JobStatus) and cls.STATUS_MAP[raw] is not JobStatus.UNKNOWN


@pytest.mark.parametrize("cls", [OpenAIProvider, TogetherProvider], ids=lambda c: c.name)
def test_mapped_statuses_convert_without_warnings(cls: type) -> None:
    p = cls(api_key="k")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {p.status(raw) for raw in cls.STATUS_MAP} <= set(JobStatus)


@pytest.mark.parametrize("raw", ["paused", "pausing"])
def test_openai_pause_states_become_unknown_with_a_warning(raw: str) -> None:
    with pytest.warns(UnknownStatusWarning, match=raw):
        assert OpenAIProvider(api_key="k").status(raw) is JobStatus.UNKNOWN


def test_an_unseen_together_status_becomes_unknown_with_a_warning() -> None:
    with pytest.warns(UnknownStatusWarning, match="hibernating"):
        assert TogetherProvider(api_key="k").status("hibernating") is JobStatus.UNKNOWN


@pytest.mark.parametrize(
    ("cls", "raw", "expected"),
    [
        (OpenAIProvider, "succeeded", JobStatus.SUCCEEDED),
        (OpenAIProvider, "failed", JobStatus.FAILED),
        (OpenAIProvider, "cancelled", JobStatus.CANCELLED),
        (OpenAIProvider, "validating_files", JobStatus.VALIDATING),
        (TogetherProvider, "completed", JobStatus.SUCCEEDED),
        (TogetherProvider, "error", JobStatus.FAILED),
        (TogetherProvider, "user_error", JobStatus.FAILED),
        (TogetherProvider, "cancelled", JobStatus.CANCELLED),
        (TogetherProvider, "cancel_requested", JobStatus.RUNNING),
        (TogetherProvider, "pending", JobStatus.QUEUED),
    ],
)
def test_terminal_and_in_between_states_map_as_documented(cls: type, raw: str, expected: JobStatus) -> None:
    assert cls(api_key="k").status(raw) is expected
