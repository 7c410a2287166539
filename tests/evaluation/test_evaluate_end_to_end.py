"""A fit, then its evaluation, against a service on 127.0.0.1 that trains (as recorded) and answers chat
completions: the tuned model gets every category right but security's, the base only security's. The
evaluation must say exactly that, per slice, from what the fit held out; a rerun asks nothing again."""

from __future__ import annotations

import json
import sys
import warnings

import pytest

from tests.fit_helpers import MODELS, SAMPLE, before_the_sunset
from tests.reliability.fake_service import FakeOpenAI
from tuneproxy import Tuner, cli
from tuneproxy.dataset.validate import load_examples
from tuneproxy.evaluation.model import OVERALL

REFERENCES = {ex.record["messages"][-2]["content"]: ex.record["messages"][-1]["content"]
              for ex in load_examples(SAMPLE)}


def answer(model: str, messages: list[dict]) -> str:
    """The tuned model: right but on security tickets (calls them bugs); the base: right on security only."""
    reference = json.loads(REFERENCES[messages[-1]["content"]])
    security = reference["category"] == "security"
    if model.startswith("ft:"):
        return json.dumps({**reference, "category": "bug"} if security else reference)
    return json.dumps(reference if security else {**reference, "category": "other"})


@pytest.fixture
def tuned(isolated_home):
    with FakeOpenAI() as service:
        service.chat = answer
        tuner = Tuner("openai", MODELS["openai"], epochs=3, poll_interval=0, show_progress=False, api_key="sk-test",
                      clock=before_the_sunset, provider_options={"base_url": service.base_url})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the sunset and the data's warnings are not under test here
            yield service, tuner.fit(SAMPLE, holdout=100, stratify="category")


def chats(service: FakeOpenAI) -> int:
    return sum(path == "/v1/chat/completions" for _, path in service.log)


def test_the_evaluation_finds_the_slice_that_got_worse_and_a_rerun_asks_nothing_again(tuned):
    service, model = tuned
    report = model.evaluate(baselines=["base"], scorers=["label:category", "json"], slice_by="category",
                            show_progress=False, resamples=2000)
    assert chats(service) == 200  # 100 held-out tickets, two systems
    by_slice = {(r.scorer, r.slice): r for r in report.results}
    overall = by_slice[("label:category", OVERALL)]
    security = by_slice[("label:category", "security")]
    assert overall.n == 100 and security.n == 19  # 75 of the 400 tickets are security: 18.75 of 100
    assert overall.means == {"tuned": 81.0, "base": 19.0}
    assert security.means == {"tuned": 0.0, "base": 100.0}
    assert [c.verdict for c in overall.comparisons] == ["better"]
    assert [(c.verdict, c.losses) for c in security.comparisons] == [("worse", 19)]
    assert {(c.baseline, c.verdict) for c in report.regressions} == {("base", "worse")}
    assert "security: tuned worse than base" in report.summary()
    assert sum(f.direction == "regressed" for f in report.flips) == 19
    assert by_slice[("json", OVERALL)].means == {"tuned": 100.0, "base": 100.0}

    again = model.evaluate(baselines=["base"], scorers=["label:category", "json"], slice_by="category",
                           show_progress=False, resamples=2000)
    assert chats(service) == 200  # every answer came from the ledger's cache
    assert again.results == report.results


def test_tuneproxy_eval_writes_the_report_and_prints_json(tuned, capsys, tmp_path, monkeypatch):
    service, model = tuned
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    page = tmp_path / "report.html"
    sys.argv = ["tuneproxy", "eval", model.job_id, "--baseline", "base", "--scorer", "label:category",
                "--slice", "category", "--report", str(page), "--json"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    printed = json.loads(out)
    assert printed["candidate"] == "tuned" and printed["items"] == 100
    assert "security: tuned worse than base" in "\n".join(printed["verdicts"])
    assert "<svg" in page.read_text(encoding="utf-8")


def test_tuneproxy_eval_takes_what_the_config_file_eval_table_sets(tuned, capsys, tmp_path, monkeypatch):
    service, model = tuned
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = tmp_path / "tuneproxy.toml"
    config.write_text('[eval]\nbaselines = ["base"]\nscorers = ["label:category"]\nslice_by = "category"\n'
                      "concurrency = 2\n")
    sys.argv = ["tuneproxy", "eval", model.job_id, "--config", str(config), "--json"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    printed = json.loads(out)
    assert printed["items"] == 100 and {r["scorer"] for r in printed["results"]} == {"label:category"}
    assert "security: tuned worse than base" in "\n".join(printed["verdicts"])  # sliced by the file's key
    assert printed["slice_by"] == "category" and printed["scorers"] == ["label:category"]
