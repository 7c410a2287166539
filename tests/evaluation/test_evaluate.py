"""An evaluation from start to end with scripted endpoints and a real runner on a real ledger: each scorer's
dataset-level figures land in the report per system, an item a system could not answer is counted and
named in the warnings, and a pairwise judge's verdicts are counted per slice."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence

import pytest

from tuneproxy import cli
from tuneproxy.contract import Completion, Endpoint, GenerationParams, Message
from tuneproxy.errors import ConfigError, ProviderError
from tuneproxy.evaluation.evaluate import Evaluation, System
from tuneproxy.evaluation.model import OVERALL, EvalReport, Item
from tuneproxy.evaluation.runner import Runner
from tuneproxy.evaluation.scorers import PairwiseJudge, scorer_from_spec
from tuneproxy.ledger import Ledger
from tuneproxy.tuned import TunedModel

# Unbalanced on purpose: six billing tickets, two security ones.
TICKETS = {f"ticket {i}": "billing" for i in range(1, 7)} | {"ticket 7": "security", "ticket 8": "security"}
ITEMS = [Item(id=f"item-{i}", messages=[{"role": "user", "content": prompt}],
              reference=json.dumps({"category": label}))
         for i, (prompt, label) in enumerate(TICKETS.items(), start=1)]
Reply = str | ProviderError


def says(category: str) -> str:
    return json.dumps({"category": category})


class Scripted(Endpoint):
    """Answers each prompt with its scripted reply, or raises the scripted error."""

    provider = "scripted"

    def __init__(self, model: str, replies: Mapping[str, Reply]) -> None:
        self.model = model
        self.replies = replies

    async def _generate(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        reply = self.replies[messages[-1]["content"]]
        if isinstance(reply, ProviderError):
            raise reply
        return Completion(text=reply, finish_reason="stop")


# The tuned model gets every billing ticket and one security ticket right, and calls ticket 8 billing; the
# base calls every ticket billing.
TUNED = {prompt: says(label) for prompt, label in TICKETS.items()} | {"ticket 8": says("billing")}
BASE = {prompt: says("billing") for prompt in TICKETS}
REFUSED = ProviderError("the request was refused", provider="scripted", status_code=400)  # 4xx: not retried


def evaluate(tmp_path, base: Mapping[str, Reply], scorers: Sequence[str] = ("label:category",),
             pairwise: PairwiseJudge | None = None, items: Sequence[Item] = ITEMS,
             slice_by: str | None = None) -> EvalReport:
    evaluation = Evaluation(
        candidate=System(name="tuned", kind="tuned", endpoint=Scripted("tuned-model", TUNED), key="tuned-model"),
        baselines=[System(name="base", kind="base", endpoint=Scripted("base-model", base), key="base-model")],
        items=items, scorers=[scorer_from_spec(spec) for spec in scorers],
        runner=Runner(Ledger(tmp_path / "state.db"), show_progress=False), resamples=200, pairwise=pairwise,
        slice_by=slice_by)
    return evaluation.run()


def test_the_report_holds_each_systems_macro_f1_over_the_labels(tmp_path):
    figures = evaluate(tmp_path, BASE).aggregates["label:category"]
    # tuned: billing tp 6 of 7 predicted, 6 true → P 6/7, R 1, F1 = 2·6/(7+6) = 12/13;
    #        security tp 1 of 1 predicted, 2 true → P 1, R 1/2, F1 = 2·1/(1+2) = 2/3;
    #        macro-F1 = (12/13 + 2/3) / 2 = (36/39 + 26/39) / 2 = 31/39 ≈ 0.795, below its accuracy 7/8.
    assert figures["tuned"]["macro_f1"] == pytest.approx(31 / 39)
    assert figures["tuned"]["accuracy"] == pytest.approx(7 / 8)
    # base: billing P 6/8, R 1, F1 = 2·6/(8+6) = 6/7; security never predicted, F1 0 → macro-F1 = 3/7,
    # though its accuracy is 6/8.
    assert figures["base"]["macro_f1"] == pytest.approx(3 / 7)
    assert figures["base"]["accuracy"] == pytest.approx(6 / 8)


def test_a_scorer_without_dataset_figures_has_no_aggregates(tmp_path):
    report = evaluate(tmp_path, BASE, scorers=("label:category", "exact"))
    assert set(report.aggregates) == {"label:category"}
    assert set(report.aggregates["label:category"]) == {"tuned", "base"}


def test_a_failed_item_is_counted_and_named_in_a_warning(tmp_path):
    report = evaluate(tmp_path, BASE | {"ticket 3": REFUSED})
    info = {s.name: (s.answered, s.failed) for s in report.systems}
    assert info == {"tuned": (8, 0), "base": (7, 1)}
    failures = [w for w in report.warnings if "have no answer" in w]
    assert len(failures) == 1 and failures[0].startswith("base: 1 of 8 items have no answer")
    assert "the request was refused" in failures[0]
    # the failed item is a wrong prediction: billing P 5/7, R 5/6, F1 = 2·5/(7+6) = 10/13; security 0
    assert report.aggregates["label:category"]["base"]["macro_f1"] == pytest.approx(5 / 13)


# --- the pairwise judge ------------------------------------------------------------------------------------

SLICED = [item.model_copy(update={"slice": json.loads(item.reference)["category"]}) for item in ITEMS]
# The base also gets ticket 8 right and ticket 1 wrong: against the tuned model it wins ticket 8 and loses
# tickets 1 and 7; on the other five both are right.
BASE_MIXED = BASE | {"ticket 1": says("security"), "ticket 8": says("security")}
SECTIONS = re.compile(r"## Reference answer \(what a good answer looks like\)\n(.*)\n\n## Answer A\n(.*)\n\n"
                      r"## Answer B\n(.*)\n\n## Criteria", re.S)


class Judge(Endpoint):
    """Replies to each pairwise prompt with ``choose(reference, answer A, answer B)``."""

    provider = "scripted"
    model = "judge-model"

    def __init__(self, choose: Callable[[str, str, str], str]) -> None:
        self.choose = choose

    async def _generate(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        found = SECTIONS.search(messages[-1]["content"])
        assert found, "the judge's prompt has no reference and answers A and B"
        return Completion(text=json.dumps({"winner": self.choose(*found.groups()), "reason": "scripted"}),
                          finish_reason="stop")


def prefers_the_right_answer(reference: str, first: str, second: str) -> str:
    if (first == reference) == (second == reference):
        return "tie"
    return "A" if first == reference else "B"


def counts(report: EvalReport) -> dict[str, tuple[int, int, int, int]]:
    return {r.slice: (r.wins, r.ties, r.losses, r.unjudged) for r in report.pairwise}


def test_the_pairwise_judge_counts_wins_ties_and_losses_per_slice_overall_first(tmp_path):
    judge = PairwiseJudge(Judge(prefers_the_right_answer), "Which answer names the right category?")
    report = evaluate(tmp_path, BASE_MIXED, pairwise=judge, items=SLICED, slice_by="category")
    assert [r.slice for r in report.pairwise] == [OVERALL, "billing", "security"]
    assert counts(report) == {OVERALL: (2, 5, 1, 0), "billing": (1, 5, 0, 0), "security": (1, 0, 1, 0)}
    overall = report.pairwise[0]
    assert (overall.baseline, overall.n, overall.criteria) == ("base", 8, "Which answer names the right category?")
    assert overall.win_rate == pytest.approx((2 + 5 / 2) / 8 * 100)
    assert report.pairwise[1].win_rate == pytest.approx((1 + 5 / 2) / 6 * 100)
    assert [r.line for r in report.pairwise] == [
        "overall: the judge prefers tuned to base in 2 of 8, base in 1, ties 5",
        "billing: the judge prefers tuned to base in 1 of 6, base in 0, ties 5",
        "security: the judge prefers tuned to base in 1 of 2, base in 1, ties 0"]


def test_the_pairwise_lines_stay_out_of_the_verdicts(tmp_path):
    judge = PairwiseJudge(Judge(prefers_the_right_answer), "Which answer names the right category?")
    with_judge = evaluate(tmp_path, BASE_MIXED, pairwise=judge, items=SLICED, slice_by="category")
    without = evaluate(tmp_path, BASE_MIXED, items=SLICED, slice_by="category")
    assert with_judge.verdicts == without.verdicts
    assert without.pairwise == []


def test_a_judge_that_always_prefers_position_a_gives_only_ties(tmp_path):
    report = evaluate(tmp_path, BASE_MIXED, pairwise=PairwiseJudge(Judge(lambda *_: "A"), "Which is better?"))
    assert counts(report) == {OVERALL: (0, 8, 0, 0)}
    assert report.pairwise[0].win_rate == 50.0
    assert report.pairwise[0].line == "overall: the judge prefers tuned to base in 0 of 8, base in 0, ties 8"


def test_an_item_without_a_baseline_answer_is_not_judged_and_named_in_a_warning(tmp_path):
    judge = PairwiseJudge(Judge(prefers_the_right_answer), "Which answer names the right category?")
    report = evaluate(tmp_path, BASE_MIXED | {"ticket 3": REFUSED}, pairwise=judge)
    assert counts(report) == {OVERALL: (2, 4, 1, 1)}
    assert report.pairwise[0].line.endswith("ties 4 (1 not judged)")
    assert [w for w in report.warnings if w.startswith("pairwise vs base: 1 of 8 items not judged")]


def test_evaluate_refuses_pairwise_criteria_without_a_judge():
    tuned = TunedModel(provider=None, record=None, ledger=None)  # type: ignore[arg-type]  # refused before use
    with pytest.raises(ConfigError, match="pass judge="):
        tuned.evaluate(pairwise="Which answer is more accurate?")


def test_tuneproxy_eval_pairwise_without_judge_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tuneproxy", "eval", "job-1", "--pairwise", "Which is more accurate?"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "--judge URL#MODEL" in capsys.readouterr().err
