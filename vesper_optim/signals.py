"""Training signals that drive Velvet's adaptive scales.

Pure functions: a loss (and optionally the logits' entropy) in, a scale out. Velvet applies
``entropy_scale`` to the learning rate and ``perplexity_scale`` to beta1, each exactly once
(UPSTREAM_SPEC §3.3; §3.6 lists the upstream paths that applied them twice).
"""

from __future__ import annotations

import math

import torch

from vesper_core.errors import ConfigError

DEFAULT_BOUNDS = (0.7, 1.3)
ENTROPY_TARGET = 0.5  # normalised entropy at which the LR scale is 1.0
PERPLEXITY_TARGET = 40.0  # perplexity at which the momentum scale is 1.0
MAX_LOG_PERPLEXITY = 20.0  # exp(20) ~ 4.9e8: keeps exp() finite in f32 and f64


def to_float(value: float | torch.Tensor, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ConfigError(f"{what} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


def check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """Validate ``(lo, hi)`` scale bounds; returns them as a tuple of floats."""
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ConfigError(f"Invalid scale_bounds: {bounds!r} (expected two numbers (lo, hi))") from None
    if not (0.0 < lo <= hi and math.isfinite(hi)):
        raise ConfigError(f"Invalid scale_bounds: {bounds!r} (need 0 < lo <= hi, e.g. (0.7, 1.3))")
    return lo, hi


def _clamp(x: float, bounds: tuple[float, float]) -> float:
    lo, hi = check_bounds(bounds)
    return min(max(x, lo), hi)


def entropy_scale(
    loss: float | torch.Tensor,
    *,
    vocab_size: int | None = None,
    normalized_entropy: float | torch.Tensor | None = None,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
) -> float:
    """LR scale ``s_e``: normalised entropy / 0.5, clamped to ``bounds``.

    With ``normalized_entropy`` (mean entropy of the logits / ln V, in [0, 1]) that value is used;
    otherwise the loss stands in for it: ``min(loss, ln V) / ln V``. A non-finite loss gives 1.0.
    """
    loss_f = to_float(loss, "loss")
    if not math.isfinite(loss_f):
        return 1.0
    if normalized_entropy is not None:
        h = to_float(normalized_entropy, "normalized_entropy")
        if not math.isfinite(h):
            return 1.0
    else:
        if vocab_size is None:
            raise ConfigError(
                "entropy_scale needs vocab_size (or normalized_entropy); pass vocab_size=... to "
                "Velvet/set_signals or turn entropy_adaptive off"
            )
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ConfigError(f"Invalid vocab_size: {vocab_size!r} (need an int >= 2)")
        log_v = math.log(vocab_size)
        h = min(loss_f, log_v) / log_v
    return _clamp(h / ENTROPY_TARGET, bounds)


def perplexity_scale(loss: float | torch.Tensor, bounds: tuple[float, float] = DEFAULT_BOUNDS) -> float:
    """Momentum scale ``s_p = 40 / max(exp(min(loss, 20)), 1)`` clamped; non-finite loss gives 1.0."""
    loss_f = to_float(loss, "loss")
    if not math.isfinite(loss_f):
        return 1.0
    perplexity = max(math.exp(min(loss_f, MAX_LOG_PERPLEXITY)), 1.0)
    return _clamp(PERPLEXITY_TARGET / perplexity, bounds)


@torch.no_grad()
def normalized_entropy(logits: torch.Tensor, *, max_chunk_elements: int = 1 << 24) -> torch.Tensor:
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
        chunk = rows[start:start + chunk_rows].float()  # (n, V)
        probs = torch.softmax(chunk, dim=-1)
        total += torch.special.entr(probs).sum()  # entr(0) = 0: masked (-inf) logits are fine
    return total / (rows.shape[0] * math.log(vocab))
