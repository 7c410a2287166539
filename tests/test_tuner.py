"""Tuner(...).fit(data): everything that must happen, or be refused, before anything is paid."""

from __future__ import annotations

import datetime as dt
import json
import warnings

import pytest

from tests.conftest import FIXTURES
from tuneproxy import Tuner
from tuneproxy.errors import (
    BudgetExceeded,
    ConfigError,
    DatasetError,
    MissingCredentials,
    ProviderSunset,
    UnsupportedParameter,
)
from tuneproxy.recording import Cassette, ReplayTransport
from tuneproxy.tuner import DatasetWarning, SunsetWarning

SAMPLE = FIXTURES / "datasets" / "sample.jsonl"


def silent(provider: str) -> ReplayTransport:
    """A transport with nothing to serve: any request at all fails the test."""
    return ReplayTransport(Cassette(provider=provider, scenario="none", source="authored from API reference",
                                    description="no request may be made"))


def clock(day: dt.date):
    return lambda: dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.timezone.utc)


def tuner(provider="openai", model="gpt-4o-mini-2024-07-18", transport=None, **kw) -> Tuner:
    kw.setdefault("clock", clock(dt.date(2026, 11, 28)))
    return Tuner(provider, model, api_key="test-key", poll_interval=0, show_progress=False,
                 transport=transport or silent(provider), **kw)


def test_unknown_setting_lists_the_portable_names():
    with pytest.raises(ConfigError, match="n_epochs.*portable names: epochs"):
        Tuner("openai", "gpt-4o-mini", n_epochs=3)


def test_out_of_range_hyperparameter_is_a_clear_error():
    with pytest.raises(ConfigError, match="lora_dropout"):
        Tuner("together", "llama", lora_dropout=1.5)


def test_parameter_the_provider_lacks_names_the_providers_that_have_it():
    with pytest.raises(UnsupportedParameter) as err:
        Tuner("openai", "gpt-4o-mini", lora_rank=16)
    message = str(err.value)
    assert "OpenAI does not support: lora_rank" in message
    assert "Together AI" in message and "Fireworks AI" in message


def test_after_the_sunset_date_openai_fit_raises_before_any_upload():
    transport = silent("openai")
    with pytest.raises(ProviderSunset, match="2027-01-06"):
        tuner(transport=transport, clock=clock(dt.date(2027, 1, 6))).fit(SAMPLE)
    assert transport.log == []


def test_before_the_sunset_date_openai_fit_warns_with_the_date():
    t = tuner(clock=clock(dt.date(2026, 12, 1)))
    with pytest.warns(SunsetWarning, match="2027-01-06.*36 days"):
        t.check_sunset()


def test_a_provider_without_a_sunset_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuner("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference").check_sunset()


def test_data_with_errors_stops_fit_before_any_request(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(SAMPLE.read_text() + '{"messages": [{"role": "user", "content": 7}]}\n')
    transport = silent("together")
    with pytest.raises(DatasetError, match="line 401: TP303"):
        tuner("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", transport=transport).fit(bad)
    assert transport.log == []


def test_estimate_over_budget_stops_fit_before_any_request():
    transport = silent("openai")
    with pytest.raises(BudgetExceeded, match=r"over the budget of \$0.01"):
        tuner(transport=transport, budget_usd=0.01, epochs=3).fit(SAMPLE)
    assert transport.log == []


def test_estimate_counts_exact_tokens_times_epochs_at_the_dated_price():
    estimate = tuner(epochs=2).estimate(SAMPLE)
    assert estimate.billable_tokens == 2 * 36_224
    assert estimate.usd == pytest.approx(2 * 36_224 * 3.0 / 1e6)
    assert "2026" in estimate.basis and not estimate.authoritative


def test_missing_key_names_the_environment_variable():
    t = Tuner("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", show_progress=False)
    with pytest.raises(MissingCredentials, match="TOGETHER_API_KEY"):
        t.fit(SAMPLE)


def test_warnings_in_the_data_are_reported_but_do_not_stop_the_estimate(tmp_path):
    few = tmp_path / "few.jsonl"
    few.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:50]))
    with pytest.warns(DatasetWarning, match="TP501"):
        tuner().estimate(few)


def test_holdout_file_that_leaks_into_training_is_warned_about(tmp_path):
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text(SAMPLE.read_text().splitlines(keepends=True)[5])
    report = tuner().validate(SAMPLE, holdout=holdout)
    assert [f["line"] for f in report.of("TP506")] == [6]


def test_repr_of_a_tuner_shows_no_key():
    t = tuner()
    assert "test-key" not in repr(t) and "test-key" not in repr(t.provider)


def test_estimate_for_an_open_model_states_the_token_count_error_bound():
    estimate = Tuner("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", epochs=3).estimate(SAMPLE)
    assert estimate.usd is not None and "±25%" in estimate.basis


def test_estimate_needs_no_api_key():
    assert Tuner("openai", "gpt-4o-mini", epochs=1).estimate(SAMPLE).billable_tokens == 36_224


def test_a_holdout_with_errors_stops_fit_before_any_request():
    transport = silent("together")
    holdout = FIXTURES / "datasets" / "bad" / "weight_invalid.jsonl"
    with pytest.raises(DatasetError, match="holdout has 3 error"):
        tuner("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", transport=transport).fit(SAMPLE, holdout)
    assert transport.log == []


def test_a_small_holdout_is_not_warned_about_its_size():
    lines = SAMPLE.read_text().splitlines(keepends=True)
    report = tuner().validate([json.loads(x) for x in lines[:20]], check_size=False)
    assert report.ok and "TP501" not in report.counts and "TP502" not in report.counts


def test_a_budget_cannot_be_kept_when_no_price_is_known_so_fit_stops_before_any_request():
    transport = silent("openai")
    with pytest.raises(BudgetExceeded, match="cannot be told"):
        tuner(model="gpt-3.5-turbo-0125", transport=transport, budget_usd=5, epochs=1).fit(SAMPLE)
    assert transport.log == []


def test_a_negative_budget_is_a_usage_error():
    with pytest.raises(ConfigError, match="zero or more"):
        tuner(budget_usd=-1)


def test_stratifying_by_a_key_no_example_has_is_an_error_not_a_silent_unstratified_split():
    transport = silent("openai")
    with pytest.raises(ConfigError, match="no_such_key"):
        tuner(transport=transport, epochs=1).fit(SAMPLE, holdout=0.1, stratify="no_such_key")
    assert transport.log == []
