"""Shared pieces of the Velvet parity tests: the spec as a few lines of torch, and a driver."""

from __future__ import annotations

import math

import torch

from vesper_optim.kernels import VelvetScalars

# Tolerances, with the reason. f32: the kernels fold lr_e/bc1 and 1/sqrt(bc2) on the host and
# evaluate in another order than the reference -> a few f32 ulps per step; 30 steps of
# lr ~1e-2 updates keep |diff| well below 1e-6 on O(1) values. bf16/f16: one storage ulp per step
# (the Triton interpreter truncates f32->bf16 instead of rounding to nearest even); low-precision
# runs re-sync the reference's parameter to the backend's after each checked step, because a
# biased (truncating) rounding otherwise drifts by one ulp per step over many steps.
TOLERANCES = {
    torch.float32: dict(atol=1e-6, rtol=1e-6),
    torch.bfloat16: dict(atol=1e-5, rtol=2 ** -7),
    torch.float16: dict(atol=1e-5, rtol=2 ** -10),
}


def _velvet_reference_(params, grads, exp_avgs, exp_avg_sqs, s: VelvetScalars) -> None:
    """The Velvet update, literally, with the spec's precision: math in f32, p stored in its dtype.

    (Not float64: any f32 implementation of the spec sits ~5e-6 away from a float64 one after 30
    steps on O(1) values, measured; the backends are held to 1e-6 of the f32 spec.)
    """
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        p32, g32 = p.float(), g.float()
        keep = p32.abs() < 1e-9 if s.sparse else torch.zeros_like(p32, dtype=torch.bool)
        new_p = p32 * (1.0 - s.lr_e * s.weight_decay)
        new_m = s.beta1_e * m + (1.0 - s.beta1_e) * g32
        new_v = s.beta2 * v + (1.0 - s.beta2) * g32 * g32
        new_p = new_p - (s.lr_e / s.bias_correction1) * new_m / (new_v.sqrt() / math.sqrt(s.bias_correction2) + s.eps)
        p.copy_(torch.where(keep, p32, new_p))
        m.copy_(torch.where(keep, m, new_m))
        v.copy_(torch.where(keep, v, new_v))


def make_state(sizes, dtype, *, seed=0, zeros_every=0):
    """Params (with exact zeros every ``zeros_every`` elements), f32 moments."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for n in sizes:
        p = torch.randn(n, generator=gen)
        if zeros_every:
            p[::zeros_every] = 0.0
        params.append(p.to(dtype))
    m = [torch.zeros(n) for n in sizes]
    v = [torch.zeros(n) for n in sizes]
    return params, m, v


def step_schedule(num_steps, *, sparse=False, beta1=0.9, beta2=0.999, lr=1e-2, varying=True, seed=1):
    """Yield (step, VelvetScalars) with time-varying lr_e / beta1_e (like entropy/perplexity scales)."""
    gen = torch.Generator().manual_seed(seed)
    beta1_prod = 1.0
    for t in range(1, num_steps + 1):
        if varying:
            s_e, s_p = (0.7 + 0.6 * torch.rand((2,), generator=gen, dtype=torch.float64)).tolist()
        else:
            s_e = s_p = 1.0
        lr_e = lr * s_e
        beta1_e = min(max(beta1 * s_p, 0.5), 0.999)
        beta1_prod *= beta1_e
        yield t, VelvetScalars(lr_e=lr_e, beta1_e=beta1_e, beta2=beta2, eps=1e-8, weight_decay=0.1,
                               bias_correction1=1.0 - beta1_prod, bias_correction2=1.0 - beta2 ** t, sparse=sparse)


def run_parity(backend_fn, sizes, dtype, *, sparse, num_steps, device="cpu", varying=True, seed=0, **backend_kw):
    """Run ``backend_fn`` and the reference side by side; return the two (params, m, v) triples."""
    a_p, a_m, a_v = make_state(sizes, dtype, seed=seed, zeros_every=7 if sparse else 0)
    b_p, b_m, b_v = [x.clone() for x in a_p], [x.clone() for x in a_m], [x.clone() for x in a_v]
    a_p, a_m, a_v = [[x.to(device) for x in lst] for lst in (a_p, a_m, a_v)]
    gen = torch.Generator().manual_seed(seed + 100)
    for t, scalars in step_schedule(num_steps, sparse=sparse, varying=varying):
        grads = [torch.randn(n, generator=gen).to(dtype) for n in sizes]
        backend_fn(a_p, [g.to(device) for g in grads], a_m, a_v, scalars, **backend_kw)
        _velvet_reference_(b_p, grads, b_m, b_v, scalars)
        if dtype != torch.float32:
            for i, (x, y) in enumerate(zip(a_p, b_p)):
                torch.testing.assert_close(x.cpu(), y, **TOLERANCES[dtype],
                                           msg=lambda m, i=i, t=t: f"param[{i}] at step {t} ({dtype}): {m}")
                y.copy_(x.cpu())
    return (a_p, a_m, a_v), (b_p, b_m, b_v)


def assert_states_close(got, want, dtype):
    tol = TOLERANCES[dtype]
    for name, gl, wl in zip(("param", "exp_avg", "exp_avg_sq"), got, want):
        for i, (g, w) in enumerate(zip(gl, wl)):
            t = tol if name == "param" else TOLERANCES[torch.float32]
            torch.testing.assert_close(g.cpu(), w, **t, msg=lambda m, n=name, i=i: f"{n}[{i}] ({dtype}): {m}")
