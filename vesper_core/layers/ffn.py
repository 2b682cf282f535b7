"""GLU feed-forward block: ``down_proj(ERA(gate_proj(x)) * up_proj(x))`` (UPSTREAM_SPEC §2.6)."""

from __future__ import annotations

from torch import Tensor, nn

from vesper_core.config import ModelConfig
from vesper_core.layers.era import ERA
from vesper_core.layers.flylora import FlyLoRALinear


class GLUFeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.gate_proj = FlyLoRALinear(H, I, config.flylora_rank, config.flylora_alpha)
        self.up_proj = FlyLoRALinear(H, I, config.flylora_rank, config.flylora_alpha)
        self.down_proj = nn.Linear(I, H)
        self.activation = ERA(config.era_gamma)

    def forward(self, x: Tensor) -> Tensor:  # (..., H) -> (..., H)
        hidden = self.activation(self.gate_proj(x)) * self.up_proj(x)  # (..., I)
        return self.down_proj(hidden)
