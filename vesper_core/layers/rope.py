"""Rotary position embedding, split-half (GPT-NeoX / rotate_half) layout (UPSTREAM_SPEC §2.5.1).

cos/sin are computed on the fly in float32 for positions [start, start + T): they are never module
state, so they are not saved in checkpoints and ``model.to(torch.bfloat16)`` cannot round them (the
upstream bf16 tables, bug 41). There is no length limit and a KV cache passes its offset as ``start``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vesper_core.errors import ConfigError


class RotaryEmbedding(nn.Module):
    """Produces the (cos, sin) tables; holds no parameters or buffers."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim <= 0 or head_dim % 2:
            raise ConfigError(f"RoPE needs a positive even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = float(theta)

    def inv_freq(self, device: torch.device | None = None) -> Tensor:
        """1 / theta^(2i/head_dim) for i in [0, head_dim/2), float32.  # (D/2,)"""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
        return 1.0 / (self.theta ** (exponents / self.head_dim))

    def forward(self, start: int, length: int, device: torch.device | None = None
                ) -> tuple[Tensor, Tensor]:
        positions = torch.arange(start, start + length, dtype=torch.float32, device=device)
        angles = positions[:, None] * self.inv_freq(device)[None, :]  # (T, D/2)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (B, NH, T, D) by the (T, D/2) tables; computed in float32, returned in x's dtype."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]  # (B, NH, T, D/2) each
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, NH, T, D)
    return rotated.to(x.dtype)
