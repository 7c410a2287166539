"""The evaluation's data, as it flows one way: items asked → answers → scores → comparisons → a report.

Every stage reads the stage before it and nothing else, so each can be tested (and replaced) alone: the
runner turns :class:`Item` s into :class:`Answer` s, scorers turn answers into :class:`Score` s, the
comparison turns scores into :class:`SliceResult` s and :class:`Flip` s, a pairwise judge's verdicts on
pairs of answers become :class:`PairwiseResult` s, and the report renders an
:class:`EvalReport` (whose JSON is the documented schema, ``EvalReport.model_json_schema()``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

OVERALL = "(all)"  # the slice that holds every item


class Item(BaseModel):
    """One held-out example to ask every system: the conversation up to the answer, and the answer."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="A fingerprint of the example's content: the same example, the same id.")
    messages: list[dict[str, Any]] = Field(description="The prompt: the conversation before the final answer.")
    reference: str = Field(description="The expected answer (the example's final assistant message).")
    slice: str | None = Field(None, description="The example's value of the slice key, if one was given.")


class Answer(BaseModel):
    """One system's answer to one item, or why there is none."""

    system: str
    item_id: str
    text: str | None = None
    error: str | None = Field(None, description="Why this item has no answer (the others still count).")
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    cached: bool = Field(False, description="Read from the ledger's answer cache instead of asked again.")

    @property
    def ok(self) -> bool:
        return self.text is not None


class Score(BaseModel):
    """One scorer's verdict on one answer: a value in [0, 1], and pass/fail for pass/fail scorers."""

    system: str
    item_id: str
    scorer: str
    value: float | None = Field(description="In [0, 1]; None when the answer is missing (counts as 0 in means).")
    passed: bool | None = Field(None, description="For pass/fail scorers; None for graded ones.")
    judged: bool = Field(True, description="False when the scorer could not judge an answer it was given (a "
                                           "reference it cannot read, a judge call that failed): the item is "
                                           "then left out of this scorer's comparison for every system.")
    detail: dict[str, Any] = Field(default_factory=dict)


class Interval(BaseModel):
    """A paired difference (tuned − baseline, in points of the scorer's mean ×100) and its 95% interval."""

    estimate: float
    low: float
    high: float
    resamples: int
    seed: int


class SliceResult(BaseModel):
    """One scorer on one slice: each system's mean, and each comparison of the candidate with a baseline."""

    slice: str
    scorer: str
    n: int = Field(description="Items in the slice.")
    means: dict[str, float] = Field(description="System name → mean score ×100 (points).")
    comparisons: list[Comparison] = Field(default_factory=list)


class Comparison(BaseModel):
    """The candidate (the tuned model) against one baseline, on one scorer and one slice."""

    candidate: str
    baseline: str
    difference: Interval | None = Field(None, description="None when the slice is too small to say.")
    mcnemar_p: float | None = Field(None, description="Exact McNemar p-value (pass/fail scorers only).")
    holm_p: float | None = Field(None, description="The p-value after Holm's correction across slices.")
    wins: int = Field(0, description="Items that fail on the baseline and pass on the candidate.")
    losses: int = Field(0, description="Items that pass on the baseline and fail on the candidate.")
    verdict: Literal["better", "worse", "no significant difference", "too few examples"]
    line: str = Field(description="The plain verdict sentence, e.g. 'security: tuned worse than few-shot "
                                  "base, -18 points [-31, -5], 9 flips'.")


class Flip(BaseModel):
    """An item that one system passes and the other fails, with both answers side by side."""

    item_id: str
    slice: str | None
    scorer: str
    baseline: str
    candidate: str
    direction: Literal["regressed", "improved"] = Field(description="regressed: the baseline passed, the "
                                                                    "candidate fails.")
    prompt: str
    reference: str
    baseline_answer: str | None
    candidate_answer: str | None


class PairwiseResult(BaseModel):
    """A pairwise judge's verdicts on one slice: how often it preferred the candidate's answer to one
    baseline's, both orders asked (a disagreement between the orders is a tie)."""

    baseline: str
    slice: str
    criteria: str = Field(description="What the judge was asked to compare the answers by.")
    n: int = Field(description="Items judged (wins + ties + losses).")
    wins: int = Field(description="Items where the judge preferred the candidate's answer in both orders.")
    ties: int = Field(description="Items where the judge said tie, or the two orders disagreed.")
    losses: int = Field(description="Items where the judge preferred the baseline's answer in both orders.")
    unjudged: int = Field(description="Items left out: an answer missing, a judge call failed or its reply "
                                      "could not be read.")
    win_rate: float | None = Field(description="(wins + ties / 2) / n × 100, in points; None when n is 0.")
    line: str = Field(description="The plain sentence, e.g. 'overall: the judge prefers tuned to base in 34 "
                                  "of 60, base in 16, ties 10'.")


class SystemInfo(BaseModel):
    """One system evaluated: what it is, how it was asked, and what its answers cost."""

    name: str = Field(description="The name the report uses: 'tuned', 'base', 'few-shot:8', or as given.")
    model: str
    kind: Literal["tuned", "base", "few-shot", "endpoint"]
    answered: int = 0
    failed: int = 0
    cost_usd: float | None = Field(None, description="What its answers cost, when every one was priced.")
    cost_per_1000: float | None = Field(None, description="USD per 1,000 answers.")
    generation: dict[str, Any] = Field(default_factory=dict, description="The generation parameters used.")


class LossPoint(BaseModel):
    step: int
    train_loss: float | None = None
    valid_loss: float | None = None


class EvalReport(BaseModel):
    """Everything an evaluation found; ``to_html()``/``to_markdown()``/``summary()`` render it."""

    created_at: dt.datetime
    job_id: str | None = None
    candidate: str = Field(description="The system the others are compared with (the tuned model).")
    systems: list[SystemInfo]
    scorers: list[str]
    slice_by: str | None = None
    items: int
    results: list[SliceResult] = Field(description="Per scorer and slice; the slice '(all)' is every item.")
    aggregates: dict[str, dict[str, dict[str, float]]] = Field(
        default_factory=dict,
        description="Dataset-level figures that are not a mean of item scores, in [0, 1]: scorer name → system "
                    "name → figure → value, e.g. aggregates['label:category']['tuned']['macro_f1']. Only "
                    "scorers that have such figures (classification and label:FIELD: accuracy, macro_f1 and "
                    "per-label precision/recall/F1; json_fields: micro precision/recall/F1, macro_f1 and "
                    "per-field precision/recall/F1) appear.")
    flips: list[Flip] = Field(default_factory=list)
    verdicts: list[str] = Field(default_factory=list, description="One plain line per slice, and overall.")
    pairwise: list[PairwiseResult] = Field(
        default_factory=list,
        description="The pairwise judge's verdicts, candidate against each baseline, per slice ('(all)' first); "
                    "empty when no pairwise judge was asked.")
    warnings: list[str] = Field(default_factory=list)
    loss_curve: list[LossPoint] = Field(default_factory=list)

    @property
    def regressions(self) -> list[Comparison]:
        """The comparisons where the candidate is significantly worse than a baseline."""
        return [c for r in self.results for c in r.comparisons if c.verdict == "worse"]

    def summary(self) -> str:
        """The verdict lines, the pairwise judge's lines and the warnings, as plain text."""
        from tuneproxy.evaluation import report

        return report.summary(self)

    def to_html(self) -> str:
        """One self-contained HTML page (no external assets): charts, verdicts, flips side by side."""
        from tuneproxy.evaluation import report

        return report.to_html(self)

    def to_markdown(self) -> str:
        """The tables and verdicts in GitHub Markdown."""
        from tuneproxy.evaluation import report

        return report.to_markdown(self)


SliceResult.model_rebuild()
