"""Every documented raw status of every registered backend maps to exactly one JobStatus (or is left out on
purpose, in ``DOCUMENTED_UNMAPPED``); anything else becomes UNKNOWN, loudly.

The documented sets come from each SDK's own types where it has them, so a status an SDK release adds fails
here until it is mapped.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Callable
from typing import Any, get_args

import pytest

from tuneproxy import registry
from tuneproxy.contract import JobStatus, Provider, UnknownStatusWarning


def _literals(annotation: Any) -> list[str]:
    """The strings of a ``Literal`` (inside Optional/Union too)."""
    if typing.get_origin(annotation) is typing.Literal:
        return [a for a in get_args(annotation) if isinstance(a, str)]
    return [value for arg in get_args(annotation) for value in _literals(arg)]


def openai_documented() -> set[str]:
    from openai.types.fine_tuning import FineTuningJob

    # The SDK's enum, plus the two the docs add (pause/resume) that the SDK does not know.
    return {*_literals(FineTuningJob.model_fields["status"].annotation), "pausing", "paused"}


def together_documented() -> set[str]:
    from together.lib.types.fine_tuning import FinetuneJobStatus
    from together.types.finetune_response import FinetuneResponse

    return {*_literals(FinetuneResponse.model_fields["status"].annotation), *(s.value for s in FinetuneJobStatus)}


def fireworks_documented() -> set[str]:
    from fireworks.types.supervised_fine_tuning_job import SupervisedFineTuningJob

    # The SDK's JobState, plus the two the REST reference adds for jobs that are gone.
    return {*_literals(SupervisedFineTuningJob.model_fields["state"].annotation),
            "JOB_STATE_DELETED", "JOB_STATE_ARCHIVED"}


def replicate_documented() -> set[str]:
    from replicate.training import Training

    return set(_literals(Training.__annotations__["status"]))  # a pydantic.v1 model


def local_documented() -> set[str]:
    # The local trainer's statuses are its own, written by its processes: queued (provider.submit/resume),
    # loading_model (worker start), running and saving (train.py), cancel_requested (provider.refresh while
    # a cancel file exists), succeeded/failed/cancelled (worker.finish, provider._settle).
    return {"queued", "loading_model", "running", "saving", "cancel_requested", "succeeded", "failed", "cancelled"}


DOCUMENTED: dict[str, Callable[[], set[str]]] = {
    "openai": openai_documented,
    "together": together_documented,
    "fireworks": fireworks_documented,
    "replicate": replicate_documented,
    "local": local_documented,
}

# Written by hand from each service's documentation: every raw status that means the job has ended, and how.
# Every other raw status must map to a state that is not terminal.
TERMINAL: dict[str, dict[str, JobStatus]] = {
    "openai": {"succeeded": JobStatus.SUCCEEDED, "failed": JobStatus.FAILED, "cancelled": JobStatus.CANCELLED},
    "together": {"completed": JobStatus.SUCCEEDED, "error": JobStatus.FAILED, "user_error": JobStatus.FAILED,
                 "cancelled": JobStatus.CANCELLED},
    "fireworks": {"JOB_STATE_COMPLETED": JobStatus.SUCCEEDED, "JOB_STATE_EARLY_STOPPED": JobStatus.SUCCEEDED,
                  "JOB_STATE_FAILED": JobStatus.FAILED, "JOB_STATE_EXPIRED": JobStatus.FAILED,
                  "JOB_STATE_CANCELLED": JobStatus.CANCELLED},
    "replicate": {"succeeded": JobStatus.SUCCEEDED, "failed": JobStatus.FAILED, "canceled": JobStatus.CANCELLED},
    "local": {"succeeded": JobStatus.SUCCEEDED, "failed": JobStatus.FAILED, "cancelled": JobStatus.CANCELLED},
}

# States on the way that are easy to get wrong: a job still stopping is not cancelled yet, a queued one is
# not running, a file check is validation.
IN_BETWEEN: list[tuple[str, str, JobStatus]] = [
    ("openai", "validating_files", JobStatus.VALIDATING),
    ("openai", "queued", JobStatus.QUEUED),
    ("together", "pending", JobStatus.QUEUED),
    ("together", "cancel_requested", JobStatus.RUNNING),
    ("together", "compressing", JobStatus.RUNNING),
    ("fireworks", "JOB_STATE_VALIDATING", JobStatus.VALIDATING),
    ("fireworks", "JOB_STATE_CANCELLING", JobStatus.RUNNING),
    ("fireworks", "JOB_STATE_PENDING", JobStatus.QUEUED),
    ("replicate", "starting", JobStatus.QUEUED),
    ("replicate", "processing", JobStatus.RUNNING),
    ("local", "queued", JobStatus.QUEUED),
    ("local", "cancel_requested", JobStatus.RUNNING),
]

NAMES = registry.names()


def provider(name: str) -> Provider:
    return registry.provider_class(name)(None)


def test_every_registered_provider_has_its_documented_statuses_and_terminal_states_here() -> None:
    assert set(DOCUMENTED) == set(NAMES) == set(TERMINAL)


def documented_cases() -> list[Any]:
    return [pytest.param(name, raw, id=f"{name}:{raw}") for name in NAMES for raw in sorted(DOCUMENTED[name]())]


@pytest.mark.parametrize(("name", "raw"), documented_cases())
def test_every_documented_status_is_mapped_or_deliberately_unmapped(name: str, raw: str) -> None:
    cls = registry.provider_class(name)
    mapped, unmapped = raw in cls.STATUS_MAP, raw in cls.DOCUMENTED_UNMAPPED
    assert mapped != unmapped, f"{name}: {raw!r} must be in exactly one of STATUS_MAP and DOCUMENTED_UNMAPPED"
    if mapped:
        assert cls.STATUS_MAP[raw] is not JobStatus.UNKNOWN


@pytest.mark.parametrize("name", NAMES)
def test_nothing_is_mapped_that_is_not_documented(name: str) -> None:
    cls = registry.provider_class(name)
    assert set(cls.STATUS_MAP) | set(cls.DOCUMENTED_UNMAPPED) <= DOCUMENTED[name]()


@pytest.mark.parametrize("name", NAMES)
def test_terminal_statuses_convert_to_the_documented_outcome(name: str) -> None:
    p = provider(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownStatusWarning)
        assert {raw: p.status(raw) for raw in TERMINAL[name]} == TERMINAL[name]


@pytest.mark.parametrize("name", NAMES)
def test_only_the_terminal_statuses_end_a_job(name: str) -> None:
    ending = {raw for raw, status in registry.provider_class(name).STATUS_MAP.items() if status.terminal}
    assert ending == set(TERMINAL[name])


@pytest.mark.parametrize(("name", "raw", "expected"), IN_BETWEEN, ids=lambda v: getattr(v, "value", v))
def test_states_on_the_way_map_as_documented(name: str, raw: str, expected: JobStatus) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownStatusWarning)
        assert provider(name).status(raw) is expected


def unmapped_cases() -> list[Any]:
    return [pytest.param(name, raw, id=f"{name}:{raw}") for name in NAMES
            for raw in sorted(registry.provider_class(name).DOCUMENTED_UNMAPPED)]


@pytest.mark.parametrize(("name", "raw"), unmapped_cases())
def test_a_documented_but_unmapped_status_is_unknown_with_a_warning(name: str, raw: str) -> None:
    with pytest.warns(UnknownStatusWarning, match=f"{name} reported job status '{raw}'"):
        assert provider(name).status(raw) is JobStatus.UNKNOWN


@pytest.mark.parametrize("name", NAMES)
def test_an_unseen_status_is_unknown_with_a_warning_naming_it(name: str) -> None:
    with pytest.warns(UnknownStatusWarning, match="'hibernating'"):
        assert provider(name).status("hibernating") is JobStatus.UNKNOWN


def test_statuses_are_matched_exactly_not_by_case() -> None:
    with pytest.warns(UnknownStatusWarning):
        assert provider("openai").status("SUCCEEDED") is JobStatus.UNKNOWN
