"""The price catalogue: every row loads with its provenance, one matcher picks prices, quantities become dollars."""

from __future__ import annotations

import datetime as dt

import pytest

from tuneproxy.contract import Quantity
from tuneproxy.prices import (
    QUANTITY_PRICE_KIND,
    Catalogue,
    Price,
    PriceCatalogueError,
    load_catalogue,
    parameter_count_b,
    price_quantities,
)

TODAY = dt.date(2026, 11, 29)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


def price(**fields) -> Price:
    base = {"provider": "openai", "kind": "training", "usd": 1.0, "per": 1_000_000,
            "source": "https://example.com/pricing", "as_of": dt.date(2026, 11, 1)}
    return Price(**{**base, **fields})


# --- the packaged catalogue -------------------------------------------------------------------------------------


def test_packaged_catalogue_loads_rows_for_every_provider(catalogue):
    assert {p.provider for p in catalogue.prices} == {"openai", "together", "fireworks", "replicate", "local"}


def test_every_service_row_cites_a_url_and_a_real_date(catalogue):
    for row in catalogue.prices:
        assert type(row.as_of) is dt.date, row
        if row.provider != "local":
            assert row.source.startswith("https://"), row


def test_the_local_row_is_free_and_explains_how_to_set_a_price(catalogue):
    (row,) = catalogue.rows("local", "gpu_hour")
    assert row.usd == 0.0 and row.source == "local" and "price_per_gpu_hour" in row.note


def test_load_catalogue_is_cached(catalogue):
    assert load_catalogue() is catalogue


def test_every_quantity_kind_has_a_price_kind():
    assert QUANTITY_PRICE_KIND["training_tokens"] == "training"
    assert QUANTITY_PRICE_KIND["preference_training_tokens"] == "preference_training"
    assert QUANTITY_PRICE_KIND["hardware_seconds"] == "hardware_second"
    assert set(QUANTITY_PRICE_KIND) == set(Quantity.model_fields["kind"].annotation.__args__)


# --- parameter counts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("llama-8B", 8), ("llama-2-70b-chat", 70), ("deepseek-v3-671b", 671), ("qwen2-1.5b-instruct", 1.5),
    ("mixtral-8x7b", 56), ("Mixtral-8x22B-Instruct", 176), ("llama-3.1-8b", 8), ("qwen2.5-72b", 72),
    ("qwen3-30b-a3b", 30), ("Qwen3-235B-A22B", 235), ("gemma2-27b-it", 27),
    ("accounts/fireworks/models/llama-v3p1-8b-instruct", 8),
])
def test_parameter_count_is_read_as_a_whole_token(name, expected):
    assert parameter_count_b(name) == expected


@pytest.mark.parametrize("name", ["gpt-4o-mini", "bert-base", "phi3b", "llama-v3p1", "web-1b2c", "deepseek-v3"])
def test_names_without_a_count_give_none(name):
    assert parameter_count_b(name) is None


def test_an_active_count_before_an_expert_count_is_not_the_total():
    assert parameter_count_b("Llama-4-Maverick-17B-128E-Instruct") is None


# --- matching -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "band_max", "usd"), [
    ("deepseek-v3-671b", None, 10.00),  # "1b" inside "671b" must not make it a small model
    ("gemma2-27b-it", 80, 3.00),  # nor "7b" inside "27b"
    ("mixtral-8x7b", 80, 3.00),  # 8x7b = 56B
    ("accounts/fireworks/models/llama-v3p1-8b-instruct", 16, 0.50),
    ("accounts/fireworks/models/qwen3-235b-a22b", 300, 6.00),
])
def test_fireworks_sft_is_priced_by_size_band(catalogue, model, band_max, usd):
    row = catalogue.match("fireworks", model, "training")
    assert (row.max_params_b, row.usd) == (band_max, usd)


def test_fireworks_dpo_uses_its_own_band_rates(catalogue):
    assert catalogue.match("fireworks", "deepseek-v3-671b", "preference_training").usd == 20.00


def test_together_llama_8b_reference_is_in_the_16b_bracket(catalogue):
    row = catalogue.match("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "training")
    assert (row.max_params_b, row.usd) == (16, 0.48)


def test_together_qwen_72b_is_in_the_70_to_100b_bracket(catalogue):
    row = catalogue.match("together", "Qwen/Qwen2.5-72B-Instruct", "training")
    assert (row.min_params_b, row.max_params_b, row.usd) == (69, 100, 2.90)


def test_together_dpo_is_two_and_a_half_times_sft(catalogue):
    assert catalogue.match("together", "Qwen/Qwen2.5-72B-Instruct", "preference_training").usd == 7.25


def test_together_size_ignores_the_job_id_after_the_colon(catalogue):
    # a uuid segment such as "072b" must not be read as a 72B count
    row = catalogue.match("together", "acme/Meta-Llama-3.1-8B-Instruct-Reference:support:ft-9a1e-072b", "training")
    assert row.max_params_b == 16


def test_together_model_above_every_bracket_has_no_price(catalogue):
    assert catalogue.match("together", "deepseek-ai/DeepSeek-V3-671B", "training") is None


def test_openai_dated_snapshot_matches_its_model(catalogue):
    row = catalogue.match("openai", "gpt-4o-mini-2024-07-18", "training")
    assert (row.model, row.usd) == ("gpt-4o-mini", 3.00)


def test_openai_mini_and_full_models_are_not_confused(catalogue):
    assert catalogue.match("openai", "gpt-4.1-mini", "training").usd == 5.00
    assert catalogue.match("openai", "gpt-4.1", "training").usd == 25.00
    assert catalogue.match("openai", "gpt-4.1-2025-04-14", "training").model == "gpt-4.1"


def test_a_variant_word_after_a_model_id_is_not_a_snapshot():
    only_full = Catalogue([price(model="gpt-4.1", usd=25.0)])
    assert only_full.match("openai", "gpt-4.1-mini", "training") is None
    assert only_full.match("openai", "gpt-4.1.5", "training") is None


def test_fine_tuned_openai_model_is_priced_as_its_base(catalogue):
    name = "ft:gpt-4o-mini-2024-07-18:acme::abc"
    assert catalogue.match("openai", name, "inference_input").usd == 0.30
    assert catalogue.match("openai", name, "inference_output").usd == 1.20


def test_unknown_model_gets_no_price_rather_than_a_wrong_one(catalogue):
    assert catalogue.match("openai", "gpt-5-turbo", "training") is None
    assert catalogue.match("fireworks", "accounts/acme/models/my-lora", "training") is None


def test_match_is_never_by_substring():
    cat = Catalogue([price(model="mini", usd=9.0)])
    assert cat.match("openai", "gpt-4o-mini", "training") is None


def test_alias_matches_exactly():
    cat = Catalogue([price(model="gpt-4o-2024-08-06", aliases=("gpt-4o",), usd=25.0)])
    assert cat.match("openai", "gpt-4o", "training").usd == 25.0


def test_longest_prefix_wins():
    cat = Catalogue([price(model="m", usd=1.0), price(model="m-large", usd=2.0)])
    assert cat.match("openai", "m-large-2025-01-01", "training").usd == 2.0


def test_exact_id_wins_over_size_class():
    cat = Catalogue([price(model="big-8b", usd=7.0), price(max_params_b=16, usd=1.0)])
    assert cat.match("openai", "big-8b", "training").usd == 7.0
    assert cat.match("openai", "other-8b", "training").usd == 1.0


def test_replicate_hardware_is_matched_exactly(catalogue):
    assert catalogue.match("replicate", None, "hardware_second", "8x gpu-a40-large").usd == 0.0058
    assert catalogue.match("replicate", None, "hardware_second", "gpu-a40-large").usd == 0.000725
    assert catalogue.match("replicate", None, "hardware_second", "gpu-a40") is None


def test_fireworks_deployment_hour_keeps_the_range_of_captured_prices(catalogue):
    row = catalogue.match("fireworks", None, "deployment_hour", "NVIDIA_H100_80GB")
    assert (row.usd_low, row.usd) == (4.00, 5.80)


def test_local_gpu_hour_row_applies_to_any_hardware(catalogue):
    assert catalogue.match("local", None, "gpu_hour", "RTX 4090").provider == "local"


# --- the Price model ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"model": "a", "max_params_b": 16},  # two selectors
    {},  # no selector on a token price
    {"hardware": "gpu-t4"},  # hardware on a token price
    {"model": "a", "per": 0},
    {"model": "a", "usd": -1.0},
    {"min_params_b": 80, "max_params_b": 16},
    {"model": "a", "surprise": 1},
])
def test_price_rejects_malformed_rows(fields):
    with pytest.raises(ValueError):
        price(**fields)


def test_price_is_frozen():
    with pytest.raises(ValueError):
        price(model="a").usd = 2.0


def test_overlapping_size_classes_are_rejected():
    with pytest.raises(PriceCatalogueError, match="overlapping"):
        Catalogue([price(max_params_b=20), price(min_params_b=16, max_params_b=80)])


# --- pricing quantities --------------------------------------------------------------------------------------------


def test_quantities_are_summed_with_a_line_each(catalogue):
    pricing = price_quantities("openai", "gpt-4o-mini-2024-07-18", [
        Quantity(kind="training_tokens", amount=1_234_000),
        Quantity(kind="input_tokens", amount=1_000_000),
    ], catalogue=catalogue, today=TODAY)
    assert pricing.usd == pytest.approx(1.234 * 3.00 + 0.30)
    assert pricing.lines[0].startswith("1,234,000 training tokens × $3.00/1M (openai gpt-4o-mini, as of 2026-05-07)")
    assert pricing.sources == ["https://developers.openai.com/api/docs/pricing (as of 2026-05-07)"]


def test_range_comes_from_quantity_low_and_high(catalogue):
    pricing = price_quantities("openai", "gpt-4o-mini", [
        Quantity(kind="training_tokens", amount=2_000_000, low=1_000_000, high=4_000_000),
    ], catalogue=catalogue, today=TODAY)
    assert (pricing.usd, pricing.usd_low, pricing.usd_high) == pytest.approx((6.0, 3.0, 12.0))


def test_range_uses_the_lowest_captured_price(catalogue):
    pricing = price_quantities("fireworks", "m", [Quantity(kind="deployment_hours", amount=2,
                                                           hardware="NVIDIA_H100_80GB")], catalogue=catalogue)
    assert (pricing.usd_low, pricing.usd, pricing.usd_high) == pytest.approx((8.0, 11.6, 11.6))


def test_replicate_training_is_seconds_times_hardware_rate(catalogue):
    pricing = price_quantities("replicate", "meta/llama-2-7b", [
        Quantity(kind="hardware_seconds", amount=502.71, hardware="8x gpu-a40-large"),
    ], catalogue=catalogue, today=TODAY)
    assert pricing.usd == pytest.approx(2.915718)


def test_a_missing_price_makes_the_total_unknown_and_says_so(catalogue):
    pricing = price_quantities("openai", "gpt-4o-mini", [
        Quantity(kind="training_tokens", amount=1_000_000),
        Quantity(kind="training_tokens", amount=1_000_000, model="gpt-9"),
    ], catalogue=catalogue, today=TODAY)
    assert (pricing.usd, pricing.usd_low, pricing.usd_high) == (None, None, None)
    assert pricing.lines[1] == "no price for 1,000,000 training tokens on openai gpt-9 in the catalogue"


def test_a_quantitys_own_model_overrides_the_job_model(catalogue):
    pricing = price_quantities("openai", "gpt-4.1", [
        Quantity(kind="output_tokens", amount=1_000_000, model="ft:gpt-4o-mini-2024-07-18:acme::abc"),
    ], catalogue=catalogue, today=TODAY)
    assert pricing.usd == pytest.approx(1.20)


def test_extra_prices_are_matched_before_the_catalogue(catalogue):
    mine = price(provider="local", kind="gpu_hour", usd=1.5, per=1, source="user setting")
    pricing = price_quantities("local", "llama-3.1-8b", [Quantity(kind="gpu_hours", amount=2)],
                               extra=[mine], catalogue=catalogue, today=TODAY)
    assert pricing.usd == pytest.approx(3.0)
    assert pricing.sources == ["user setting (as of 2026-11-01)"]


def test_without_extra_the_local_trainer_costs_nothing(catalogue):
    pricing = price_quantities("local", "llama-3.1-8b", [Quantity(kind="gpu_hours", amount=2)],
                               catalogue=catalogue, today=TODAY)
    assert (pricing.usd, pricing.stale) == (0.0, False)


def test_prices_older_than_90_days_are_stale():
    cat = Catalogue([price(model="m", as_of=dt.date(2026, 1, 1))])
    quantities = [Quantity(kind="training_tokens", amount=1)]
    assert price_quantities("openai", "m", quantities, catalogue=cat, today=dt.date(2026, 4, 1)).stale is False
    assert price_quantities("openai", "m", quantities, catalogue=cat, today=dt.date(2026, 4, 2)).stale is True


def test_no_quantities_cost_nothing(catalogue):
    pricing = price_quantities("openai", "gpt-4o-mini", [], catalogue=catalogue, today=TODAY)
    assert (pricing.usd, pricing.lines, pricing.sources) == (0.0, [], [])


# --- malformed catalogue files -----------------------------------------------------------------------------------

GOOD = '''
[[price]]
provider = "openai"
kind = "training"
model = "gpt-4o-mini"
usd = 3.0
per = 1000000
source = "https://example.com/pricing"
as_of = 2026-05-07
'''


def test_a_catalogue_file_can_be_loaded_from_a_path(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(GOOD, encoding="utf-8")
    assert load_catalogue(path).match("openai", "gpt-4o-mini", "training").usd == 3.0


def test_a_malformed_entry_is_named_in_the_error(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(GOOD + GOOD.replace('model = "gpt-4o-mini"', 'model = "gpt-4.1"').replace("usd = 3.0",
                                                                                            'usd = "cheap"'))
    with pytest.raises(PriceCatalogueError, match=r"entry 2 \(provider='openai', kind='training', model='gpt-4.1'\)"):
        load_catalogue(path)


def test_a_service_price_without_a_url_source_is_rejected(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(GOOD.replace("https://example.com/pricing", "a blog I read"), encoding="utf-8")
    with pytest.raises(PriceCatalogueError, match="entry 1 .*source must be the URL"):
        load_catalogue(path)


def test_a_date_written_as_a_string_is_rejected(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(GOOD.replace("as_of = 2026-05-07", 'as_of = "2026-05-07"'), encoding="utf-8")
    with pytest.raises(PriceCatalogueError, match="as_of must be a TOML date"):
        load_catalogue(path)


def test_two_rows_for_the_same_model_are_rejected(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(GOOD + GOOD, encoding="utf-8")
    with pytest.raises(PriceCatalogueError, match="entry 2 .*same model 'gpt-4o-mini'"):
        load_catalogue(path)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text("[[price]\n", encoding="utf-8")
    with pytest.raises(PriceCatalogueError, match="prices.toml is not valid TOML"):
        load_catalogue(path)
