"""ERA activation, ``GELU_tanh(x) + gamma * softplus(x)``, as fused Triton kernels (fwd + bwd).

The spec is ``era_reference(x, gamma)`` in ``vesper_core/layers/era.py``, i.e.
``F.gelu(x, approximate="tanh") + gamma * F.softplus(x)`` (softplus threshold 20: x > 20 -> x).
Kernels compute in f32 and store in the input dtype; only the input is saved for backward.
tanh is evaluated as ``sign(u) * (1 - e^{-2|u|}) / (1 + e^{-2|u|})`` and softplus as
``max(x, 0) + log(1 + e^{-|x|})``, so no exponential ever overflows (inputs of +-100 or +-1e4 stay
finite; upstream's naive ``ln(1 + e^x)`` overflowed for x > 88, BUG-21).

``gamma`` may be a Python float or a 0-dim tensor; when it is a tensor that requires grad its
gradient ``sum(dy * softplus(x))`` is computed too.
"""

from __future__ import annotations

import os

import torch

from vesper_core.errors import BackendUnavailableError

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None
    tl = None

INSTALL_HINT = "pip install 'vesper[cuda]'  (or: pip install triton)"
SQRT_2_OVER_PI = 0.7978845608028654
GELU_COEF = 0.044715
#: Elements per program: 1024 on GPU (elementwise, memory-bound); the interpreter wants big blocks.
GPU_BLOCK = 1024
INTERPRETER_BLOCK = 8192

if triton is not None:

    @triton.jit
    def _tanh_stable(u):
        e = tl.exp(-2.0 * tl.abs(u))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(u < 0.0, -t, t)

    @triton.jit
    def _era_fwd_kernel(x_ptr, y_ptr, n, gamma, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        t = _tanh_stable(u)
        gelu = 0.5 * x * (1.0 + t)
        softplus = tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))
        y = gelu + gamma * softplus
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _era_bwd_kernel(x_ptr, dy_ptr, dx_ptr, n, gamma, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x2 = x * x
        u = 0.7978845608028654 * (x + 0.044715 * x2 * x)
        # tanh and sech^2 = 1 - tanh^2 from e = exp(-2|u|): sech^2 = 4e / (1 + e)^2 (no cancellation)
        e2 = tl.exp(-2.0 * tl.abs(u))
        inv = 1.0 / (1.0 + e2)
        t = (1.0 - e2) * inv
        t = tl.where(u < 0.0, -t, t)
        sech2 = 4.0 * e2 * inv * inv
        dgelu = 0.5 * (1.0 + t) + 0.5 * x * sech2 * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x2)
        e = tl.exp(-tl.abs(x))
        sigmoid = tl.where(x >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
        sigmoid = tl.where(x > 20.0, 1.0, sigmoid)  # softplus is the identity above the threshold
        dx = dy * (dgelu + gamma * sigmoid)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _block_size() -> int:
    return INTERPRETER_BLOCK if os.environ.get("TRITON_INTERPRET") == "1" else GPU_BLOCK


def _check(x: torch.Tensor) -> None:
    if triton is None:
        raise BackendUnavailableError(f"ERA backend 'triton' unavailable: triton is not installed; {INSTALL_HINT}")
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailableError(
            f"ERA backend 'triton' needs a CUDA tensor (got {x.device}); on CPU use backend='reference'")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"era_triton: dtype {x.dtype} not supported (float32, bfloat16, float16)")


def _gamma_value(gamma) -> float:
    return float(gamma.detach().item()) if isinstance(gamma, torch.Tensor) else float(gamma)


def era_forward(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """ERA forward: a new tensor of x's shape and dtype."""
    _check(x)
    xc = x.contiguous()
    y = torch.empty_like(xc)
    n = xc.numel()
    if n:
        block = _block_size()
        _era_fwd_kernel[(triton.cdiv(n, block),)](xc, y, n, float(gamma), BLOCK=block)
    return y.view(x.shape)


def era_backward(x: torch.Tensor, dy: torch.Tensor, gamma: float) -> torch.Tensor:
    """dL/dx of ERA given the saved input and the upstream gradient."""
    _check(x)
    xc, dyc = x.contiguous(), dy.contiguous()
    dx = torch.empty_like(xc)
    n = xc.numel()
    if n:
        block = _block_size()
        _era_bwd_kernel[(triton.cdiv(n, block),)](xc, dyc, dx, n, float(gamma), BLOCK=block)
    return dx.view(x.shape)


class EraFunction(torch.autograd.Function):
    """Autograd wrapper: saves only the input (and gamma), recomputes everything in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma) -> torch.Tensor:
        g = max(_gamma_value(gamma), 0.0)  # gamma <= 0: plain GELU_tanh, as era_reference
        ctx.gamma = g
        ctx.gamma_is_tensor = isinstance(gamma, torch.Tensor)
        ctx.save_for_backward(x)
        return era_forward(x, g)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (x,) = ctx.saved_tensors
        dx = era_backward(x, dy, ctx.gamma) if ctx.needs_input_grad[0] else None
        dgamma = None
        if ctx.gamma_is_tensor and ctx.needs_input_grad[1]:
            dgamma = (dy.float() * torch.nn.functional.softplus(x.float())).sum()
            if ctx.gamma == 0.0:  # the softplus term is switched off for gamma <= 0
                dgamma = torch.zeros_like(dgamma)
        return dx, dgamma


def era_triton(x: torch.Tensor, gamma=0.1) -> torch.Tensor:
    """``GELU_tanh(x) + gamma * softplus(x)`` with the fused Triton kernels (differentiable).

    ``gamma <= 0`` gives plain GELU_tanh, like ``vesper_core.layers.era.era_reference``.
    """
    return EraFunction.apply(x, gamma)


def compile_specs():
    """(name, jit fn, signature, constexprs) tuples for .ci/compile_kernels.py (sm_90)."""
    if triton is None:
        return []
    specs = []
    for name, dt in (("f32", "*fp32"), ("bf16", "*bf16"), ("f16", "*fp16")):
        specs.append((f"era_fwd[{name}]", _era_fwd_kernel,
                      {"x_ptr": dt, "y_ptr": dt, "n": "i32", "gamma": "fp32", "BLOCK": "constexpr"},
                      {"BLOCK": GPU_BLOCK}))
        specs.append((f"era_bwd[{name}]", _era_bwd_kernel,
                      {"x_ptr": dt, "dy_ptr": dt, "dx_ptr": dt, "n": "i32", "gamma": "fp32", "BLOCK": "constexpr"},
                      {"BLOCK": GPU_BLOCK}))
    return specs
