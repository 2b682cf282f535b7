"""CPU fused path (torch._fused_adamw_ with remapped scalars) vs the reference."""

from __future__ import annotations

import pytest
import torch
from _velvet_helpers import _velvet_reference_, assert_states_close, run_parity, step_schedule

from vesper_core.errors import ConfigError
from vesper_optim.kernels import VelvetScalars
from vesper_optim.kernels.velvet_fused_cpu import clip_grad_scale_, velvet_fused_cpu_

pytestmark = pytest.mark.skipif(not hasattr(torch, "_fused_adamw_"), reason="torch without _fused_adamw_")
SIZES = [1, 127, 1000, 4099, 10007]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("varying", [True, False], ids=["varying", "constant"])
def test_velvet_fused_cpu_matches_reference(dtype, varying):
    got, want = run_parity(velvet_fused_cpu_, SIZES, dtype, sparse=False, num_steps=30, varying=varying)
    assert_states_close(got, want, dtype)


def test_velvet_fused_cpu_matches_adamw_when_adaptive_off():
    """Constant beta1 and lr: Velvet is AdamW, so the result equals torch.optim.AdamW(fused=True)."""
    torch.manual_seed(0)
    ps = [torch.randn(n) for n in SIZES]
    qs = [torch.nn.Parameter(p.clone()) for p in ps]
    opt = torch.optim.AdamW(qs, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, fused=True)
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    for t in range(1, 11):
        gs = [torch.randn_like(p) for p in ps]
        for q, g in zip(qs, gs):
            q.grad = g.clone()
        opt.step()
        velvet_fused_cpu_(ps, gs, ms, vs, VelvetScalars(
            lr_e=1e-2, beta1_e=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
            bias_correction1=1 - 0.9 ** t, bias_correction2=1 - 0.999 ** t, sparse=False))
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q.detach(), atol=1e-6, rtol=1e-6)


def test_velvet_fused_cpu_grad_scale_is_a_global_clip():
    torch.manual_seed(1)
    ps = [torch.randn(n) for n in SIZES]
    gs = [10 * torch.randn(n) for n in SIZES]
    ref_p, ref_g = [p.clone() for p in ps], [g.clone() for g in gs]
    ms, vs = [torch.zeros(n) for n in SIZES], [torch.zeros(n) for n in SIZES]
    ref_m, ref_v = [torch.zeros(n) for n in SIZES], [torch.zeros(n) for n in SIZES]
    _, s = next(step_schedule(1))
    norm, scale = clip_grad_scale_(gs, max_norm=1.0)
    ref_norm = torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(g) for g in ref_g], 1.0)  # no grads: norm only
    torch.testing.assert_close(norm, torch.linalg.vector_norm(torch.cat(ref_g)))
    coef = min(1.0, 1.0 / (float(norm) + 1e-6))
    ref_g = [g * coef for g in ref_g]
    velvet_fused_cpu_(ps, gs, ms, vs, s, grad_scale=scale)
    _velvet_reference_(ref_p, ref_g, ref_m, ref_v, s)
    assert_states_close((ps, ms, vs), (ref_p, ref_m, ref_v), torch.float32)
    for g, rg in zip(gs, ref_g):  # grads are left clipped, as after clip_grad_norm_
        torch.testing.assert_close(g, rg, atol=1e-6, rtol=1e-5)
    del ref_norm


def test_velvet_fused_cpu_refuses_sparse():
    with pytest.raises(ConfigError, match="sparse"):
        velvet_fused_cpu_([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], VelvetScalars(
            lr_e=1e-3, beta1_e=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, bias_correction1=0.1,
            bias_correction2=1e-3, sparse=True))
