"""Velvet update in Triton: one multi-tensor launch per (device, dtype) group.

Layout of a launch: the host builds one int64 table per group (cached, see ``TableCache``)::

    [ p_ptr[T] | g_ptr[T] | m_ptr[T] | v_ptr[T] | numel[T] | chunk_tensor[C] | chunk_start[C] ]

and launches ``C`` programs; program ``c`` loads its tensor index and start from the table, turns
the raw addresses into typed pointers (``int64 -> pointer`` bitcast) and updates ``BLOCK``
elements. Math in f32; the parameter is stored back in its own dtype; ``m``/``v`` are f32.

Semantics (the spec is the pure-torch reference): ``p <- p*(1-lr_e*wd)``, ``m <- b1*m + (1-b1)*g``,
``v <- b2*v + (1-b2)*g^2``, ``p <- p - (lr_e/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)``; with
``sparse=True`` elements whose |p| < ``SPARSE_THRESHOLD`` are not touched at all (no decay, moments
unchanged). ``1 - b1`` and ``1 - b2`` arrive from the host (float64, then f32), like the reference's
scalars: formed in f32 from f32(beta) they would be off by up to 2^-24/(1 - beta) relative.
All scalars arrive already scaled; the kernel never re-applies entropy/perplexity scales
(upstream BUG-1/BUG-2) and ``sparse`` now skips like the CUDA kernel did (upstream BUG-4).

Under ``TRITON_INTERPRET=1`` this runs on CPU tensors (slowly: large BLOCK is used there). The
interpreter only works with CPU tensors here, because the pointer table holds raw addresses.
"""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import torch

from vesper_core.errors import BackendUnavailableError, ConfigError
from vesper_optim.kernels import SPARSE_THRESHOLD, VelvetScalars
from vesper_optim.kernels._common import (ContiguousView, TableCache, check_lists, chunk_table, fold_scalars,
                                           group_by_device_dtype)

try:  # triton is optional: `pip install 'vesper[cuda]'`
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

INSTALL_HINT = "pip install 'vesper[cuda]'  (or: pip install triton)"

#: Elements per program. 2048 on a GPU (memory-bound, 4 warps x 16 elements/thread); the
#: interpreter pays ~0.1-1 ms per program, so it gets far bigger blocks.
GPU_BLOCK = 2048
INTERPRETER_BLOCK = 8192

if triton is not None:
    _SPARSE_THRESHOLD: tl.constexpr = tl.constexpr(SPARSE_THRESHOLD)

    @triton.jit
    def _velvet_multi_tensor_kernel(
        table_ptr,              # *i64, layout in the module docstring
        num_tensors,            # i32 T
        num_chunks,             # i32 C
        decay,                  # f32 1 - lr_e*wd
        beta1,                  # f32 beta1_e
        beta2,                  # f32
        one_minus_beta1,        # f32 1 - beta1_e (formed in f64 on the host)
        one_minus_beta2,        # f32 1 - beta2 (formed in f64 on the host)
        eps,                    # f32
        step_size,              # f32 lr_e / bc1
        inv_sqrt_bc2,           # f32 1 / sqrt(bc2)
        P_DTYPE: tl.constexpr,  # tl.float32 / tl.bfloat16 / tl.float16
        SPARSE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        c = tl.program_id(0).to(tl.int64)
        T = num_tensors.to(tl.int64)
        C = num_chunks.to(tl.int64)
        t = tl.load(table_ptr + 5 * T + c)
        start = tl.load(table_ptr + 5 * T + C + c)
        numel = tl.load(table_ptr + 4 * T + t)
        p_ptr = tl.load(table_ptr + t).to(tl.pointer_type(P_DTYPE), bitcast=True)
        g_ptr = tl.load(table_ptr + T + t).to(tl.pointer_type(P_DTYPE), bitcast=True)
        m_ptr = tl.load(table_ptr + 2 * T + t).to(tl.pointer_type(tl.float32), bitcast=True)
        v_ptr = tl.load(table_ptr + 3 * T + t).to(tl.pointer_type(tl.float32), bitcast=True)

        offs = start + tl.arange(0, BLOCK).to(tl.int64)  # 64-bit element offsets
        mask = offs < numel
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        if SPARSE:
            # untouched elements are simply not stored: no decay, m and v unchanged
            mask = mask & (tl.abs(p) >= _SPARSE_THRESHOLD)

        p = p * decay
        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * g * g
        denom = tl.sqrt(v) * inv_sqrt_bc2 + eps
        p = p - step_size * (m / denom)

        tl.store(p_ptr + offs, p.to(P_DTYPE), mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)

    _TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


_TABLES = TableCache()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(device: torch.device) -> tuple[bool, str]:
    """(ok, reason) for running this backend on tensors on ``device``."""
    if triton is None:
        return False, f"triton is not installed; install it with: {INSTALL_HINT}"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and _interpreting():
        return True, ""
    return False, (f"the Triton Velvet kernel needs CUDA tensors (got {device}); on CPU it only runs under "
                   "TRITON_INTERPRET=1 (tests), use the 'fused' or 'reference' backend instead")


def _build_table(quads, device: torch.device, block: int) -> tuple[torch.Tensor, int, int]:
    numels = [q[0].numel() for q in quads]
    tidx, starts = chunk_table(numels, block)
    flat = [q[k].data_ptr() for k in range(4) for q in quads] + numels + tidx + starts
    host = torch.tensor(flat, dtype=torch.int64)
    if device.type == "cuda":
        table = host.pin_memory().to(device, non_blocking=True)
    else:
        table = host
    return table, len(quads), len(tidx)


def velvet_triton_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                   exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
                   scalars: VelvetScalars, *, block_size: int | None = None) -> None:
    """In-place Velvet update of every tensor, one Triton launch per (device, dtype) group.

    ``block_size`` (elements per program) defaults to 2048 on GPU, 8192 under the interpreter.
    Non-contiguous tensors are updated through contiguous copies (correct, slower).
    """
    check_lists(params, grads, exp_avgs, exp_avg_sqs)
    if not params:
        return
    ok, reason = triton_available(params[0].device)
    if not ok:
        raise BackendUnavailableError(f"velvet backend 'triton' unavailable: {reason}")
    s = fold_scalars(scalars)
    block = int(block_size or (INTERPRETER_BLOCK if _interpreting() else GPU_BLOCK))
    if block & (block - 1):
        raise ConfigError(f"block_size must be a power of two (got {block})")

    for (device, dtype), quads in group_by_device_dtype(params, grads, exp_avgs, exp_avg_sqs).items():
        view = ContiguousView(quads)
        key = (device, dtype, block, tuple((q[0].data_ptr(), q[1].data_ptr(), q[2].data_ptr(), q[3].data_ptr(),
                                             q[0].numel()) for q in view.quads))
        table, num_tensors, num_chunks = _TABLES.get(key, lambda: _build_table(view.quads, device, block))
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            _velvet_multi_tensor_kernel[(num_chunks,)](
                table, num_tensors, num_chunks,
                s.decay, s.beta1, s.beta2, s.one_minus_beta1, s.one_minus_beta2, s.eps, s.step_size,
                s.inv_sqrt_bc2,
                P_DTYPE=_TL_DTYPES[dtype], SPARSE=bool(scalars.sparse), BLOCK=block,
                num_warps=4 if block <= 2048 else 8,
            )
        view.write_back()


#: What .ci/compile_kernels.py compiles for sm_90: (name, jit function, signature, constexpr variants).
def compile_specs():
    if triton is None:
        return []
    sig = {"table_ptr": "*i64", "num_tensors": "i32", "num_chunks": "i32", "decay": "fp32", "beta1": "fp32",
           "beta2": "fp32", "one_minus_beta1": "fp32", "one_minus_beta2": "fp32", "eps": "fp32", "step_size": "fp32", "inv_sqrt_bc2": "fp32",
           "P_DTYPE": "constexpr", "SPARSE": "constexpr", "BLOCK": "constexpr"}
    specs = []
    for name, dt in (("f32", tl.float32), ("bf16", tl.bfloat16), ("f16", tl.float16)):
        for sparse in (False, True):
            specs.append((f"velvet_multi_tensor[{name},sparse={int(sparse)}]", _velvet_multi_tensor_kernel, sig,
                          {"P_DTYPE": dt, "SPARSE": sparse, "BLOCK": GPU_BLOCK}))
    return specs
