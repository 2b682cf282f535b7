"""ERA Triton kernels (fwd + bwd) vs F.gelu(x, approximate="tanh") + gamma * F.softplus(x)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton`

pytest.importorskip("triton")

from vesper_core.kernels.era_triton import era_triton  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# f32 (vs a float64 reference): a few f32 ulps; measured max |err| 3.6e-7 on grads, 3e-6 on
# outputs of ~100 (1e-6 relative is 8 ulps); torch's own f32 ERA is 1.7e-6 off on the grads.
# bf16/f16: output stored in the low-precision dtype (interpreter truncates) -> one storage ulp
# relative to the f32 reference evaluated on the same (already rounded) inputs.
TOL = {
    torch.float32: dict(atol=1e-6, rtol=1e-6),
    torch.bfloat16: dict(atol=1e-5, rtol=2 ** -7),
    torch.float16: dict(atol=1e-5, rtol=2 ** -10),
}


def era_spec(x, gamma):
    return F.gelu(x, approximate="tanh") + gamma * F.softplus(x)


def _inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 4
    flat = x.view(-1)
    extremes = torch.tensor([-100.0, 100.0, -30.0, 30.0, -20.0, 20.0, 20.5, -1e-4, 0.0, 1e-4, 88.0, -88.0])
    flat[: min(flat.numel(), extremes.numel())] = extremes[: flat.numel()]
    dy = torch.randn(shape, generator=gen)
    return x.to(dtype), dy.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("shape", [(1,), (127,), (5, 123, 7), (4099,)], ids=lambda s: "x".join(map(str, s)))
def test_era_triton_matches_reference(dtype, shape):
    gamma = 0.1
    x, dy = _inputs(shape, dtype)
    xk = x.clone().to(DEVICE).requires_grad_()
    y = era_triton(xk, gamma)
    y.backward(dy.to(DEVICE))

    ref_dtype = torch.float64 if dtype == torch.float32 else torch.float32  # reference per C7
    xr = x.to(ref_dtype).requires_grad_()
    yr = era_spec(xr, gamma)
    yr.backward(dy.to(ref_dtype))

    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y).all() and torch.isfinite(xk.grad).all()
    torch.testing.assert_close(y.cpu().double(), yr.detach().to(dtype).double(), **TOL[dtype])
    torch.testing.assert_close(xk.grad.cpu().double(), xr.grad.to(dtype).double(), **TOL[dtype])


def test_era_triton_gamma_tensor_grad_and_noncontiguous():
    x = torch.randn(33, 17).t()  # non-contiguous
    gamma = torch.tensor(0.3, requires_grad=True)
    xk = x.clone().requires_grad_()
    era_triton(xk.to(DEVICE), gamma.to(DEVICE) if DEVICE == "cpu" else gamma).sum().backward()
    xr = x.clone().requires_grad_()
    gr = torch.tensor(0.3, requires_grad=True)
    era_spec(xr, gr).sum().backward()
    torch.testing.assert_close(xk.grad, xr.grad, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(gamma.grad, gr.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.1, 0.0, -0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_era_triton_matches_layer_reference(gamma, dtype):
    """Same results as the layer's era_reference (gamma <= 0 means plain GELU_tanh)."""
    era_mod = pytest.importorskip("vesper_core.layers.era")
    x, dy = _inputs((3, 1001), dtype, seed=3)
    xk = x.clone().to(DEVICE).requires_grad_()
    era_triton(xk, gamma).backward(dy.to(DEVICE))
    xr = x.clone().requires_grad_()
    yr = era_mod.era_reference(xr, gamma)
    yr.backward(dy)
    y = era_triton(x.to(DEVICE), gamma)
    tol = TOL[dtype] if dtype != torch.float32 else dict(atol=2e-6, rtol=2e-6)  # reference is f32 here
    if dtype == torch.bfloat16:  # both sides round (RNE vs interpreter truncation): two ulps on grads
        tol = dict(atol=1e-5, rtol=2 ** -6)
    torch.testing.assert_close(y.cpu().float(), yr.detach().float(), **tol)
    torch.testing.assert_close(xk.grad.cpu().float(), xr.grad.float(), **tol)
