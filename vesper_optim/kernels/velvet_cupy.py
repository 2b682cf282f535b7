"""Velvet update through CuPy RawKernels compiled from ``kernels.cu`` (our fixed CUDA port).

Zero-copy: the kernels receive torch's raw ``data_ptr()`` values and run on torch's current CUDA
stream (wrapped in ``cupy.cuda.ExternalStream``), so no synchronisation or copies are needed and
ordering with surrounding torch work is preserved. cupy is imported on first use only.

* multi-tensor (default): one launch per (device, dtype) group over a cached int64 chunk table.
* single-tensor (``multi_tensor=False``): one launch per tensor (debugging, comparison).

Params may be float32 or bfloat16 (converted by hand in the kernel); float16 params go through
float32 copies (math in f32, stored back in f16). m and v are always float32.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import torch

from vesper_core.errors import BackendUnavailableError
from vesper_optim.kernels import VelvetScalars
from vesper_optim.kernels._common import (ContiguousView, TableCache, check_lists, chunk_table, fold_scalars,
                                           group_by_device_dtype)

INSTALL_HINT = "pip install 'vesper[cuda]'  (installs cupy-cuda12x)"
KERNEL_SOURCE = Path(__file__).with_name("kernels.cu")
THREADS = 256
#: Elements per chunk of the multi-tensor kernel (one block-iteration of the grid-stride loop).
CHUNK_SIZE = 16384
_KERNEL_NAMES = {
    torch.float32: ("velvet_single_f32", "velvet_multi_f32"),
    torch.bfloat16: ("velvet_single_bf16", "velvet_multi_bf16"),
}
_TABLES = TableCache()


def _import_cupy():
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError as exc:
        raise BackendUnavailableError(
            f"velvet backend 'cupy' unavailable: cupy is not installed ({exc}); install it with: {INSTALL_HINT}"
        ) from exc
    return cupy


def cupy_available(device: torch.device | None = None) -> tuple[bool, str]:
    """(ok, reason) without raising; used by the backend resolver for auto selection."""
    try:
        _import_cupy()
    except BackendUnavailableError as exc:
        return False, str(exc)
    if not torch.cuda.is_available():
        return False, "velvet backend 'cupy' needs a CUDA GPU; torch sees none"
    if device is not None and device.type != "cuda":
        return False, f"velvet backend 'cupy' needs CUDA tensors (got {device})"
    return True, ""


@functools.cache
def _module(device_index: int):
    cupy = _import_cupy()
    with cupy.cuda.Device(device_index):
        return cupy.RawModule(code=KERNEL_SOURCE.read_text(), options=("-std=c++14",),
                              name_expressions=None)


def _kernel(device_index: int, name: str):
    return _module(device_index).get_function(name)


def _num_blocks(device: torch.device, num_chunks: int) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(num_chunks, sms * 8))


def _table_entries(quads, chunk_size: int = CHUNK_SIZE) -> tuple[list[int], int, int]:
    """(entries, num_tensors, num_chunks) of the multi-tensor chunk table, in pure Python.

    Layout (kernels.cu header): ``p_ptr[T] | g_ptr[T] | m_ptr[T] | v_ptr[T] | numel[T] |
    chunk_tensor[C] | chunk_start[C]``. Kept apart from the device copy so the host build of
    kernels.cu (tests/parity/test_kernels_cu_host.py) checks this exact code without a GPU.
    """
    numels = [q[0].numel() for q in quads]
    tidx, starts = chunk_table(numels, chunk_size)
    flat = [q[k].data_ptr() for k in range(4) for q in quads] + numels + tidx + starts
    return flat, len(quads), len(tidx)


def _build_table(quads, device: torch.device) -> tuple[torch.Tensor, int, int]:
    flat, num_tensors, num_chunks = _table_entries(quads)
    table = torch.tensor(flat, dtype=torch.int64).pin_memory().to(device, non_blocking=True)
    return table, num_tensors, num_chunks


def velvet_cupy_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                 exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
                 scalars: VelvetScalars, *, multi_tensor: bool = True) -> None:
    """In-place Velvet update with the CUDA kernels of ``kernels.cu`` (CUDA tensors only)."""
    check_lists(params, grads, exp_avgs, exp_avg_sqs)
    if not params:
        return
    ok, reason = cupy_available(params[0].device)
    if not ok:
        raise BackendUnavailableError(reason if "install" in reason else f"{reason}; {INSTALL_HINT}")
    import numpy as np  # noqa: PLC0415

    cupy = _import_cupy()
    s = fold_scalars(scalars)
    args = (np.float32(s.decay), np.float32(s.beta1), np.float32(s.beta2), np.float32(s.eps),
            np.float32(s.step_size), np.float32(s.inv_sqrt_bc2), np.int32(1 if scalars.sparse else 0))

    for (device, dtype), quads in group_by_device_dtype(params, grads, exp_avgs, exp_avg_sqs).items():
        half_copies = None
        if dtype == torch.float16:  # no f16 kernel: run the f32 one on copies
            half_copies = quads
            quads = [(p.float(), g.float(), m, v) for p, g, m, v in quads]
            dtype = torch.float32
        view = ContiguousView(quads)
        single_name, multi_name = _KERNEL_NAMES[dtype]
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
        with cupy.cuda.Device(device.index), stream:
            if multi_tensor:
                key = (device, dtype, tuple((q[0].data_ptr(), q[1].data_ptr(), q[2].data_ptr(), q[3].data_ptr(),
                                             q[0].numel()) for q in view.quads))
                table, num_tensors, num_chunks = _TABLES.get(key, lambda: _build_table(view.quads, device))
                _kernel(device.index, multi_name)(
                    (_num_blocks(device, num_chunks),), (THREADS,),
                    (np.uint64(table.data_ptr()), np.int32(num_tensors), np.int64(num_chunks),
                     np.int64(CHUNK_SIZE), *args),
                )
            else:
                kern = _kernel(device.index, single_name)
                for p, g, m, v in view.quads:
                    n = p.numel()
                    blocks = max(1, min((n + THREADS - 1) // THREADS, 65535 * 8))
                    kern((blocks,), (THREADS,),
                         (np.uint64(p.data_ptr()), np.uint64(g.data_ptr()), np.uint64(m.data_ptr()),
                          np.uint64(v.data_ptr()), np.int64(n), *args))
        view.write_back()
        if half_copies is not None:
            torch._foreach_copy_([q[0] for q in half_copies], [q[0] for q in quads])
