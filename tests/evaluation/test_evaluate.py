"""An evaluation from start to end with scripted endpoints and a real runner on a real ledger: each scorer's
dataset-level figures land in the report per system, and an item a system could not answer is counted and
named in the warnings."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest

from tuneproxy.contract import Completion, Endpoint, GenerationParams, Message
from tuneproxy.errors import ProviderError
from tuneproxy.evaluation.evaluate import Evaluation, System
from tuneproxy.evaluation.model import EvalReport, Item
from tuneproxy.evaluation.runner import Runner
from tuneproxy.evaluation.scorers import scorer_from_spec
from tuneproxy.ledger import Ledger

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


def evaluate(tmp_path, base: Mapping[str, Reply], scorers: Sequence[str] = ("label:category",)) -> EvalReport:
    evaluation = Evaluation(
        candidate=System(name="tuned", kind="tuned", endpoint=Scripted("tuned-model", TUNED), key="tuned-model"),
        baselines=[System(name="base", kind="base", endpoint=Scripted("base-model", base), key="base-model")],
        items=ITEMS, scorers=[scorer_from_spec(spec) for spec in scorers],
        runner=Runner(Ledger(tmp_path / "state.db"), show_progress=False), resamples=200)
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
