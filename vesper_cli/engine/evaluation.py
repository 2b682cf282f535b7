"""Held-out loss: token-weighted mean cross-entropy (no MoE aux), summed across ranks."""

from __future__ import annotations

import torch

from vesper_core.distributed import DistInfo, all_reduce_sum
from vesper_core.kernels.cross_entropy import IGNORE_INDEX, perplexity
from vesper_data.loader import BatchLoader


def eval_batches(windows, batch_size: int, *, max_batches: int = 0, dist_info: DistInfo | None = None):
    """This rank's first ``max_batches`` batches of ``windows`` (all of them when 0), in order."""
    dist_info = dist_info or DistInfo()
    loader = BatchLoader(windows, batch_size, shuffle=False, drop_last=False, rank=dist_info.rank,
                         world_size=dist_info.world_size)
    num_batches = min(loader.num_batches, max_batches) if max_batches > 0 else loader.num_batches
    for _, batch in zip(range(num_batches), loader):
        yield batch


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows, *, batch_size: int, device: torch.device, autocast,
             max_batches: int, dist_info: DistInfo, loss_impl: str = "auto") -> dict[str, float]:
    """Loss over the first ``max_batches`` batches of ``windows`` (all of them when 0), in order."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, token count
    num_batches = 0
    for input_ids, labels in eval_batches(windows, batch_size, max_batches=max_batches, dist_info=dist_info):
        input_ids, labels = input_ids.to(device), labels.to(device)
        with autocast():
            out = model(input_ids, labels, loss_impl=loss_impl, loss_reduction="sum")
        totals[0] += out.loss.double()
        totals[1] += (labels != IGNORE_INDEX).sum()
        num_batches += 1
    all_reduce_sum(totals, dist_info)
    model.train(was_training)
    val_loss = float(totals[0] / totals[1].clamp(min=1))
    return {"val_loss": val_loss, "val_ppl": perplexity(val_loss), "val_batches": num_batches}
