"""Velvet on CPU through torch's own fused AdamW kernel (``torch._fused_adamw_``).

Why this is exact: the fused AdamW kernel computes, per element,

    p <- p - lr*wd*p ;  m <- lerp(m, g, 1-beta1) ;  v <- beta2*v + (1-beta2)*g^2
    p <- p - (lr / (1-beta1^step)) * m / (sqrt(v) / sqrt(1-beta2^step) + eps)

We call it with ``beta1 = beta1_e`` and a step of 2^30, so that both of the kernel's own bias
corrections, ``1 - beta^step`` in float64, are exactly 1. That holds while ``beta^(2^30) < 2^-54``,
i.e. for every ``beta < 1 - 54 ln2 / 2^30 = 0.99999996514`` (measured against the kernel: beta2 =
0.99999996 is exact, 0.99999999 is off by 1e-4): :func:`fused_beta_ok` is that test, which the
backend declares (``functional.BACKENDS["fused"]``), so Velvet never sends it a beta it cannot run.
Velvet's corrections (``bc1 = 1 - prod_k beta1_e(k)``, which no fixed-beta1 formula can express,
and ``bc2``) are folded into the scalars instead::

    m/(sqrt(v)/sqrt(bc2) + eps) = sqrt(bc2) * m/(sqrt(v) + eps*sqrt(bc2))
    lr'  = lr_e * sqrt(bc2) / bc1        eps' = eps * sqrt(bc2)        wd' = wd * lr_e / lr'

so that ``lr'*wd' = lr_e*wd`` (the decay) and the update is the reference's up to f32 rounding
order (parity test: 30 steps with time-varying lr_e and beta1_e, 1e-6). The step tensor is only
read by the kernel (never incremented), so one shared constant tensor is passed for every param.

dtypes: the fused kernel needs moments of the parameter's dtype, but Velvet keeps f32 moments for
bf16/f16 parameters; those groups go through f32 copies of p and g (math in f32, stored back in
p's dtype, exactly the reference semantics), at the cost of three extra copies.

``sparse=True`` is not supported (AdamW has no per-element skip): the backend declares it, so
Velvet sends sparse-aware groups elsewhere (auto) or refuses the explicit choice at construction;
called directly with ``scalars.sparse`` true it raises ConfigError.

``grad_scale`` (optional, a 1-element f32 tensor): the kernel divides the gradients by it *in
place* before the math. ``clip_grad_scale_`` below returns such a tensor for a global-norm clip,
so the clip costs one norm pass and no separate multiply pass over the gradients; afterwards
``.grad`` holds the clipped gradients, as after ``clip_grad_norm_``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from vesper_core.errors import BackendUnavailableError, ConfigError
from vesper_optim.kernels import VelvetScalars
from vesper_optim.kernels._common import check_lists

#: The step the kernel is told: its bias corrections 1 - beta^STEP are exactly 1.0 (see fused_beta_ok).
_HUGE_STEP = float(2 ** 30)
_STEP_TENSORS: dict[torch.device, torch.Tensor] = {}


def fused_cpu_available() -> tuple[bool, str]:
    if not hasattr(torch, "_fused_adamw_"):
        return False, f"torch {torch.__version__} has no torch._fused_adamw_ (needs torch >= 2.4)"
    return True, ""


def fused_beta_ok(beta: float) -> bool:
    """Whether the kernel's own ``1 - beta**2^30`` (float64) is exactly 1.0, so the remap is exact.

    True for 0 <= beta < 0.99999996514 (beta^(2^30) < 2^-54); the test is the kernel's arithmetic.
    """
    beta = float(beta)
    return 0.0 <= beta < 1.0 and 1.0 - beta ** _HUGE_STEP == 1.0


def _step_tensor(device: torch.device) -> torch.Tensor:
    t = _STEP_TENSORS.get(device)
    if t is None:
        t = _STEP_TENSORS[device] = torch.tensor(_HUGE_STEP, dtype=torch.float32, device=device)
    return t


def fused_scalars(s: VelvetScalars) -> dict:
    """Map Velvet's scalars to ``_fused_adamw_``'s (see module docstring)."""
    lr_e, eps, weight_decay = s.lr_e, s.eps, s.weight_decay
    bias_correction1, bias_correction2 = s.bias_correction1, s.bias_correction2
    if not bias_correction1 > 0.0 or not bias_correction2 > 0.0:
        raise ConfigError(f"bias corrections must be > 0 (got {bias_correction1!r}, {bias_correction2!r})")
    for name, beta in (("beta1_e", s.beta1_e), ("beta2", s.beta2)):
        if not fused_beta_ok(beta):
            raise ConfigError(f"the 'fused' Velvet backend cannot represent {name}={beta!r} (needs 0 <= beta < "
                              f"0.99999996); use the 'foreach' backend")
    sqrt_bc2 = math.sqrt(bias_correction2)
    lr_f = lr_e * sqrt_bc2 / bias_correction1
    wd_f = (weight_decay * lr_e / lr_f) if lr_f != 0.0 else 0.0
    return dict(lr=lr_f, beta1=float(s.beta1_e), beta2=float(s.beta2), weight_decay=wd_f, eps=eps * sqrt_bc2,
                amsgrad=False, maximize=False)


def velvet_fused_cpu_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                      exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
                      scalars: VelvetScalars, *, grad_scale: torch.Tensor | None = None) -> None:
    """In-place Velvet update via ``torch._fused_adamw_`` (one call for all f32 params).

    ``grad_scale``: optional 1-element f32 tensor; grads are divided by it in place first.
    Raises ConfigError for ``scalars.sparse`` (use the foreach/reference backend for sparse groups).
    """
    if scalars.sparse:
        raise ConfigError("the 'fused' Velvet backend has no sparse-aware update (structural zeros left "
                          "untouched); use the 'foreach' backend for sparse param groups")
    ok, reason = fused_cpu_available()
    if not ok:
        raise BackendUnavailableError(f"velvet backend 'fused' unavailable: {reason}")
    check_lists(params, grads, exp_avgs, exp_avg_sqs)
    if not params:
        return
    kw = fused_scalars(scalars)

    f32: dict[torch.device, list[list[torch.Tensor]]] = {}
    low: list[tuple[torch.Tensor, ...]] = []
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        if p.dtype == torch.float32:
            f32.setdefault(p.device, [[], [], [], []])
            for lst, t in zip(f32[p.device], (p, g, m, v)):
                lst.append(t)
        else:
            low.append((p, g, m, v))

    for device, (ps, gs, ms, vs) in f32.items():
        torch._fused_adamw_(ps, gs, ms, vs, [], [_step_tensor(device)] * len(ps), **kw,
                            grad_scale=grad_scale, found_inf=None)
    if low:
        by_device: dict[torch.device, list[tuple[torch.Tensor, ...]]] = {}
        for quad in low:
            by_device.setdefault(quad[0].device, []).append(quad)
        for device, quads in by_device.items():
            p32 = [q[0].float() for q in quads]
            g32 = [q[1].float() for q in quads]
            torch._fused_adamw_(p32, g32, [q[2] for q in quads], [q[3] for q in quads], [],
                                [_step_tensor(device)] * len(quads), **kw, grad_scale=grad_scale, found_inf=None)
            torch._foreach_copy_([q[0] for q in quads], p32)
            if grad_scale is not None:  # keep the documented "grads end up scaled" contract
                torch._foreach_copy_([q[1] for q in quads], g32)


def clip_grad_scale_(grads: Sequence[torch.Tensor], max_norm: float, *, eps: float = 1e-6
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Global L2 norm of ``grads`` and the ``grad_scale`` that applies the Vesper clip.

    Returns ``(total_norm, grad_scale)``: ``grad_scale = max((norm + eps) / max_norm, 1)`` as a
    1-element f32 tensor (the fused kernel divides by it, i.e. multiplies by
    ``min(max_norm/(norm+eps), 1)``, the same coefficient as ``torch.nn.utils.clip_grad_norm_``),
    or ``None`` when ``max_norm <= 0`` (clipping disabled). No host sync.
    """
    if not grads:
        return torch.zeros(()), None
    norms = torch._foreach_norm(list(grads), 2.0)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)
    if max_norm <= 0:
        return total, None
    scale = torch.clamp((total + eps) / max_norm, min=1.0).reshape(1).to(torch.float32)
    return total, scale
