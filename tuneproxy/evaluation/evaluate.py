"""One evaluation, start to end: ask every system every item, score the answers, compare the candidate
with each baseline per slice (and, when a pairwise judge is given, have it pick the better answer of each
pair), and gather it all in an :class:`EvalReport`.

The systems are :class:`System` s: an :class:`~tuneproxy.contract.Endpoint` and how to ask it (a few-shot
baseline is its base endpoint with training examples shown first). Nothing here names a service.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tuneproxy.contract import Endpoint, GenerationParams, JobEvent, run_blocking, utc_now
from tuneproxy.dataset.examples import Example
from tuneproxy.evaluation.compare import NO_VALUE, compare
from tuneproxy.evaluation.items import with_shots
from tuneproxy.evaluation.model import (
    OVERALL,
    Answer,
    EvalReport,
    Item,
    LossPoint,
    PairwiseResult,
    Score,
    SystemInfo,
)
from tuneproxy.evaluation.runner import Runner
from tuneproxy.evaluation.scorers import PairwiseJudge, Scorer
from tuneproxy.holdouts import example_id


@dataclass
class System:
    """A system to evaluate: its report name, the endpoint that answers for it, and the cache identity of
    that endpoint (``key``: the same key and generation settings reuse the answers already received)."""

    name: str
    kind: Literal["tuned", "base", "few-shot", "endpoint"]
    endpoint: Endpoint
    key: str
    shots: Sequence[Example] = field(default_factory=tuple)

    @property
    def cache_key(self) -> str:
        if not self.shots:
            return self.key
        shown = hashlib.sha256("|".join(example_id(ex.record) for ex in self.shots).encode()).hexdigest()[:12]
        return f"{self.key}|shots:{shown}"

    def ask(self, item: Item) -> Item:
        """The item as this system is asked it (with the shots in front, for a few-shot baseline)."""
        return item.model_copy(update={"messages": with_shots(item, self.shots)}) if self.shots else item


@dataclass
class Evaluation:
    """How to evaluate: the candidate, the baselines, the items and the scorers, and the run's settings."""

    candidate: System
    baselines: Sequence[System]
    items: Sequence[Item]
    scorers: Sequence[Scorer]
    runner: Runner
    slice_by: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    job_id: str | None = None
    events: Sequence[JobEvent] = ()
    resamples: int = 10_000
    seed: int = 0
    pairwise: PairwiseJudge | None = None

    def run(self) -> EvalReport:
        """Blocking twin of :meth:`arun` (works inside a running event loop too)."""
        return run_blocking(self.arun())

    async def arun(self) -> EvalReport:
        systems = [self.candidate, *self.baselines]
        answers: dict[str, list[Answer]] = {}
        for system in systems:  # one system at a time: each endpoint gets the runner's whole concurrency
            asked = [system.ask(item) for item in self.items]
            answers[system.name] = await self.runner.arun(system.name, system.endpoint, system.cache_key, asked,
                                                          self.params)
        scores = await self._score(answers)
        by_key = {(a.system, a.item_id): a for listed in answers.values() for a in listed}
        results, flips, verdicts, warnings = compare(
            self.items, scores, candidate=self.candidate.name, baselines=[b.name for b in self.baselines],
            binary={s.name: s.binary for s in self.scorers}, slice_by=self.slice_by, answers=by_key,
            resamples=self.resamples, seed=self.seed)
        pairwise, unjudged = await self._pairwise(answers)
        return EvalReport(
            created_at=utc_now().astimezone(dt.timezone.utc), job_id=self.job_id, candidate=self.candidate.name,
            systems=[self._info(system, answers[system.name]) for system in systems],
            scorers=[s.name for s in self.scorers], slice_by=self.slice_by, items=len(self.items),
            results=results, aggregates=self._aggregates(answers), flips=flips, verdicts=verdicts,
            pairwise=pairwise, warnings=warnings + self._failures(answers) + unjudged,
            loss_curve=loss_curve(self.events))

    async def _score(self, answers: dict[str, list[Answer]]) -> list[Score]:
        items = {item.id: item for item in self.items}
        scores: list[Score] = []
        for scorer in self.scorers:
            for listed in answers.values():
                scores += await scorer.ascore_many(listed, items)
        return scores

    async def _pairwise(self, answers: dict[str, list[Answer]]) -> tuple[list[PairwiseResult], list[str]]:
        """The judge's verdicts on the candidate's answers against each baseline's, per slice, and a warning
        per baseline with items it could not judge."""
        if self.pairwise is None:
            return [], []
        items = {item.id: item for item in self.items}
        results: list[PairwiseResult] = []
        warnings: list[str] = []
        try:
            for baseline in self.baselines:
                scores = await self.pairwise.acompare_many(items, answers[self.candidate.name],
                                                           answers[baseline.name], self.runner.concurrency)
                results += pairwise_results(self.items, scores, candidate=self.candidate.name,
                                            baseline=baseline.name, criteria=self.pairwise.criteria,
                                            slice_by=self.slice_by)
                failed = [s for s in scores if s.value is None]
                if failed:
                    warnings.append(f"pairwise vs {baseline.name}: {len(failed)} of {len(scores)} items not judged "
                                    f"(left out of its counts); the first error: {failed[0].detail.get('error')}.")
        finally:
            await self.pairwise.endpoint.aclose()
        return results, warnings

    def _aggregates(self, answers: dict[str, list[Answer]]) -> dict[str, dict[str, dict[str, float]]]:
        """Each scorer's dataset-level figures per system (macro-F1, per-field F1); a scorer without any, or
        a system it has none for, is left out."""
        items = {item.id: item for item in self.items}
        figures: dict[str, dict[str, dict[str, float]]] = {}
        for scorer in self.scorers:
            per_system = {name: found for name, listed in answers.items()
                          if (found := scorer.aggregate([(a, items[a.item_id]) for a in listed]))}
            if per_system:
                figures[scorer.name] = per_system
        return figures

    def _info(self, system: System, answers: list[Answer]) -> SystemInfo:
        answered = [a for a in answers if a.ok]
        priced = all(a.cost_usd is not None for a in answered) and bool(answered)
        cost = sum(a.cost_usd or 0.0 for a in answered) if priced else None
        return SystemInfo(name=system.name, model=system.endpoint.model, kind=system.kind, answered=len(answered),
                          failed=len(answers) - len(answered), cost_usd=cost,
                          cost_per_1000=None if cost is None else cost / len(answered) * 1000,
                          generation=self.params.model_dump(mode="json"))

    @staticmethod
    def _failures(answers: dict[str, list[Answer]]) -> list[str]:
        lines = []
        for name, listed in answers.items():
            failed = [a for a in listed if not a.ok]
            if failed:
                lines.append(f"{name}: {len(failed)} of {len(listed)} items have no answer (they score 0); the "
                             f"first error: {failed[0].error}. Run the same evaluation again to ask only those.")
        return lines


def pairwise_results(items: Sequence[Item], scores: Sequence[Score], *, candidate: str, baseline: str,
                     criteria: str, slice_by: str | None) -> list[PairwiseResult]:
    """A pairwise judge's scores (1 candidate wins, 0.5 tie, 0 baseline wins, None not judged) counted per
    slice: every item first (``(all)``), then each slice value sorted, ``(none)`` for items without one."""
    value = {s.item_id: s.value for s in scores}
    groups: dict[str, list[float | None]] = {OVERALL: [value.get(item.id) for item in items]}
    if slice_by is not None:
        for item in sorted(items, key=lambda i: i.slice if i.slice is not None else NO_VALUE):
            groups.setdefault(item.slice if item.slice is not None else NO_VALUE, []).append(value.get(item.id))
    return [pairwise_result(label, values, candidate, baseline, criteria) for label, values in groups.items()]


def pairwise_result(label: str, values: Sequence[float | None], candidate: str, baseline: str,
                    criteria: str) -> PairwiseResult:
    """One slice's counts from its items' pairwise values, with its win rate and plain line."""
    wins, ties, losses = (sum(v == target for v in values) for target in (1.0, 0.5, 0.0))
    n = wins + ties + losses
    where = "overall" if label == OVERALL else label
    line = (f"{where}: the judge prefers {candidate} to {baseline} in {wins} of {n}, {baseline} in {losses}, "
            f"ties {ties}") + (f" ({len(values) - n} not judged)" if len(values) > n else "")
    return PairwiseResult(baseline=baseline, slice=label, criteria=criteria, n=n, wins=wins, ties=ties,
                          losses=losses, unjudged=len(values) - n,
                          win_rate=(wins + ties / 2) / n * 100 if n else None, line=line)


def loss_curve(events: Sequence[JobEvent]) -> list[LossPoint]:
    """The training and validation losses the job reported, by step (the last report of a step wins)."""
    points: dict[int, LossPoint] = {}
    for event in events:
        if event.step is None or (event.train_loss is None and event.valid_loss is None):
            continue
        earlier = points.get(event.step)
        points[event.step] = LossPoint(
            step=event.step,
            train_loss=event.train_loss if event.train_loss is not None else earlier and earlier.train_loss,
            valid_loss=event.valid_loss if event.valid_loss is not None else earlier and earlier.valid_loss)
    return [points[step] for step in sorted(points)]
