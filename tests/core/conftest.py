"""Small configs and factories shared by the vesper_core tests (fixtures only: no imports needed)."""

import pytest
import torch

from vesper_core.config import ModelConfig
from vesper_core.model import VesperLM
from vesper_core.presets import model_config

VOCAB = 97


@pytest.fixture
def nano_config() -> ModelConfig:
    return model_config("nano", vocab_size=VOCAB)


@pytest.fixture
def moe_config() -> ModelConfig:
    return model_config("nano", vocab_size=VOCAB, moe_enabled=True, moe_num_experts=4, moe_top_k=2)


@pytest.fixture
def make_model():
    """``make_model(config, seed=0)``: a VesperLM in eval mode, deterministic per seed."""

    def make(config: ModelConfig, seed: int = 0) -> VesperLM:
        torch.manual_seed(seed)
        return VesperLM(config).eval()

    return make


@pytest.fixture
def make_ids():
    """``make_ids(batch, length, seed=1)``: random token ids below the test vocabulary."""

    def make(batch: int, length: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, VOCAB, (batch, length), generator=g)

    return make
