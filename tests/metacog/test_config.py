import pytest

from vesper_core.errors import ConfigError
from vesper_metacog import MetacogConfig


def test_defaults_follow_upstream():
    config = MetacogConfig(hidden_size=64)
    assert (config.meta_hidden, config.num_error_types, config.confidence_threshold,
            config.max_iterations) == (256, 3, 0.85, 3)
    assert config.enable_planning and config.enable_regulation and config.enable_termination


def test_round_trip():
    config = MetacogConfig(hidden_size=32, loss_weight=0.5, max_iterations=5)
    assert MetacogConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("field,value", [
    ("meta_hidden", 0), ("num_error_types", 1.5), ("loss_weight", -1.0),
    ("confidence_threshold", 1.5), ("regulation_threshold", -0.1), ("max_iterations", 0),
    ("planning_candidates", 0), ("enable_planning", "yes"), ("hidden_size", True),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        MetacogConfig(**{"hidden_size": 16, field: value})


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match="bogus.*valid keys: hidden_size"):
        MetacogConfig.from_dict({"hidden_size": 8, "bogus": 1})


def test_for_model_reads_hidden_size():
    class Shape:
        hidden_size = 48

    assert MetacogConfig.for_model(Shape(), loss_weight=0.2).hidden_size == 48
