"""The demo corpus and DataConfig."""

from __future__ import annotations

import pytest

from vesper_core.errors import ConfigError
from vesper_data.config import DataConfig
from vesper_data.demo import DEMO_NAME, demo_corpus


def test_demo_corpus_is_deterministic_bilingual_and_sized():
    text = demo_corpus()
    assert DEMO_NAME == "demo"
    assert text == demo_corpus() and text != demo_corpus(seed=1)
    assert 500_000 < len(text.encode("utf-8")) < 3_000_000
    words = set(text.lower().split())
    assert {"the", "le", "la", "is", "est"} <= words
    lines = [line for line in text.splitlines() if line]
    assert len(lines) == 20000 and "" in text.splitlines()  # paragraphs
    assert all(line[0].isupper() and line[-1] in ".?" for line in lines)
    assert len(demo_corpus(100).splitlines()) < 150


def test_data_config_defaults_round_trip():
    cfg = DataConfig(dataset="demo", seq_len=64)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.tokenizer == "auto" and cfg.format == "auto" and cfg.batch_size == 4


@pytest.mark.parametrize("values, message", [
    ({"seq_len": 0}, "--seq-len must be positive, got 0"),
    ({"batch_size": -1}, "--batch-size must be positive, got -1"),
    ({"seq_len": "512"}, "--seq-len must be an integer"),
    ({"vocab_size": -5}, "--vocab-size must be 0"),
    ({"tokenizer": ""}, "--tokenizer must be a non-empty string"),
])
def test_data_config_validation(values, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**values)


def test_data_config_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown data setting.*seqlen.*valid keys: dataset, format"):
        DataConfig.from_dict({"seqlen": 3})
