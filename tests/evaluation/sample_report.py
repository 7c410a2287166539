"""A hand-built EvalReport for the report's tests: a tuned model against its base and an 8-shot base on 180
support tickets sliced by category, scored by label:category (pass/fail) and json_fields (graded), and
judged pairwise (:data:`PAIRWISE`; its criteria carry markup, as a user's text may).

The numbers hang together: each label:category mean is passes ÷ items of its slice, each overall mean the
items' mean, and the one regression is security against few-shot:8 (10 flips: 1 won, 9 lost). The
dataset-level figures are the real scorers' aggregates over answers drawn from :data:`CONFUSION`, whose
diagonal is those passes."""

from __future__ import annotations

import datetime as dt
import json

from tuneproxy.evaluation.evaluate import pairwise_result
from tuneproxy.evaluation.model import (
    OVERALL,
    Answer,
    Comparison,
    EvalReport,
    Flip,
    Interval,
    Item,
    LossPoint,
    PairwiseResult,
    SliceResult,
    SystemInfo,
)
from tuneproxy.evaluation.scorers import Classification, JSONFields

CANDIDATE = "tuned"
BASELINES = ("base", "few-shot:8")
SLICES = (OVERALL, "billing", "security", "account")
HOSTILE_ANSWER = "<script>alert('owned')</script><img src=x onerror=alert(1)> refund & close"
LABELS = ("billing", "security", "account")
LABEL_SCORER = "label:category"
# Per system, per true category: how many answers named billing, security, account, or no category (not
# JSON, or no answer at all: few-shot:8's first two). Each system's actions are right on its first
# ACTIONS_RIGHT answers that are JSON, so json_fields' micro recall is its overall mean.
CONFUSION = {
    "tuned": {"billing": (57, 0, 10, 3), "security": (2, 22, 19, 2), "account": (8, 5, 50, 2)},
    "base": {"billing": (30, 10, 25, 5), "security": (8, 16, 18, 3), "account": (15, 14, 33, 3)},
    "few-shot:8": {"billing": (46, 4, 18, 2), "security": (3, 30, 11, 1), "account": (10, 7, 46, 2)},
}
ACTIONS_RIGHT = {"tuned": 167, "base": 143, "few-shot:8": 167}
FAILED = {"few-shot:8": 2}
PAIRWISE_CRITERIA = "Which answer <b>resolves</b> the ticket & names the right category?"
# Per baseline and slice: wins, ties, losses and items not judged (few-shot:8's two missing answers).
PAIRWISE = {
    "base": {OVERALL: (98, 44, 38, 0), "billing": (42, 16, 12, 0), "security": (20, 12, 13, 0),
             "account": (36, 16, 13, 0)},
    "few-shot:8": {OVERALL: (61, 60, 57, 2), "billing": (30, 22, 17, 1), "security": (9, 15, 21, 0),
                   "account": (22, 23, 19, 1)},
}


def _comparison(where: str, baseline: str, estimate: float, low: float, high: float, p: float | None,
                holm: float | None, wins: int, losses: int) -> Comparison:
    verdict = ("better" if holm is not None and holm < 0.05 and low > 0 else
               "worse" if holm is not None and holm < 0.05 and high < 0 else "no significant difference")
    numbers = f"{estimate:+.0f} points [{low:+.0f}, {high:+.0f}]"
    if p is not None:
        numbers += f", {wins + losses} flips"
    label = "overall" if where == OVERALL else where
    line = {"better": f"{label}: tuned better than {baseline}, {numbers}",
            "worse": f"{label}: tuned worse than {baseline}, {numbers}"}.get(
        verdict, f"{label}: no significant difference between tuned and {baseline}, {numbers}")
    return Comparison(candidate=CANDIDATE, baseline=baseline,
                      difference=Interval(estimate=estimate, low=low, high=high, resamples=10_000, seed=0),
                      mcnemar_p=p, holm_p=holm, wins=wins, losses=losses, verdict=verdict, line=line)


def _labels() -> list[SliceResult]:
    # passes per slice: tuned 57/70, 22/45, 50/65; base 30, 16, 33; few-shot:8 46, 30, 46
    return [
        SliceResult(slice=OVERALL, scorer=LABEL_SCORER, n=180,
                    means={"tuned": 71.7, "base": 43.9, "few-shot:8": 67.8},
                    comparisons=[_comparison(OVERALL, "base", 27.8, 19.4, 36.1, 1.2e-9, 1.2e-9, 58, 8),
                                 _comparison(OVERALL, "few-shot:8", 3.9, -3.3, 11.1, 0.31, 0.31, 27, 20)]),
        SliceResult(slice="billing", scorer=LABEL_SCORER, n=70,
                    means={"tuned": 81.4, "base": 42.9, "few-shot:8": 65.7},
                    comparisons=[_comparison("billing", "base", 38.6, 25.7, 51.4, 2.0e-6, 6.0e-6, 30, 3),
                                 _comparison("billing", "few-shot:8", 15.7, 4.3, 27.1, 0.012, 0.024, 14, 3)]),
        SliceResult(slice="security", scorer=LABEL_SCORER, n=45,
                    means={"tuned": 48.9, "base": 35.6, "few-shot:8": 66.7},
                    comparisons=[_comparison("security", "base", 13.3, -4.4, 31.1, 0.21, 0.21, 10, 4),
                                 _comparison("security", "few-shot:8", -17.8, -31.1, -4.4, 0.021, 0.042, 1, 9)]),
        SliceResult(slice="account", scorer=LABEL_SCORER, n=65,
                    means={"tuned": 76.9, "base": 50.8, "few-shot:8": 70.8},
                    comparisons=[_comparison("account", "base", 26.2, 13.8, 38.5, 1.1e-4, 2.2e-4, 18, 1),
                                 _comparison("account", "few-shot:8", 6.2, -4.6, 16.9, 0.36, 0.36, 12, 8)]),
    ]


def _fields() -> list[SliceResult]:
    rows = {OVERALL: (180, 82.2, 61.7, 80.3, (20.5, 15.8, 25.1), (1.9, -1.4, 5.3)),
            "billing": (70, 88.2, 61.5, 79.0, (26.7, 19.8, 33.4), (9.2, 4.1, 14.3)),
            "security": (45, 70.3, 58.1, 80.6, (12.2, 3.0, 21.5), (-10.3, -17.9, -2.6)),
            "account": (65, 85.0, 64.2, 81.1, (20.8, 13.1, 28.4), (3.9, -1.8, 9.6))}
    results = []
    for where, (n, tuned, base, few_shot, vs_base, vs_few_shot) in rows.items():
        # graded: no McNemar; the bootstrap p stands in, Holm-corrected as the comparison would
        p_base = 0.0002 if vs_base[1] > 0 else 0.4
        p_few = 0.01 if vs_few_shot[1] > 0 or vs_few_shot[2] < 0 else 0.4
        results.append(SliceResult(slice=where, scorer="json_fields", n=n,
                                   means={"tuned": tuned, "base": base, "few-shot:8": few_shot},
                                   comparisons=[_comparison(where, "base", *vs_base, None, p_base, 0, 0),
                                                _comparison(where, "few-shot:8", *vs_few_shot, None, p_few, 0, 0)]))
    return results


def _flips() -> list[Flip]:
    return [
        Flip(item_id="a41f09c2", slice="security", scorer="label:category", baseline="few-shot:8", candidate=CANDIDATE,
             direction="regressed", prompt="I got an email asking me to confirm my password. Is it from you?",
             reference='{"category": "security", "action": "phishing_report"}',
             baseline_answer='{"category": "security", "action": "phishing_report"}',
             candidate_answer='{"category": "account", "action": "password_reset"}'),
        Flip(item_id="7be2d310", slice="security", scorer="label:category", baseline="few-shot:8", candidate=CANDIDATE,
             direction="regressed", prompt="Someone logged in from another country, please lock my account.",
             reference='{"category": "security", "action": "lock_account"}',
             baseline_answer='{"category": "security", "action": "lock_account"}',
             candidate_answer=HOSTILE_ANSWER),
        Flip(item_id="c0ffee12", slice="billing", scorer="label:category", baseline="base", candidate=CANDIDATE,
             direction="improved", prompt="I was charged twice for March.",
             reference='{"category": "billing", "action": "refund"}',
             baseline_answer="I'm sorry to hear that! Could you tell me more about the charges?",
             candidate_answer='{"category": "billing", "action": "refund"}'),
    ]


def _answers(system: str) -> list[tuple[Answer, Item]]:
    """Answers whose categories are the system's row of :data:`CONFUSION`, and their tickets."""
    pairs: list[tuple[Answer, Item]] = []
    failed, actions_right = FAILED.get(system, 0), ACTIONS_RIGHT[system]
    for truth, row in CONFUSION[system].items():
        for guess, count in zip((*LABELS, None), row):
            for _ in range(count):
                item = Item(id=f"ticket-{len(pairs)}", messages=[{"role": "user", "content": "help"}],
                            reference=json.dumps({"category": truth, "action": "resolve"}))
                if guess is None:
                    text, failed = (None, failed - 1) if failed else ("Could you tell me more?", 0)
                else:
                    text = json.dumps({"category": guess, "action": "resolve" if actions_right else "escalate"})
                    actions_right = max(0, actions_right - 1)
                answer = Answer(system=system, item_id=item.id, text=text, error=None if text else "timeout")
                pairs.append((answer, item))
    return pairs


def _aggregates() -> dict[str, dict[str, dict[str, float]]]:
    return {scorer.name: {system: scorer.aggregate(_answers(system)) for system in CONFUSION}
            for scorer in (Classification("category"), JSONFields())}


def _pairwise() -> list[PairwiseResult]:
    return [pairwise_result(where, [1.0] * wins + [0.5] * ties + [0.0] * losses + [None] * unjudged, CANDIDATE,
                            baseline, PAIRWISE_CRITERIA)
            for baseline, slices in PAIRWISE.items() for where, (wins, ties, losses, unjudged) in slices.items()]


def _loss_curve() -> list[LossPoint]:
    train = (2.31, 1.62, 1.21, 0.98, 0.84, 0.77, 0.71, 0.68, 0.65, 0.63)
    return [LossPoint(step=10 * (i + 1), train_loss=loss, valid_loss=(round(loss + 0.08 + 0.01 * i, 3)
                                                                      if i % 2 else None))
            for i, loss in enumerate(train)]


def sample_report() -> EvalReport:
    labels, fields = _labels(), _fields()
    return EvalReport(
        created_at=dt.datetime(2026, 11, 20, 14, 3, tzinfo=dt.timezone.utc),
        job_id="ft-local-7c1e",
        candidate=CANDIDATE,
        systems=[
            SystemInfo(name="tuned", model="llama-3.1-8b-instruct:ft-7c1e", kind="tuned", answered=180, failed=0,
                       cost_usd=0.0684, cost_per_1000=0.38, generation={"temperature": 0, "seed": 0}),
            SystemInfo(name="base", model="llama-3.1-8b-instruct", kind="base", answered=180, failed=0,
                       cost_usd=0.0648, cost_per_1000=0.36, generation={"temperature": 0, "seed": 0}),
            SystemInfo(name="few-shot:8", model="llama-3.1-8b-instruct", kind="few-shot", answered=178, failed=2,
                       cost_usd=0.5251, cost_per_1000=2.95, generation={"temperature": 0, "seed": 0}),
        ],
        scorers=["label:category", "json_fields"],
        slice_by="category",
        items=180,
        results=[*labels, *fields],
        aggregates=_aggregates(),
        flips=_flips(),
        verdicts=[c.line for r in labels for c in r.comparisons],
        pairwise=_pairwise(),
        warnings=["security has 45 examples: a difference must be about ±15 points to be told apart from none",
                  "few-shot:8: 2 items failed (timeout) and count as wrong"],
        loss_curve=_loss_curve(),
    )
