"""Portable model names and defaults: the packaged table, resolution per backend, the refusal of a model a
backend cannot train, default epochs, the size-band note, and `tuneproxy models`."""

from __future__ import annotations

import json
import re

import pytest

from tests.cli_helpers import run_cli
from tests.conftest import FIXTURES
from tuneproxy import Tuner, registry
from tuneproxy.contract import DEFAULT_EPOCHS, Stats
from tuneproxy.errors import ConfigError
from tuneproxy.models import BACKENDS, default_model, load_table, model_rows, resolve
from tuneproxy.prices import load_catalogue

SAMPLE = FIXTURES / "datasets" / "sample.jsonl"




# --------------------------------------------------------------------------- the table


def test_every_backend_has_a_default_that_it_can_train() -> None:
    table = load_table()
    assert set(table.defaults) == set(BACKENDS)
    for name in BACKENDS:
        chosen = default_model(name)
        assert chosen is not None
        caps = registry.provider_class(name).CAPABILITIES
        assert caps.trainable is None or re.fullmatch(caps.trainable, chosen), (name, chosen)


def test_every_id_in_the_table_is_one_its_backend_can_train_and_every_entry_names_its_source() -> None:
    for entry in load_table().entries:
        assert entry.source and entry.as_of and entry.ids, entry.name
        for name, model_id in entry.ids.items():
            caps = registry.provider_class(name).CAPABILITIES
            assert caps.trainable is None or re.fullmatch(caps.trainable, model_id), (entry.name, name, model_id)


def test_the_table_prices_every_openai_model_it_names_from_the_catalogue() -> None:
    catalogue = load_catalogue()
    for entry in load_table().entries:
        if "openai" in entry.ids:
            assert catalogue.match("openai", entry.ids["openai"], "training") is not None, entry.name


# --------------------------------------------------------------------------- resolving


def test_a_portable_name_becomes_each_backends_own_id() -> None:
    assert resolve("together", "llama-3.1-8b-instruct").model_id == "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
    assert resolve("fireworks", "LLaMA-3.1-8B-Instruct").model_id == "accounts/fireworks/models/llama-v3p1-8b-instruct"
    assert resolve("fireworks", "llama-3.1-8b-instruct").portable == "llama-3.1-8b-instruct"


def test_a_raw_backend_id_is_kept_as_it_is_and_named_portably_when_known() -> None:
    raw = resolve("openai", "gpt-4o-mini-2024-07-18")
    assert (raw.model_id, raw.portable, raw.default) == ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", False)
    assert resolve("together", "someorg/Some-Model-7B").model_id == "someorg/Some-Model-7B"


def test_a_portable_name_a_backend_does_not_offer_names_those_that_do() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve("openai", "llama-3.1-8b-instruct")
    message = str(caught.value)
    assert "openai does not offer llama-3.1-8b-instruct" in message
    assert "together (meta-llama/Meta-Llama-3.1-8B-Instruct-Reference)" in message and "fireworks (" in message


def test_no_model_is_the_backends_default_and_it_says_so() -> None:
    tuner = Tuner("together", show_progress=False)
    assert tuner.model == "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference" and tuner.model_choice.default
    assert "llama-3.1-8b-instruct" in tuner.model_choice.said and "default" in tuner.model_choice.said


def test_a_model_the_backend_cannot_fine_tune_is_refused_before_anything_naming_where_it_is_offered() -> None:
    with pytest.raises(ConfigError) as caught:
        Tuner("openai", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference")
    message = str(caught.value)
    assert message.startswith("OpenAI cannot fine-tune meta-llama/Meta-Llama-3.1-8B-Instruct-Reference")
    assert "together (meta-llama/Meta-Llama-3.1-8B-Instruct-Reference)" in message and "openai (" not in message
    with pytest.raises(ConfigError, match="Fireworks fine-tunes models named accounts/"):
        Tuner("fireworks", "Qwen/Qwen3-8B")


def test_fit_without_a_model_on_the_cli_says_which_model_it_chose(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "estimate", str(SAMPLE), "-p", "fireworks", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "accounts/fireworks/models/qwen3-8b"
    assert "no model given: training qwen3-8b (accounts/fireworks/models/qwen3-8b)" in " ".join(err.split())


# --------------------------------------------------------------------------- one default epochs, honest prices


def test_every_backend_estimates_and_trains_the_same_default_epochs() -> None:
    stats = Stats(examples=10, total_tokens=1000)
    for name in ("openai", "together", "fireworks", "replicate"):
        tuner = Tuner(name, show_progress=False)
        assert tuner.hyperparameters.epochs == DEFAULT_EPOCHS  # what is sent, not only what is assumed
        estimate = tuner.estimate_from(stats)
        tokens = estimate.billable_tokens
        assert tokens is None or tokens == 1000 * DEFAULT_EPOCHS, name
        assert f"{DEFAULT_EPOCHS} epochs" in estimate.basis, (name, estimate.basis)


def test_a_model_nobody_knows_is_priced_by_its_size_band_only_saying_so() -> None:
    stats = Stats(examples=10, total_tokens=1000)
    unknown = Tuner("together", "someorg/Foo-13B-chat", show_progress=False).estimate_from(stats)
    assert unknown.usd is not None and unknown.assumed_band is not None
    assert "not in tuneproxy's model list" in unknown.assumed_band and "≤16B, read as 13B" in unknown.assumed_band
    assert unknown.assumed_band in unknown.basis
    known = Tuner("together", "llama-3.1-8b-instruct", show_progress=False).estimate_from(stats)
    assert known.assumed_band is None and "not in tuneproxy's model list" not in known.basis
    no_size = Tuner("together", "someorg/mystery", show_progress=False).estimate_from(stats)
    assert no_size.usd is None and "no price" in no_size.basis


def test_an_unknown_model_estimate_exits_0_saying_the_price_is_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "estimate", str(SAMPLE), "-p", "together", "-m", "someorg/mystery")
    assert code == 0, err
    assert out.startswith("unknown") and "no price for" in " ".join(out.split())


# --------------------------------------------------------------------------- tuneproxy models


def test_models_lists_names_by_backend_with_prices_and_context(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "models", "--json")
    assert code == 0, err
    rows = json.loads(out)
    by = {(r["name"], r["provider"]): r for r in rows}
    mini = by[("gpt-4o-mini", "openai")]
    assert mini["training_usd_per_m"] == pytest.approx(3.0) and mini["default"] is True
    assert mini["serving"].startswith("$0.30/$1.20 per 1M in/out") and mini["context"] == 65536
    fireworks = by[("qwen3-8b", "fireworks")]
    assert fireworks["training_usd_per_m"] == pytest.approx(0.5) and "/h dedicated" in fireworks["serving"]
    assert {r["provider"] for r in rows} == set(BACKENDS)
    assert len(rows) == len(model_rows())


def test_models_for_one_backend_only_and_an_unknown_backend_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "models", "-p", "replicate", "--json")
    assert code == 0 and {r["provider"] for r in json.loads(out)} == {"replicate"}
    code, _, err = run_cli(capsys, "models", "-p", "nosuch")
    assert code == 2 and "Unknown provider 'nosuch'" in err and "Traceback" not in err
    code, out, _ = run_cli(capsys, "models", "-p", "openai")
    assert code == 0 and "gpt-4o-mini" in out
