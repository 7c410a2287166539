"""Contract-level rules every backend relies on: options belong to their backend, capabilities are asked
of the instance, and fit validates the data once."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES
from tuneproxy.contract import Capabilities, Hyperparameters, ParameterSpec
from tuneproxy.errors import BudgetExceeded, ConfigError, UnsupportedParameter
from tuneproxy.providers.openai import OpenAIOptions, OpenAIProvider
from tuneproxy.providers.together import TogetherProvider

SAMPLE = FIXTURES / "datasets" / "sample.jsonl"


def test_another_backends_options_are_refused_not_silently_dropped():
    with pytest.raises(ConfigError, match="OpenAIOptions are not Together AI's options"):
        TogetherProvider(OpenAIOptions(project="x", timeout=5))


def test_what_a_backend_supports_is_asked_of_the_instance_built_from_its_options():
    class RankedWhenAsked(OpenAIProvider):
        """A backend whose supported parameters depend on its options (as Replicate's trainer will)."""

        @property
        def capabilities(self) -> Capabilities:
            caps = self.CAPABILITIES
            if self.options.project != "lora-trainer":
                return caps
            return caps.model_copy(update={"parameters": {**caps.parameters,
                                                          "lora_rank": ParameterSpec(maximum=64, wire="rank")}})

    with pytest.raises(UnsupportedParameter):
        RankedWhenAsked(None).translate(Hyperparameters(lora_rank=8))
    assert RankedWhenAsked({"project": "lora-trainer"}).wire_parameters(Hyperparameters(lora_rank=8)) == {"rank": 8}


def test_fit_with_a_holdout_fraction_validates_the_data_once(monkeypatch):
    import tuneproxy.tuner as tuner_module
    from tuneproxy import Tuner
    from tuneproxy.recording import Cassette, ReplayTransport

    calls: list[object] = []
    real = tuner_module.validate
    monkeypatch.setattr(tuner_module, "validate", lambda data, **kw: calls.append(data) or real(data, **kw))
    nothing = ReplayTransport(Cassette(provider="together", scenario="none", source="authored from API reference",
                                       description="no request may be made"))
    tuner = Tuner("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", budget_usd=0.000001,
                  api_key="k", transport=nothing, show_progress=False)
    with pytest.raises(BudgetExceeded, match="over the budget"):  # stops before any upload, after the split
        tuner.fit(SAMPLE, holdout=0.1)
    assert calls == [SAMPLE]
