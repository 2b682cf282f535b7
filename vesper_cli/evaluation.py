"""Held-out loss: token-weighted mean cross-entropy (no MoE aux), summed across ranks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vesper_cli.distributed import DistInfo, all_reduce_sum
from vesper_data.loader import BatchLoader


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows, *, batch_size: int, device: torch.device, autocast,
             max_batches: int, dist_info: DistInfo) -> dict[str, float]:
    """Loss over the first ``max_batches`` batches of ``windows`` (all of them when 0), in order."""
    loader = BatchLoader(windows, batch_size, shuffle=False, drop_last=False, rank=dist_info.rank,
                         world_size=dist_info.world_size)
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, token count
    num_batches = min(loader.num_batches, max_batches) if max_batches > 0 else loader.num_batches
    for _, (input_ids, labels) in zip(range(num_batches), loader):
        input_ids, labels = input_ids.to(device), labels.to(device)
        with autocast():
            logits = model(input_ids).logits
        totals[0] += F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum").double()
        totals[1] += labels.numel()
    all_reduce_sum(totals, dist_info)
    model.train(was_training)
    val_loss = float(totals[0] / totals[1].clamp(min=1))
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 20.0)), "val_batches": num_batches}
