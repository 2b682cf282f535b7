import math

import pytest
import torch
import torch.nn.functional as F

from vesper_core.errors import UnknownNameError
from vesper_core.layers import (ERA, FlyLoRALinear, MoEFeedForward, RotaryEmbedding, apply_rotary,
                                era_reference)

C = math.sqrt(2.0 / math.pi)


def era_derivative(x: torch.Tensor, gamma: float) -> torch.Tensor:
    t = torch.tanh(C * (x + 0.044715 * x**3))
    gelu = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 3 * 0.044715 * x * x)
    return gelu + gamma * torch.sigmoid(x)


# -- ERA --------------------------------------------------------------------------------------
def test_era_matches_formula():
    x = torch.linspace(-8, 8, 401, dtype=torch.float64)
    u = C * (x + 0.044715 * x**3)
    expected = 0.5 * x * (1 + torch.tanh(u)) + 0.1 * torch.log1p(torch.exp(x))
    torch.testing.assert_close(era_reference(x, 0.1), expected)


def test_era_gradient_is_the_analytic_derivative():
    x = torch.linspace(-8, 8, 401, dtype=torch.float64, requires_grad=True)
    era_reference(x, 0.1).sum().backward()
    torch.testing.assert_close(x.grad, era_derivative(x.detach(), 0.1))


def test_era_finite_at_extremes():
    x = torch.tensor([100.0, -100.0, 1e4, -1e4], requires_grad=True)
    y = era_reference(x, 0.1)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(y[0], torch.tensor(110.0))
    torch.testing.assert_close(x.grad[:2], torch.tensor([1.1, 0.0]))


def test_era_gamma_zero_is_gelu_and_dtype_is_kept():
    x = torch.randn(64)
    torch.testing.assert_close(era_reference(x, 0.0), F.gelu(x, approximate="tanh"))
    assert era_reference(x.bfloat16(), 0.1).dtype == torch.bfloat16


def test_era_module_backend_hook():
    era = ERA(0.1)
    assert era.backend == "auto"  # the Triton kernel on CUDA tensors, the reference on CPU
    x = torch.randn(8)
    torch.testing.assert_close(era(x), era_reference(x, 0.1))
    era.backend = "reference"
    torch.testing.assert_close(era(x), era_reference(x, 0.1))
    with pytest.raises(UnknownNameError, match="reference"):
        era.backend = "nope"


# -- FlyLoRA ----------------------------------------------------------------------------------
def test_flylora_starts_equal_to_base():
    layer = FlyLoRALinear(16, 24, rank=4, alpha=8.0)
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), layer.base(x))
    assert layer.scaling == 2.0
    assert [n for n, _ in layer.named_children()] == ["base", "lora_down", "lora_up"]


def test_flylora_branch_trains_and_adds_scaled_update():
    layer = FlyLoRALinear(16, 24, rank=4, alpha=8.0)
    x = torch.randn(3, 16)
    layer(x).sum().backward()
    assert layer.lora_up.weight.grad.abs().sum() > 0  # the zero branch still learns
    with torch.no_grad():
        layer.lora_up.weight.normal_()
    expected = layer.base(x) + 2.0 * layer.lora_up(layer.lora_down(x))
    torch.testing.assert_close(layer(x), expected)


def test_flylora_rank_zero_is_plain_linear():
    layer = FlyLoRALinear(16, 24, rank=0, alpha=32.0)
    assert layer.lora_down is None and sum(p.numel() for p in layer.parameters()) == 16 * 24 + 24


def test_model_init_keeps_lora_branch_at_zero(make_model, nano_config):
    model = make_model(nano_config)
    for block in model.layers:
        for proj in (block.ffn.gate_proj, block.ffn.up_proj):
            assert proj.lora_up.weight.abs().sum() == 0 and proj.lora_up.bias.abs().sum() == 0
            assert proj.lora_down.weight.std().item() == pytest.approx(0.02, rel=0.2)


# -- RoPE -------------------------------------------------------------------------------------
def rotated_score(rope, q, k, m, n):
    qm = apply_rotary(q, *rope(m, 1))
    kn = apply_rotary(k, *rope(n, 1))
    return (qm * kn).sum()


def test_rope_scores_depend_on_relative_position_only():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(2, 1, 1, 1, 16)
    for m, n in [(0, 0), (3, 1), (7, 12), (100, 40)]:
        torch.testing.assert_close(rotated_score(rope, q, k, m, n),
                                   rotated_score(rope, q, k, m + 5, n + 5), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(rotated_score(rope, q, k, 0, 0), rotated_score(rope, q, k, 3, 0))


def test_rope_split_half_layout_and_offset():
    rope = RotaryEmbedding(4, theta=10000.0)
    cos, sin = rope(2, 3)
    assert cos.shape == (3, 2) and cos.dtype == torch.float32
    inv_freq = torch.tensor([1.0, 0.01])
    torch.testing.assert_close(cos[0], torch.cos(2 * inv_freq))
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    c, s = rope(1, 1)
    a = inv_freq
    expected = torch.cat([x[..., :2] * a.cos() - x[..., 2:] * a.sin(),
                          x[..., 2:] * a.cos() + x[..., :2] * a.sin()], dim=-1)
    torch.testing.assert_close(apply_rotary(x, c, s), expected)


def test_rope_is_not_model_state_and_stays_float32(make_model, nano_config, make_ids):
    model = make_model(nano_config)
    assert not [k for k in model.state_dict() if "rope" in k or "cached" in k or "inv_freq" in k]
    model = model.to(torch.bfloat16)
    cos, _ = model.rope(0, 4)
    assert cos.dtype == torch.float32
    long_ids = make_ids(1, nano_config.max_position_embeddings + 8)  # no hard length limit
    assert model(long_ids).logits.dtype == torch.bfloat16


# -- MoE --------------------------------------------------------------------------------------
@pytest.fixture
def moe_layer(moe_config):
    torch.manual_seed(0)
    layer = MoEFeedForward(moe_config)
    with torch.no_grad():  # make the experts differ in their LoRA branch too
        for expert in layer.experts:
            expert.gate_proj.lora_up.weight.normal_(0, 0.1)
    return layer


def test_moe_output_is_weighted_sum_of_own_experts(moe_layer):
    x = torch.randn(2, 5, 64)
    out, _ = moe_layer(x)
    probs = moe_layer.router(x).softmax(-1)  # (B, T, N)
    for b in range(2):
        for t in range(5):
            top_p, top_e = probs[b, t].topk(2)
            expected = sum(w * moe_layer.experts[e](x[b, t]) for w, e in zip(top_p / top_p.sum(), top_e))
            torch.testing.assert_close(out[b, t], expected, atol=1e-5, rtol=1e-4)


def test_moe_uniform_router_gives_aux_one_and_k_distinct_experts(moe_layer):
    with torch.no_grad():
        moe_layer.router.weight.zero_()
        moe_layer.router.bias.zero_()
    x = torch.randn(3, 7, 64)
    _, top_experts, weights = moe_layer.route(x.reshape(-1, 64))
    assert (top_experts[:, 0] != top_experts[:, 1]).all()
    torch.testing.assert_close(weights, torch.full_like(weights, 0.5))
    _, aux = moe_layer(x)
    torch.testing.assert_close(aux, torch.tensor(1.0))


def test_moe_aux_matches_switch_formula(moe_layer):
    x = torch.randn(4, 6, 64)
    probs, top_experts, _ = moe_layer.route(x.reshape(-1, 64))
    share = torch.bincount(top_experts.reshape(-1), minlength=4).float() / top_experts.numel()
    _, aux = moe_layer(x)
    torch.testing.assert_close(aux, 4 * (share * probs.mean(0)).sum())


def test_moe_bf16_without_autocast(moe_layer):
    layer = moe_layer.to(torch.bfloat16)
    out, aux = layer(torch.randn(2, 3, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
