"""Host-side helpers shared by the Velvet kernel backends (no triton / cupy imports here)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from vesper_core.errors import ConfigError
from vesper_optim.kernels import VelvetScalars

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True, slots=True)
class FoldedScalars:
    """A kernel call's :class:`VelvetScalars`, folded once on the host (in float64).

    Kernels compute ``p*decay``, the two moments, then
    ``p - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)``; they never re-apply the entropy or
    perplexity scales (upstream BUG-1/BUG-2: those were applied on the host *and* in the kernel).
    """

    decay: float          # 1 - lr_e * weight_decay
    beta1: float          # beta1_e
    beta2: float
    eps: float
    step_size: float      # lr_e / bias_correction1
    inv_sqrt_bc2: float   # 1 / sqrt(bias_correction2)
    one_minus_beta1: float  # 1 - beta1_e in float64: an f32 kernel forming it from f32(beta1) is
    one_minus_beta2: float  # off by up to 2^-24 / (1 - beta) relative (1.7e-4 at beta2 = 0.9999)


def fold_scalars(s: VelvetScalars) -> FoldedScalars:
    if not s.bias_correction1 > 0.0 or not s.bias_correction2 > 0.0:
        raise ConfigError(
            f"bias corrections must be > 0 (got bias_correction1={s.bias_correction1!r}, "
            f"bias_correction2={s.bias_correction2!r}); the step counter must be >= 1 when a kernel runs"
        )
    return FoldedScalars(
        decay=1.0 - float(s.lr_e) * float(s.weight_decay),
        beta1=float(s.beta1_e),
        beta2=float(s.beta2),
        eps=float(s.eps),
        step_size=float(s.lr_e) / float(s.bias_correction1),
        inv_sqrt_bc2=1.0 / math.sqrt(float(s.bias_correction2)),
        one_minus_beta1=1.0 - float(s.beta1_e),
        one_minus_beta2=1.0 - float(s.beta2),
    )


def check_lists(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor]) -> None:
    """ConfigError (never a bare ValueError/TypeError) for inputs a kernel cannot take."""
    n = len(params)
    if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n):
        raise ConfigError(
            f"params, grads, exp_avgs, exp_avg_sqs must have the same length "
            f"(got {n}, {len(grads)}, {len(exp_avgs)}, {len(exp_avg_sqs)})"
        )
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if p.dtype not in KERNEL_DTYPES:
            raise ConfigError(f"param {i}: dtype {p.dtype} not supported (float32, bfloat16, float16); "
                              f"use the 'foreach' or 'reference' Velvet backend")
        if g.dtype != p.dtype:
            raise ConfigError(f"param {i}: grad dtype {g.dtype} differs from param dtype {p.dtype}")
        if m.dtype != torch.float32 or v.dtype != torch.float32:
            raise ConfigError(f"param {i}: exp_avg/exp_avg_sq must be float32 (got {m.dtype}, {v.dtype})")
        if not (p.shape == g.shape == m.shape == v.shape):
            raise ConfigError(
                f"param {i}: shapes differ: param {tuple(p.shape)}, grad {tuple(g.shape)}, "
                f"exp_avg {tuple(m.shape)}, exp_avg_sq {tuple(v.shape)}"
            )
        if not (p.device == g.device == m.device == v.device):
            raise ConfigError(f"param {i}: tensors on different devices ({p.device}, {g.device}, {m.device}, {v.device})")


def group_by_device_dtype(params, grads, exp_avgs, exp_avg_sqs):
    """``{(device, dtype): [(p, g, m, v), ...]}`` preserving order, skipping empty tensors."""
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[torch.Tensor, ...]]] = {}
    for quad in zip(params, grads, exp_avgs, exp_avg_sqs):
        if quad[0].numel() == 0:
            continue
        groups.setdefault((quad[0].device, quad[0].dtype), []).append(quad)
    return groups


class ContiguousView:
    """Contiguous stand-ins for possibly strided tensors; ``write_back()`` copies results back."""

    def __init__(self, quads):
        self.quads = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        for p, g, m, v in quads:
            out = []
            for k, t in enumerate((p, g, m, v)):
                if t.is_contiguous():
                    out.append(t)
                else:
                    c = t.contiguous()
                    if k != 1:  # grads are read-only
                        self._pending.append((t, c))
                    out.append(c)
            self.quads.append(tuple(out))

    def write_back(self) -> None:
        for dst, src in self._pending:
            dst.copy_(src)


class TableCache:
    """A tiny LRU of device-side pointer tables keyed by everything they encode.

    The key holds every pointer and size, so a hit is always correct; optimizers reuse the same
    storages each step, so the table is built and copied to the device once.
    """

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._store: OrderedDict = OrderedDict()

    def get(self, key, build):
        hit = self._store.get(key)
        if hit is not None:
            self._store.move_to_end(key)
            return hit
        value = build()
        self._store[key] = value
        if len(self._store) > self.capacity:
            self._store.popitem(last=False)
        return value

    def clear(self) -> None:
        self._store.clear()


def chunk_table(numels: Sequence[int], chunk: int) -> tuple[list[int], list[int]]:
    """Per chunk: (tensor index, start element). Every tensor is cut into ``chunk``-sized pieces."""
    tensor_idx: list[int] = []
    starts: list[int] = []
    for i, n in enumerate(numels):
        for s in range(0, n, chunk):
            tensor_idx.append(i)
            starts.append(s)
    return tensor_idx, starts
