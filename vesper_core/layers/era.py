"""ERA activation: GELU (tanh approximation) plus a small softplus (UPSTREAM_SPEC §2.7).

``ERA(x) = GELU_tanh(x) + gamma * softplus(x)``; gamma <= 0 gives plain GELU_tanh. The reference
computes in (at least) float32 and returns the input dtype, like the fused kernels. ``F.softplus``
switches to the identity above 20, so large inputs stay finite (upstream's naive log(1 + e^x)
overflowed, bug 21).

Faster implementations plug in through ``ERA_BACKENDS``: a function ``(x, gamma) -> Tensor`` with the
reference's semantics, selected by ``ERA.backend``.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vesper_core.device import has_module
from vesper_core.registry import Registry

EraFunction = Callable[[Tensor, float], Tensor]


def era_reference(x: Tensor, gamma: float) -> Tensor:
    """The ERA definition in plain torch ops (autograd gives the analytic derivative)."""
    xc = x if x.dtype in (torch.float32, torch.float64) else x.float()  # at least float32
    out = F.gelu(xc, approximate="tanh")
    if gamma > 0:
        out = out + gamma * F.softplus(xc)
    return out.to(x.dtype)


def era_triton(x: Tensor, gamma: float) -> Tensor:
    """The fused Triton forward + backward (vesper_core.kernels.era_triton), imported on first use."""
    from vesper_core.kernels import era_triton_apply

    return era_triton_apply(x, gamma)


def era_auto(x: Tensor, gamma: float) -> Tensor:
    """Triton on CUDA tensors when triton is installed (unless VESPER_KERNELS=reference), else the reference."""
    if x.is_cuda and os.environ.get("VESPER_KERNELS", "auto") != "reference" and has_module("triton"):
        return era_triton(x, gamma)
    return era_reference(x, gamma)


ERA_BACKENDS: Registry[EraFunction] = Registry("ERA backend", "vesper.era_backends")
ERA_BACKENDS.register("reference", era_reference)
ERA_BACKENDS.register("triton", era_triton)
ERA_BACKENDS.register("auto", era_auto)


class ERA(nn.Module):
    """ERA as a module; ``backend`` names an entry of ``ERA_BACKENDS`` (default "auto")."""

    def __init__(self, gamma: float = 0.1, backend: str = "auto"):
        super().__init__()
        self.gamma = float(gamma)
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._fn = ERA_BACKENDS.get(name)  # raises UnknownNameError listing the choices
        self._backend = ERA_BACKENDS.resolve(name)

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x, self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, backend={self._backend!r}"
