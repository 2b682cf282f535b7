"""Cross-entropy over a (N, V) logits matrix in Triton: online log-sum-exp, fwd + bwd in one pass.

One program per row: a first sweep over vocabulary blocks keeps a running max and a rescaled
running sum of exponentials (online log-sum-exp, never holding the row), then
``loss = lse - logit[label]``; when a gradient is needed, a second sweep writes
``(softmax - onehot) / num_valid`` for the row (0 for ignored rows). Backward only scales that
stored gradient by ``grad_output``. Math in f32 whatever the logits dtype; the gradient is
stored in the logits dtype. The spec is ``cross_entropy_reference`` in ``cross_entropy.py``.

Labels must be in [0, V) or equal to ``ignore_index`` (not checked on the device).
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
GPU_MAX_BLOCK = 4096
INTERPRETER_MAX_BLOCK = 16384

if triton is not None:

    @triton.jit
    def _ce_fwd_bwd_kernel(
        logits_ptr, stride_row,      # (N, V), unit column stride
        labels_ptr,                  # (N,) int64
        loss_ptr,                    # (N,) f32 per-row loss (0 for ignored rows)
        dlogits_ptr, stride_drow,    # (N, V) gradient output (only written when COMPUTE_GRAD)
        n_cols,
        ignore_index,
        scale,                       # 1 / num_valid
        COMPUTE_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride_row
        label = tl.load(labels_ptr + row)
        valid = label != ignore_index

        run_max = float("-inf")
        run_sum = 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(run_max, tl.max(x, 0))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(x - new_max), 0)
            run_max = new_max
        lse = run_max + tl.log(run_sum)

        safe_label = tl.where(valid, label, 0)
        target = tl.load(base + safe_label).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))

        if COMPUTE_GRAD:
            dbase = dlogits_ptr + row * stride_drow
            row_scale = tl.where(valid, scale, 0.0)
            for start in range(0, n_cols, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < n_cols
                x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
                p = tl.exp(x - lse)
                p = tl.where(cols == safe_label, p - 1.0, p)
                tl.store(dbase + cols, (p * row_scale).to(dlogits_ptr.dtype.element_ty), mask=mask)


def _block(n_cols: int) -> int:
    cap = INTERPRETER_MAX_BLOCK if os.environ.get("TRITON_INTERPRET") == "1" else GPU_MAX_BLOCK
    return min(cap, triton.next_power_of_2(max(n_cols, 16)))


def _check(logits: torch.Tensor) -> None:
    if triton is None:
        raise BackendUnavailableError(f"cross-entropy backend 'triton' unavailable: triton is not installed; "
                                      f"{INSTALL_HINT}")
    if logits.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailableError(f"cross-entropy backend 'triton' needs CUDA tensors (got {logits.device}); "
                                      "on CPU use the reference or chunked_cross_entropy")


def cross_entropy_forward(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                          compute_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean loss as a 0-dim f32 tensor, dloss/dlogits or None) for (N, V) logits."""
    _check(logits)
    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    lab = labels.reshape(-1).contiguous()
    n_rows, n_cols = x.shape
    num_valid = int((lab != ignore_index).sum())
    scale = 1.0 / max(num_valid, 1)
    losses = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    dlogits = torch.empty_like(x) if compute_grad else None
    if n_rows:
        block = _block(n_cols)
        _ce_fwd_bwd_kernel[(n_rows,)](
            x, x.stride(0), lab, losses, dlogits if compute_grad else x,
            dlogits.stride(0) if compute_grad else x.stride(0), n_cols, ignore_index, scale,
            COMPUTE_GRAD=compute_grad, BLOCK=block, num_warps=8 if block >= 2048 else 4,
        )
    loss = losses.sum() / num_valid if num_valid else torch.full((), float("nan"), device=x.device)
    return loss, dlogits


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        loss, dlogits = cross_entropy_forward(logits, labels, ignore_index, compute_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(dlogits)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (dlogits,) = ctx.saved_tensors
        return dlogits * grad_output.to(dlogits.dtype), None, None


def cross_entropy_triton(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean CE over non-ignored rows of ``logits`` (..., V) against ``labels`` (...). Differentiable."""
    v = logits.shape[-1]
    return CrossEntropyFunction.apply(logits.reshape(-1, v), labels.reshape(-1), int(ignore_index))


def compile_specs():
    if triton is None:
        return []
    specs = []
    for name, dt in (("f32", "*fp32"), ("bf16", "*bf16")):
        specs.append((f"cross_entropy_fwd_bwd[{name}]", _ce_fwd_bwd_kernel,
                      {"logits_ptr": dt, "stride_row": "i64", "labels_ptr": "*i64", "loss_ptr": "*fp32",
                       "dlogits_ptr": dt, "stride_drow": "i64", "n_cols": "i32", "ignore_index": "i32",
                       "scale": "fp32", "COMPUTE_GRAD": "constexpr", "BLOCK": "constexpr"},
                      {"COMPUTE_GRAD": True, "BLOCK": GPU_MAX_BLOCK}))
    return specs
