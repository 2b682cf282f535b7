"""Global gradient-norm clipping shared by Velvet and the trainer (UPSTREAM_SPEC §3.4)."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch

CLIP_EPS = 1e-6


def _grads_by_device(params: Iterable[torch.Tensor]) -> dict[torch.device, list[torch.Tensor]]:
    grouped: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            grouped[p.grad.device].append(p.grad)
    return grouped


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip gradients in place by their global L2 norm; returns the pre-clip norm.

    If ``max_norm > 0`` and ``norm > max_norm``, every gradient is multiplied by
    ``max_norm / (norm + 1e-6)``; otherwise gradients are left bit-for-bit untouched.
    The norm is accumulated in f32 (f64 gradients: in f64, then rounded) and returned as a 0-dim f32 tensor on the first gradient's
    device. No host sync: the decision is a ``torch.where`` on device.
    """
    if isinstance(params, torch.Tensor):
        params = [params]
    grouped = _grads_by_device(params)
    if not grouped:
        return torch.zeros((), dtype=torch.float32)
    first = next(iter(grouped))
    per_device = []
    for grads in grouped.values():
        narrow = [g for g in grads if g.dtype != torch.float64]
        wide = [g for g in grads if g.dtype == torch.float64]  # f64 cannot be reduced "into" f32
        norms = list(torch._foreach_norm(narrow, 2, dtype=torch.float32)) if narrow else []
        norms += [n.float() for n in torch._foreach_norm(wide, 2)] if wide else []
        per_device.append(torch.linalg.vector_norm(torch.stack(norms)).to(first))
    total = torch.linalg.vector_norm(torch.stack(per_device))
    if max_norm > 0:
        coef = torch.where(total > max_norm, max_norm / (total + CLIP_EPS), 1.0)
        for device, grads in grouped.items():
            torch._foreach_mul_(grads, coef.to(device))
    return total
