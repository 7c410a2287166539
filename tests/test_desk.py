"""The cost desk: one dataset estimated on every backend that offers a model, its tokens counted once, sorted
by cost, with serving costs and what each backend would refuse — and the confirmation `fit` asks before paying."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import run_cli
from tests.conftest import FIXTURES
from tests.fit_helpers import MODELS, make_tuner
from tuneproxy import Tuner, cli, tokens
from tuneproxy.errors import ConfigError, NotConfirmed
from tuneproxy.recording import ReplayTransport, cassette_path

SAMPLE = FIXTURES / "datasets" / "sample.jsonl"
pytestmark = [pytest.mark.filterwarnings("ignore::tuneproxy.tuner.SunsetWarning")]




def write(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i} plus {i}?"},
                                                     {"role": "assistant", "content": str(2 * i)}]}) + "\n"
                            for i in range(n)))
    return path


# --------------------------------------------------------------------------- the desk


def test_every_backend_is_estimated_on_its_default_model_cheapest_first() -> None:
    desk = Tuner.estimate_all(SAMPLE)
    assert {r.provider for r in desk.rows} == {"openai", "together", "fireworks", "replicate", "local"}
    priced = [r.estimate.usd for r in desk.rows if r.estimate is not None and r.estimate.usd is not None]
    assert priced == sorted(priced) and len(priced) == 5
    by = {r.provider: r for r in desk.rows}
    # each backend's figure is the one its own single estimate gives
    for name, row in by.items():
        alone = Tuner(name, show_progress=False).estimate(SAMPLE)
        assert row.estimate is not None and row.estimate.usd == pytest.approx(alone.usd), name
        assert row.model == alone.model
    assert by["openai"].exact and not by["together"].exact and by["together"].error_bound == 0.25
    assert by["openai"].billable_tokens == by["together"].billable_tokens == desk.total_tokens * 3


def test_the_tokens_are_counted_once_for_every_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[int] = []
    real = tokens.TiktokenCounter.count_batch

    def spy(self: Any, conversations: Any) -> list[int]:
        counted.append(len(conversations))
        return real(self, conversations)

    monkeypatch.setattr(tokens.TiktokenCounter, "count_batch", spy)
    desk = Tuner.estimate_all(SAMPLE)
    assert len(desk.rows) == 5 and sum(counted) == desk.examples  # not five times over


def test_a_portable_name_compares_only_the_backends_that_offer_it() -> None:
    desk = Tuner.estimate_all(SAMPLE, "llama-3.1-8b-instruct", epochs=2)
    assert {r.provider for r in desk.rows} == {"together", "fireworks", "local"}
    assert {r.portable for r in desk.rows} == {"llama-3.1-8b-instruct"} and {r.epochs for r in desk.rows} == {2}
    assert all(r.billable_tokens == desk.total_tokens * 2 for r in desk.rows)


def test_a_raw_id_compares_nothing_so_it_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a portable model name"):
        Tuner.estimate_all(SAMPLE, "gpt-4o-mini-2024-07-18")


def test_serving_and_requirements_say_how_each_backend_serves() -> None:
    by = {r.provider: r for r in Tuner.estimate_all(SAMPLE).rows}
    assert by["openai"].serving.per == "tokens" and by["openai"].serving.usd_output_per_m == pytest.approx(1.2)
    assert by["fireworks"].serving.per == "hour" and by["fireworks"].serving.usd_low < by["fireworks"].serving.usd_high
    assert by["replicate"].serving.per == "second" and by["replicate"].serving.usd_low == pytest.approx(0.000725)
    assert by["together"].serving.per == "unknown" and "dedicated" in by["together"].serving.note
    local = by["local"].estimate
    assert local is not None and local.requirements and "GiB" in local.requirements
    # the training price each row was priced at, with what it applies to and its date
    assert by["together"].rate == "$0.48/1M (≤16B, 2025-11-14)"
    assert by["openai"].rate == "$3.00/1M (gpt-4o-mini, 2026-05-07)"
    assert by["replicate"].rate == "$0.0058/s (8x gpu-a40-large, 2026-03-09)"
    assert local.wall_time_s and by["replicate"].estimate.wall_time_s


def test_what_a_backend_would_refuse_is_said_on_its_row(tmp_path: Path) -> None:
    desk = Tuner.estimate_all(write(tmp_path / "two.jsonl", 2), providers=["openai", "fireworks"])
    by = {r.provider: r for r in desk.rows}
    assert by["openai"].problems == ["2 valid examples; OpenAI needs at least 10. Add more examples."]
    assert by["fireworks"].problems == ["2 valid examples; Fireworks AI needs at least 3. Add more examples."]


def test_a_backend_that_cannot_be_built_is_a_row_with_its_error_not_a_failure() -> None:
    desk = Tuner.estimate_all(SAMPLE, providers=["together", "fireworks"],
                              provider_options={"fireworks": {"nosuch": 1}})
    by = {r.provider: r for r in desk.rows}
    assert by["fireworks"].estimate is None and "Unknown option(s) for Fireworks AI: 'nosuch'" in by["fireworks"].error
    assert by["together"].estimate is not None and desk.rows[-1].provider == "fireworks"  # unknown sorts last


def test_estimate_all_on_the_cli_prints_the_desk_and_its_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "estimate", str(SAMPLE), "--all", "--json")
    assert code == 0, err
    desk = json.loads(out)
    assert [r["provider"] for r in desk["rows"]][-1] == "replicate" and desk["examples"] == 400
    assert all(r["estimate"]["basis"] and r["serving"]["per"] for r in desk["rows"])
    code, out, err = run_cli(capsys, "estimate", str(SAMPLE), "--all", "-m", "qwen3-8b")
    assert code == 0, err
    text = " ".join(out.split())
    assert "qwen3-8b: 400 examples, 36,224 tokens" in text and "fireworks" in text and "openai" not in text
    assert "more than 90 days old" in text  # Together's price is from 2025-11-14


# --------------------------------------------------------------------------- confirming before paying


def test_a_declined_estimate_uploads_nothing_and_pays_nothing() -> None:
    transport = ReplayTransport(cassette_path("openai", "fit_happy_path"))
    tuner = make_tuner("openai", transport)
    seen: list[Any] = []
    tuner.confirm = lambda estimate: seen.append(estimate) or False
    with pytest.raises(NotConfirmed, match="nothing was uploaded or paid"):
        tuner.fit(SAMPLE, holdout=0.1)
    assert transport.log == [] and seen and seen[0].usd > 0
    assert tuner.ledger.jobs() == []


def test_fit_asks_on_a_terminal_and_no_stops_it(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEPROXY_CASSETTE", str(cassette_path("openai", "fit_happy_path")))
    monkeypatch.setattr(cli, "_can_ask", lambda: True)
    asked: list[str] = []
    monkeypatch.setattr(cli.typer, "confirm", lambda text, **kw: asked.append(text) or False)
    code, _, err = run_cli(capsys, "fit", str(SAMPLE), "-p", "openai", "-m", MODELS["openai"], "--holdout", "0.1")
    assert code == 1 and asked == ["Upload the data and pay for this job?"]
    assert "Estimate: $" in " ".join(err.split()) and "nothing was uploaded or paid" in err


def test_yes_and_a_small_estimate_under_auto_approve_do_not_ask(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_can_ask", lambda: True)
    monkeypatch.setattr(cli.typer, "confirm", lambda *a, **kw: pytest.fail("asked"))
    assert cli._confirmer(yes=True, auto_approve=None) is None
    confirm = cli._confirmer(yes=False, auto_approve=1.0)
    assert confirm is not None
    small = Tuner("openai", show_progress=False).estimate(SAMPLE)  # about $0.33
    assert small.usd < 1.0 and confirm(small) is True


def test_without_a_terminal_fit_never_waits_for_an_answer(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_can_ask", lambda: False)
    monkeypatch.setattr(cli.typer, "confirm", lambda *a, **kw: pytest.fail("asked without a terminal"))
    confirm = cli._confirmer(yes=False, auto_approve=None)
    assert confirm is not None and confirm(Tuner("openai", show_progress=False).estimate(SAMPLE)) is True
    assert "no terminal to confirm on: going ahead" in capsys.readouterr().err
