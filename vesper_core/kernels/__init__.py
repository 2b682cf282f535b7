"""Fused kernels of the model side: ERA activation and (fused linear +) cross-entropy.

* ``cross_entropy``         ``cross_entropy_reference`` (the spec) and ``chunked_cross_entropy``
                            (pure torch, fused linear + CE that never builds the (N, V) f32 logits).
* ``era_triton``            ``era_triton(x, gamma)`` / ``EraFunction``: fused fwd + bwd Triton kernels.

The Triton modules import triton at import time; import them only where triton is wanted.
"""

from __future__ import annotations

from vesper_core.kernels.cross_entropy import (
    ChunkedCrossEntropyFunction,
    chunked_cross_entropy,
    cross_entropy_reference,
    normalized_entropy,
)



def era_triton_apply(x, gamma):
    """Lazy entry for ``ERA_BACKENDS``: ``era_triton.era_triton(x, gamma)`` (imports triton on first call)."""
    from vesper_core.kernels.era_triton import era_triton

    return era_triton(x, gamma)


__all__ = ["ChunkedCrossEntropyFunction", "chunked_cross_entropy", "cross_entropy_reference", "normalized_entropy", "era_triton_apply"]
