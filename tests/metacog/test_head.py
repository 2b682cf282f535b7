import pytest
import torch

from vesper_core.errors import ConfigError
from vesper_metacog import MetacogConfig, MetaHead


def test_shapes_and_probability_ranges():
    torch.manual_seed(0)
    head = MetaHead(MetacogConfig(hidden_size=16, meta_hidden=8))
    out = head(torch.randn(2, 5, 16) * 10)
    assert out.error_logits.shape == (2, 5, 3)
    assert out.confidence_logit.shape == out.termination_logit.shape == (2, 5)
    for probs in (out.confidence, out.termination_prob, out.error_probs):
        assert probs.min() >= 0 and probs.max() <= 1


def test_fresh_head_predicts_one_half_at_zero_input_and_names_layers():
    head = MetaHead(MetacogConfig(hidden_size=8))
    out = head(torch.zeros(1, 2, 8))
    assert torch.allclose(out.confidence, torch.full((1, 2), 0.5))
    assert torch.allclose(out.error_probs, torch.full((1, 2, 3), 0.5), atol=1e-6)
    names = {k.split(".")[0] for k in head.state_dict()}
    assert names == {"error_proj", "error_classifier", "confidence_proj", "termination_proj"}


def test_detach_input_blocks_the_gradient():
    hidden = torch.randn(1, 3, 8, requires_grad=True)
    attached = MetaHead(MetacogConfig(hidden_size=8))
    attached(hidden).confidence_logit.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    hidden.grad = None
    detached = MetaHead(MetacogConfig(hidden_size=8, detach_input=True))
    out = detached(hidden)
    out.confidence_logit.sum().backward()
    assert hidden.grad is None
    assert detached.confidence_proj.weight.grad is not None


def test_wrong_hidden_size_is_a_config_error():
    with pytest.raises(ConfigError, match="hidden_size"):
        MetaHead(MetacogConfig(hidden_size=8))(torch.randn(1, 2, 9))
