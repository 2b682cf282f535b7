"""Multi-head causal self-attention with RoPE and an optional KV cache (UPSTREAM_SPEC §2.5).

Four ``Linear(H, H)`` projections with bias; no GQA. Training and prefill use
``F.scaled_dot_product_attention(is_causal=True)``. With a cache the new keys/values are written at
``start`` and the queries attend to everything cached so far: one new token needs no mask, a chunk
appended to a non-empty cache gets a causal mask shifted by ``start``. ``key_mask`` (B, start + T), with a
cache only, hides cache slots per row (a batch whose rows start at different slots: ``vesper serve``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vesper_core.config import ModelConfig
from vesper_core.layers.rope import apply_rotary


class LayerCache(Protocol):
    """One layer's key/value store (``vesper_core.generation.LayerKVCache`` implements it)."""

    def update(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Write (B, NH, T, D) at [start, start + T) and return keys/values [0, start + T)."""
        ...


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(H, H)
        self.k_proj = nn.Linear(H, H)
        self.v_proj = nn.Linear(H, H)
        self.o_proj = nn.Linear(H, H)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                start: int = 0, key_mask: Tensor | None = None) -> Tensor:
        B, T, H = x.shape
        q = self._split_heads(self.q_proj(x))  # (B, NH, T, D)
        k = self._split_heads(self.k_proj(x))  # (B, NH, T, D)
        v = self._split_heads(self.v_proj(x))  # (B, NH, T, D)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)

        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, NH, T, D)
        else:
            k, v = cache.update(k, v, start)  # (B, NH, start + T, D)
            k, v = k.to(q.dtype), v.to(q.dtype)
            if key_mask is None:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=_cached_mask(T, start, q.device),
                                                     is_causal=(start == 0 and T > 1))
            else:
                causal = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)
                mask = causal & key_mask[:, None, None, :start + T]  # (B, 1, T, start + T)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        out = out.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.o_proj(out)

    def _split_heads(self, x: Tensor) -> Tensor:  # (B, T, H) -> (B, NH, T, D)
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)


def _cached_mask(num_new: int, start: int, device: torch.device) -> Tensor | None:
    """Boolean (T, start + T) mask letting new query i see keys [0, start + i]; None when not needed."""
    if num_new == 1 or start == 0:
        return None  # one query sees every key; a chunk at offset 0 uses is_causal
    keep = torch.ones(num_new, start + num_new, dtype=torch.bool, device=device)
    return keep.tril(diagonal=start)  # (T, start + T)
