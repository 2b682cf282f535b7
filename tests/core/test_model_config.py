import pytest
import torch

from vesper_core.config import ModelConfig
from vesper_core.errors import ConfigError, UnknownNameError
from vesper_core.model import VesperLM
from vesper_core.presets import PRESETS, model_config


def test_defaults_follow_upstream():
    c = ModelConfig()
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads) == (32000, 768, 12, 12)
    assert (c.flylora_rank, c.flylora_alpha, c.era_gamma, c.layer_norm_eps) == (16, 32.0, 0.1, 1e-6)
    assert c.head_dim == 64 and not c.moe_enabled


@pytest.mark.parametrize("changes, words", [
    ({"num_heads": 5}, ["hidden_size=768", "num_heads=5"]),
    ({"hidden_size": 6, "num_heads": 2}, ["head_dim", "3"]),
    ({"vocab_size": 0}, ["vocab_size=0"]),
    ({"num_layers": -1}, ["num_layers=-1"]),
    ({"flylora_rank": -1}, ["flylora_rank=-1"]),
    ({"era_gamma": -0.5}, ["era_gamma=-0.5"]),
    ({"layer_norm_eps": 0.0}, ["layer_norm_eps=0.0"]),
    ({"moe_enabled": True, "moe_num_experts": 1}, ["moe_num_experts=1"]),
    ({"moe_enabled": True, "moe_top_k": 9}, ["moe_top_k=9", "moe_num_experts=8"]),
    ({"moe_enabled": True, "moe_top_k": 0}, ["moe_top_k=0"]),
    ({"hidden_size": 512.0}, ["hidden_size", "512.0"]),
    ({"num_layers": True}, ["num_layers", "True"]),
    ({"moe_enabled": "yes"}, ["moe_enabled", "'yes'"]),
    ({"rope_theta": float("inf")}, ["rope_theta", "inf"]),
])
def test_invalid_values_name_field_and_value(changes, words):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**changes)
    for word in words:
        assert word in str(info.value)


def test_moe_settings_ignored_when_disabled():
    ModelConfig(moe_num_experts=1, moe_top_k=5)  # only validated when moe_enabled


def test_rank_zero_is_allowed_and_counts_plain_linears():
    c = model_config("nano", vocab_size=97, flylora_rank=0)
    assert VesperLM(c).num_parameters() == c.num_params()


def test_numbers_are_coerced_to_float():
    c = ModelConfig(flylora_alpha=32, rope_theta=500000)
    assert isinstance(c.flylora_alpha, float) and c.rope_theta == 500000.0


def test_dict_round_trip():
    c = model_config("tiny-moe", vocab_size=50257)
    assert ModelConfig.from_dict(c.to_dict()) == c


def test_from_dict_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="'hiden_size'.*valid keys: vocab_size, hidden_size"):
        ModelConfig.from_dict({"hiden_size": 64})


def test_from_dict_skips_upstream_keys_that_had_no_effect():
    c = ModelConfig.from_dict({"hidden_size": 64, "num_heads": 2, "dropout": 0.1,
                               "use_flash_attn": True, "flylora_sparsity": 0.25})
    assert c.hidden_size == 64


def test_replace_validates_and_rejects_unknown_keys():
    c = ModelConfig()
    assert c.replace(num_layers=2).num_layers == 2
    with pytest.raises(ConfigError, match="valid keys"):
        c.replace(layers=2)
    with pytest.raises(ConfigError, match="num_heads=7"):
        c.replace(num_heads=7)
    with pytest.raises(Exception):
        c.num_layers = 3  # frozen


def test_presets_registered_with_alias():
    assert set(PRESETS.names()) == {"nano", "tiny", "small", "medium", "large", "xlarge",
                                    "tiny-moe", "medium-moe", "large-moe"}
    assert model_config("1b") == model_config("xlarge")
    big = model_config("large-moe")
    shape = (big.num_layers, big.num_heads, big.hidden_size, big.intermediate_size)
    assert shape == (24, 16, 1024, 4096)
    assert (big.moe_enabled, big.moe_num_experts, big.moe_top_k) == (True, 16, 2)
    nano = model_config("nano")
    assert (nano.num_layers, nano.num_heads, nano.hidden_size, nano.intermediate_size,
            nano.flylora_rank, nano.max_position_embeddings) == (2, 2, 64, 256, 8, 1024)


def test_unknown_preset_suggests_closest():
    with pytest.raises(UnknownNameError, match="did you mean 'tiny-moe'.*choices: large"):
        model_config("tiny-mo")


def test_preset_overrides_are_validated():
    assert model_config("tiny", vocab_size=50257).vocab_size == 50257
    with pytest.raises(ConfigError, match="valid keys"):
        model_config("tiny", vocab=1)


@pytest.mark.parametrize("name", sorted(PRESETS.names()))
def test_every_preset_builds_on_meta_with_exact_count(name):
    config = model_config(name)
    with torch.device("meta"):
        model = VesperLM(config)
    assert model.num_parameters() == config.num_params()


@pytest.mark.parametrize("name, millions", [("tiny", 19.44), ("small", 60.05), ("tiny-moe", 34.42)])
def test_counts_match_upstream_reference_table(name, millions):
    config = model_config(name, vocab_size=50257)
    with torch.device("meta"):
        model = VesperLM(config)
    assert round(model.num_parameters() / 1e6, 2) == millions
    assert round(config.num_params() / 1e6, 2) == millions


def test_formula_matches_spec_for_larger_presets():
    table = {"medium": 153.55, "large": 458.67, "xlarge": 1323.95, "medium-moe": 759.59,
             "large-moe": 5054.17}
    for name, millions in table.items():
        assert round(model_config(name, vocab_size=50257).num_params() / 1e6, 2) == millions
