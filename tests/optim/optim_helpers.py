"""Shared helpers for the optimizer tests: a tiny MLP and a deterministic data stream.

(Not a conftest.py: other test folders have one, and ``import conftest`` would be ambiguous.)
"""

from __future__ import annotations

import torch
from torch import nn


def make_mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 5)).to(dtype)


def train(model: nn.Module, opt, steps: int, *, seed: int = 1, losses=None, start: int = 0) -> None:
    """``steps`` optimizer steps on random regression data; ``losses[i]`` feeds set_signals."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for i in range(start + steps):
        x = torch.randn(16, 7, generator=gen).to(dtype)
        y = torch.randn(16, 5, generator=gen).to(dtype)
        if i < start:  # skip the batches an interrupted run already used
            continue
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if losses is not None:
            opt.set_signals(losses[i % len(losses)])
        opt.step()
