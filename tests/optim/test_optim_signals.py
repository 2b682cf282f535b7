"""Entropy / perplexity scales and the logits' normalised entropy."""

from __future__ import annotations

import math

import pytest
import torch

from vesper_core.errors import ConfigError
from vesper_optim.signals import entropy_scale, normalized_entropy, perplexity_scale

V = 50257
LN_V = math.log(V)


@pytest.mark.parametrize("loss,expected", [
    (10.0, 1.3), (7.1, 1.3), (5.0, 2 * 5.0 / LN_V), (3.7, 0.7), (0.0, 0.7), (100.0, 1.3),
])
def test_entropy_scale_from_loss(loss, expected):
    assert entropy_scale(loss, vocab_size=V) == pytest.approx(expected)


def test_entropy_scale_from_normalized_entropy():
    assert entropy_scale(9.0, normalized_entropy=0.55) == pytest.approx(1.1)
    assert entropy_scale(9.0, normalized_entropy=torch.tensor(0.1)) == 0.7
    assert entropy_scale(9.0, normalized_entropy=0.9, bounds=(0.5, 2.0)) == pytest.approx(1.8)
    assert entropy_scale(9.0, normalized_entropy=float("nan")) == 1.0


@pytest.mark.parametrize("loss,expected", [
    (4.1, 0.7), (math.log(40.0), 1.0), (math.log(50.0), 0.8), (3.4, 1.3), (0.0, 1.3), (1e6, 0.7),
])
def test_perplexity_scale(loss, expected):
    assert perplexity_scale(loss) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_gives_one(bad):
    assert entropy_scale(bad, vocab_size=V) == 1.0
    assert perplexity_scale(bad) == 1.0
    assert perplexity_scale(torch.tensor(bad)) == 1.0


def test_entropy_scale_needs_vocab_or_entropy():
    with pytest.raises(ConfigError, match="vocab_size"):
        entropy_scale(3.0)
    with pytest.raises(ConfigError, match="Invalid vocab_size"):
        entropy_scale(3.0, vocab_size=1)
    with pytest.raises(ConfigError, match="scale_bounds"):
        perplexity_scale(3.0, bounds=(0.0, 1.0))


def _direct_entropy(logits):
    p = torch.softmax(logits.double(), -1)
    return (-(p * torch.log(p)).sum(-1) / math.log(logits.shape[-1])).mean()


def test_normalized_entropy_values():
    assert normalized_entropy(torch.zeros(2, 3, 11)).item() == pytest.approx(1.0, abs=1e-6)
    peaked = torch.full((4, 9), -1e4)
    peaked[:, 0] = 0
    assert normalized_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    masked = torch.randn(3, 8)
    masked[:, :2] = -float("inf")
    assert math.isfinite(normalized_entropy(masked).item())
    assert normalized_entropy(torch.zeros(0, 5)).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalized_entropy_matches_direct_and_chunking(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(3, 7, 101) * 3).to(dtype)
    whole = normalized_entropy(logits)
    chunked = normalized_entropy(logits, max_chunk_elements=250)  # 2 rows per chunk
    assert whole.dtype == torch.float32 and whole.dim() == 0
    torch.testing.assert_close(whole.double(), _direct_entropy(logits.float()), atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
