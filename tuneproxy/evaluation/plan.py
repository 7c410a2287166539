"""From what a user names to what an evaluation asks: the held-out items of a job, and the systems its
baselines stand for (``base``, ``few-shot:K``, another job's tuned model, an OpenAI-compatible URL).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneproxy import holdouts, registry
from tuneproxy.contract import Deployment, Endpoint
from tuneproxy.dataset.examples import Example
from tuneproxy.dataset.validate import load_examples
from tuneproxy.errors import ConfigError, DatasetError
from tuneproxy.evaluation.evaluate import System
from tuneproxy.evaluation.items import few_shot_examples, to_items
from tuneproxy.evaluation.model import Item

if TYPE_CHECKING:
    from tuneproxy.tuned import TunedModel

BaselineSpec = str | Endpoint


def holdout_items(tuned: TunedModel, holdout: Any = None, slice_by: str | None = None) -> list[Item]:
    """The items to ask: what the job's fit held out, or ``holdout`` (a path or records) minus nothing —
    an example the job trained on is refused, since it would flatter the tuned model."""
    kept = holdouts.load(tuned.record.intent_id) if tuned.record.intent_id else None
    if holdout is None:
        if kept is None or not kept.holdout:
            raise ConfigError(f"Job {tuned.job_id} kept no held-out examples (its fit had no holdout, or ran on "
                              "another machine). Pass the evaluation data: --data FILE / evaluate(holdout=...).")
        return to_items([Example("chat", record) for record in kept.holdout], slice_by)
    examples = load_examples(holdout)
    if kept is not None:
        trained = set(kept.trained)
        overlap = [ex for ex in examples if holdouts.example_id(ex.record) in trained]
        if overlap:
            lines = ", ".join(str(ex.line) for ex in overlap[:10])
            raise DatasetError(f"{len(overlap)} of the {len(examples)} evaluation examples were trained on by job "
                               f"{tuned.job_id} (lines {lines}{'…' if len(overlap) > 10 else ''}): an evaluation "
                               "on them would flatter the tuned model. Evaluate on examples held out of training.")
    return to_items(examples, slice_by)


def training_examples(tuned: TunedModel) -> list[Example]:
    """The examples the job trained on, read back from its data file (for a few-shot baseline)."""
    kept = holdouts.load(tuned.record.intent_id) if tuned.record.intent_id else None
    if kept is not None and kept.training is not None:
        return [Example("chat", record) for record in kept.training]
    if kept is None or kept.data is None or not Path(kept.data).is_file():
        where = f" ({kept.data} is gone)" if kept is not None and kept.data else ""
        raise ConfigError(f"A few-shot baseline draws from job {tuned.job_id}'s training data, which cannot be "
                          f"found{where}. Use the `base` baseline, or evaluate from the machine that ran the fit.")
    trained = set(kept.trained)
    return [ex for ex in load_examples(kept.data) if holdouts.example_id(ex.record) in trained]


def candidate_system(tuned: TunedModel, deployment: Deployment | None = None) -> System:
    """The tuned model as the candidate: served by its backend, or on ``deployment`` when given."""
    endpoint = tuned.endpoint if deployment is None else tuned.deployed_endpoint(deployment)
    return System(name="tuned", kind="tuned", endpoint=endpoint, key=f"{tuned.provider}:{endpoint.model}")


def baseline_systems(tuned: TunedModel | None, specs: Sequence[BaselineSpec],
                     slice_by: str | None = None) -> list[System]:
    """The systems ``specs`` name: ``base``, ``few-shot:K``, a job id from the ledger, ``URL#MODEL`` for an
    OpenAI-compatible server, or an :class:`Endpoint` object."""
    systems: list[System] = []
    for spec in specs:
        system = _baseline(tuned, spec, slice_by)
        if system.name in {s.name for s in systems} or system.name == "tuned":
            raise ConfigError(f"The baseline {system.name!r} is named twice.")
        systems.append(system)
    return systems


def _baseline(tuned: TunedModel | None, spec: BaselineSpec, slice_by: str | None) -> System:
    if isinstance(spec, Endpoint):
        return System(name=spec.model, kind="endpoint", endpoint=spec, key=f"{type(spec).__name__}:{spec.model}")
    if spec == "base" or spec.startswith("few-shot:"):
        if tuned is None:
            raise ConfigError(f"The baseline {spec!r} is the tuned model's base: evaluate a job to use it.")
        base = tuned.base_endpoint
        key = f"{tuned.provider}:{base.model}"
        if spec == "base":
            return System(name="base", kind="base", endpoint=base, key=key)
        count = spec.split(":", 1)[1]
        if not count.isdigit():
            raise ConfigError(f"few-shot:K needs a whole number K, not {count!r} (e.g. few-shot:8).")
        shots = few_shot_examples(training_examples(tuned), int(count), slice_by)
        return System(name=spec, kind="few-shot", endpoint=base, key=key, shots=shots)
    if "#" in spec and spec.split("#", 1)[0].startswith(("http://", "https://")):
        url, model = spec.split("#", 1)
        return url_system(url, model)
    return _job_system(spec)


def url_system(url: str, model: str, name: str | None = None) -> System:
    """An OpenAI-compatible server (vLLM, Ollama, LM Studio, a colleague's) serving ``model``."""
    return System(name=name or model, kind="endpoint", endpoint=registry.url_endpoint(url, model),
                  key=f"{url.rstrip('/')}#{model}")


def _job_system(job_id: str) -> System:
    from tuneproxy.errors import JobNotFound
    from tuneproxy.jobs import Job

    try:
        other = Job.attach(job_id).result()
    except JobNotFound:
        raise ConfigError(f"Unknown baseline {job_id!r}: use base, few-shot:K, a job id from `tuneproxy jobs "
                          "list`, or URL#MODEL for an OpenAI-compatible server.") from None
    return System(name=f"{other.provider}:{job_id}", kind="tuned", endpoint=other.endpoint,
                  key=f"{other.provider}:{other.tuned_model}")
