"""Cross-entropy: the reference (the spec) and a chunked fused linear + cross-entropy.

``chunked_cross_entropy(hidden, weight, labels)`` computes ``cross_entropy(hidden @ weight.T,
labels)`` without ever materialising the full (N, V) float32 logits: it walks over row chunks,
and for each chunk computes the logits in the input dtype, up-casts that chunk to f32, takes the
log-sum-exp and the loss, and immediately turns the chunk into its gradient
``(softmax - onehot) / num_valid``, from which ``grad_hidden[chunk] = dlogits @ W`` and
``grad_W += dlogits.T @ hidden[chunk]`` (accumulated in f32). Backward only scales the stored
gradients by ``grad_output``. Peak extra memory is one (chunk, V) f32 block plus the gradients
themselves (N*H and V*H), instead of N*V*(2 + 4 + 4) bytes for logits, f32 logits and their grad.

Unlike upstream's fused CE (BUG-26: the loss had no ``grad_fn``), this is a real
``torch.autograd.Function``: the loss is differentiable w.r.t. ``hidden`` and ``weight``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vesper_core.errors import ConfigError

#: Target size (elements) of one chunk's f32 logits block: 2^24 floats = 64 MiB.
CHUNK_LOGITS_ELEMENTS = 1 << 24
#: Labels with this value are left out of the loss (padding, prompt tokens of chat data).
IGNORE_INDEX = -100
#: ``loss_impl="auto"`` uses the chunked loss from this vocabulary size up, where the logits dominate memory.
CHUNKED_LOSS_MIN_VOCAB = 32768
LOSS_IMPLS = ("auto", "standard", "chunked")
#: Perplexity is exp(min(loss, 20)): a diverged loss still gives a finite number (also Velvet's cap).
MAX_LOG_PERPLEXITY = 20.0


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))


def uses_chunked_loss(loss_impl: str, vocab_size: int) -> bool:
    """Whether ``loss_impl`` (auto | standard | chunked) means the chunked fused linear + CE."""
    if loss_impl not in LOSS_IMPLS:
        raise ConfigError(f"loss must be one of {', '.join(LOSS_IMPLS)}, got {loss_impl!r}")
    return loss_impl == "chunked" or (loss_impl == "auto" and vocab_size >= CHUNKED_LOSS_MIN_VOCAB)


@torch.no_grad()
def normalized_entropy(logits: torch.Tensor, *, max_chunk_elements: int = CHUNK_LOGITS_ELEMENTS) -> torch.Tensor:
    """Mean over positions of ``-sum(softmax * log softmax) / ln V`` as a 0-dim f32 tensor.

    ``logits`` is ``(..., V)``. Rows are processed in chunks of at most ``max_chunk_elements``
    so that at most one chunk is ever up-cast to f32. No host sync.
    """
    if logits.dim() == 0:
        raise ConfigError("normalized_entropy needs logits of shape (..., vocab_size), got a scalar")
    vocab = logits.shape[-1]
    rows = logits.reshape(-1, vocab)  # (N, V)
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    if vocab < 2 or rows.shape[0] == 0:
        return total
    chunk_rows = max(1, max_chunk_elements // vocab)
    for start in range(0, rows.shape[0], chunk_rows):
        probs = torch.softmax(rows[start:start + chunk_rows].float(), dim=-1)  # (n, V)
        total += torch.special.entr(probs).sum()  # entr(0) = 0: masked (-inf) logits are fine
    return total / (rows.shape[0] * math.log(vocab))


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over non-ignored positions, computed on f32 logits.

    ``logits``: (..., V) any float dtype; ``labels``: (...) int64. Returns a 0-dim f32 tensor
    (NaN when every label is ignored, like ``F.cross_entropy``).
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=ignore_index, reduction="mean")


def default_chunk_size(num_rows: int, vocab_size: int) -> int:
    """Rows per chunk so that one chunk of f32 logits is about ``CHUNK_LOGITS_ELEMENTS``."""
    return max(1, min(num_rows, max(64, CHUNK_LOGITS_ELEMENTS // max(vocab_size, 1))))


class ChunkedCrossEntropyFunction(torch.autograd.Function):
    """Fused ``cross_entropy(hidden @ weight.T, labels)``; gradients are computed in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                chunk_size: int, reduction: str = "mean", entropy_out: torch.Tensor | None = None) -> torch.Tensor:
        num_rows, _ = hidden.shape
        need_dh = ctx.needs_input_grad[0]
        need_dw = ctx.needs_input_grad[1]
        valid = labels != ignore_index
        num_valid = int(valid.sum())
        # mean: all-ignored gives a NaN loss (as the reference) and zero grads
        scale = 1.0 / max(num_valid, 1) if reduction == "mean" else 1.0
        entropy_sum = torch.zeros((), dtype=torch.float32, device=hidden.device) if entropy_out is not None else None

        # f32 math for f32/bf16/f16 inputs; float64 inputs stay float64 (gradcheck)
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_dh else None
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_dw else None

        for start in range(0, num_rows, chunk_size):
            end = min(start + chunk_size, num_rows)
            h = hidden[start:end]                              # (c, H)
            lab = labels[start:end]                            # (c,)
            ok = valid[start:end]
            logits = (h @ weight.t()).to(acc)                  # (c, V) in f32, this chunk only
            lse = torch.logsumexp(logits, dim=-1)              # (c,)
            safe_lab = torch.where(ok, lab, torch.zeros_like(lab))
            target = logits.gather(1, safe_lab.unsqueeze(1)).squeeze(1)
            loss_sum += torch.where(ok, lse - target, torch.zeros_like(lse)).sum()
            if entropy_sum is not None:  # H = -sum(p * log p) over every row (ignored ones too)
                logp = logits.sub_(lse.unsqueeze(1))
                probs = logp.exp()
                entropy_sum -= torch.linalg.vecdot(probs, logp).sum().float()
                logits = probs
            else:
                logits = logits.sub_(lse.unsqueeze(1)).exp_()   # softmax, in place
            if need_dh or need_dw:
                # the softmax becomes dloss/dlogits in place: (softmax - onehot) * scale, 0 on ignored rows
                dlogits = logits
                dlogits.scatter_add_(1, safe_lab.unsqueeze(1), torch.full_like(lse, -1.0).unsqueeze(1))
                dlogits.mul_((ok.to(dlogits.dtype) * scale).unsqueeze(1))
                if need_dh:
                    grad_hidden[start:end] = (dlogits.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_dw:
                    if h.dtype == acc:
                        grad_weight.addmm_(dlogits.t(), h)                        # (V, H) += (V, c) @ (c, H)
                    else:  # low-precision matmul, f32 accumulation buffer
                        grad_weight.add_(dlogits.to(h.dtype).t() @ h)
            del logits

        if reduction == "sum":
            loss = loss_sum
        else:
            loss = loss_sum / num_valid if num_valid > 0 else torch.full((), math.nan, dtype=acc, device=hidden.device)
        if entropy_out is not None:
            entropy_out.copy_(entropy_sum / (max(num_rows, 1) * math.log(max(weight.shape[0], 2))))
        ctx.save_for_backward(grad_hidden if need_dh else None, grad_weight if need_dw else None)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        dh = dw = None
        if ctx.needs_input_grad[0] and grad_hidden is not None:
            dh = grad_hidden * grad_output.to(grad_hidden.dtype)
        if ctx.needs_input_grad[1] and grad_weight is not None:
            dw = (grad_weight * grad_output.to(grad_weight.dtype)).to(ctx.weight_dtype)
        return dh, dw, None, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                          ignore_index: int = IGNORE_INDEX, chunk_size: int | None = None, reduction: str = "mean",
                          return_entropy: bool = False):
    """CE of ``hidden @ weight.T`` against ``labels`` without the full (N, V) f32 logits.

    ``hidden``: (N, H) or (B, T, H); ``weight``: (V, H) (the LM head / tied embedding);
    ``labels``: (N,) or (B, T) int64 with ``ignore_index`` for padding. Differentiable w.r.t.
    ``hidden`` and ``weight``. ``chunk_size`` rows per chunk (default: ~64 MiB of f32 logits).
    ``reduction``: "mean" over non-ignored rows (default) or "sum".
    ``return_entropy=True`` returns ``(loss, normalized_entropy)``, the second a detached 0-dim
    f32 tensor equal to ``vesper_optim.signals.normalized_entropy(logits)`` (mean over all rows of
    the softmax entropy / ln V), computed from the same chunks at no extra pass.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' (got {reduction!r})")
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden size mismatch: hidden {tuple(hidden.shape)} vs weight {tuple(weight.shape)}")
    h2 = hidden.reshape(-1, hidden.shape[-1])
    lab = labels.reshape(-1)
    if lab.shape[0] != h2.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden {tuple(hidden.shape)}")
    if chunk_size is None:
        chunk_size = default_chunk_size(h2.shape[0], weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    entropy = torch.zeros((), dtype=torch.float32, device=hidden.device) if return_entropy else None
    loss = ChunkedCrossEntropyFunction.apply(h2, weight, lab, int(ignore_index), int(chunk_size), reduction,
                                             entropy)
    return (loss, entropy) if return_entropy else loss
