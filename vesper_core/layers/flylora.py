"""FlyLoRA linear as upstream actually runs it (UPSTREAM_SPEC §2.6).

``y = base(x) + (alpha / rank) * lora_up(lora_down(x))`` with every part trainable. The LoRA branch
starts at exactly zero (``lora_up`` weight and bias are zero), so at initialisation the layer equals
its base linear; upstream's model-wide init overwrote that zero (bug 20), VesperLM re-zeroes it.
Upstream's random "sparse projection" never took part in the forward pass and is not built here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FlyLoRALinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.scaling = alpha / rank if rank > 0 else 0.0
        self.base = nn.Linear(in_features, out_features)
        if rank > 0:
            self.lora_down = nn.Linear(in_features, rank)
            self.lora_up = nn.Linear(rank, out_features)
        else:
            self.lora_down = None
            self.lora_up = None
        self.zero_lora_branch()

    @torch.no_grad()
    def zero_lora_branch(self) -> None:
        """Make the LoRA branch output exactly zero (up weight and bias = 0)."""
        if self.lora_up is not None:
            self.lora_up.weight.zero_()
            self.lora_up.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        y = self.base(x)
        if self.lora_up is not None:
            y = y + self.scaling * self.lora_up(self.lora_down(x))
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, scaling={self.scaling}")
