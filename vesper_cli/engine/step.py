"""The one step function: micro-batches in, one optimizer update (or a skip) out.

Every command that trains goes through :class:`TrainStep` (``vesper train``, each ``vesper benchmark``
arm, ``--metacog-only``, fine-tuning)::

    for each micro-batch: objective (autocast) -> backward (gradient sync on the last one only)
    -> mean loss over the global batch's tokens -> non-finite? skip
    -> unscale (GradScaler) -> clip_grad_norm_ (the one clipping path, every optimizer)
    -> non-finite norm? skip (an f16 overflow lowers the loss scale)
    -> signals to optimizers that ask for them (loss, entropy, vocabulary, the pre-clip norm)
    -> optimizer step -> zero_grad

Optimizers are handled by capability, never by class: one that implements
``vesper_optim.protocol.SignalAware`` receives this step's signals, one that implements
``ReportsMetrics`` adds its numbers (effective LR, scales) to the step's metrics.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from vesper_core.distributed import DistInfo, all_reduce_sum, gradient_sync
from vesper_optim.clipping import clip_grad_norm_
from vesper_optim.protocol import ReportsMetrics, SignalAware
from vesper_cli.engine.objective import LanguageModelObjective

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StepOutcome:
    loss: float  # mean token cross-entropy of the global batch
    grad_norm: float  # pre-clip global norm
    aux_loss: float | None = None
    skipped: str | None = None  # why the update was skipped
    metacog: dict[str, float] | None = None  # the meta head's loss, confidence, accuracy
    optimizer_metrics: dict[str, float] = field(default_factory=dict)  # from a ReportsMetrics optimizer
    num_tokens: int = 0  # tokens of the global batch that counted in the loss


def autocast_factory(device: torch.device, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16/f16 autocast over f32 master weights (upstream cast the weights themselves: bug 41)."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def wanted_signals(optimizer: torch.optim.Optimizer) -> frozenset[str]:
    return optimizer.training_signals() if isinstance(optimizer, SignalAware) else frozenset()


class TrainStep:
    """One optimizer step over a list of micro-batches (see the module docstring)."""

    def __init__(self, objective: LanguageModelObjective, optimizer: torch.optim.Optimizer, *,
                 max_grad_norm: float, scaler: torch.amp.GradScaler, autocast, dist: DistInfo, vocab_size: int):
        self.objective = objective
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.scaler = scaler
        self.autocast = autocast
        self.dist = dist
        self.vocab_size = vocab_size
        self.signals = wanted_signals(optimizer)
        self.params = list(objective.parameters())

    def __call__(self, micro_batches: Sequence[Batch]) -> StepOutcome:
        device, dist = self.dist.device, self.dist
        micro_batches = [(ids.to(device, non_blocking=True), labels.to(device, non_blocking=True))
                         for ids, labels in micro_batches]
        num_tokens = sum(self.objective.count_tokens(labels) for _, labels in micro_batches)
        total_tokens = float(all_reduce_sum(torch.tensor(float(num_tokens), device=device), dist))
        # normalised by the tokens of the whole accumulated (global) batch: not a mean of means;
        # DDP averages gradients over ranks, so scale by the world size to undo that average
        token_weight = dist.world_size / max(total_tokens, 1.0)
        micro_weight = 1.0 / len(micro_batches)
        want_entropy = "entropy" in self.signals
        ce_sum = torch.zeros((), dtype=torch.float64, device=device)
        aux_total = None
        entropies = []
        for i, (input_ids, labels) in enumerate(micro_batches):
            is_last = i == len(micro_batches) - 1
            with gradient_sync(self.objective.forward_model, enabled=is_last or not dist.enabled):
                with self.autocast():
                    part = self.objective(input_ids, labels, token_weight=token_weight, micro_weight=micro_weight,
                                          want_entropy=want_entropy)
                self.scaler.scale(part.loss).backward()
            ce_sum += part.ce_sum
            if part.aux_loss is not None:
                aux_total = part.aux_loss if aux_total is None else aux_total + part.aux_loss
            if part.entropy is not None:
                entropies.append(part.entropy)
        if self.objective.head is not None:
            _sync_grads(self.objective.head.parameters(), dist)
        mean_loss = float(all_reduce_sum(ce_sum, dist)) / max(total_tokens, 1.0)
        outcome = StepOutcome(loss=mean_loss, grad_norm=float("nan"),
                              aux_loss=None if aux_total is None else float(aux_total),
                              metacog=self.objective.pop_metacog_stats(), num_tokens=int(total_tokens))
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            outcome.skipped = "non-finite loss"
            return outcome

        self.scaler.unscale_(self.optimizer)
        norm = clip_grad_norm_(self.params, self.max_grad_norm)
        outcome.grad_norm = float(norm)
        if not math.isfinite(outcome.grad_norm):
            if self.scaler.is_enabled():  # an f16 overflow: the scaler skips the step and lowers its scale
                self.scaler.step(self.optimizer)
                self.scaler.update()
                outcome.skipped = "f16 overflow (loss scale lowered)"
            else:
                outcome.skipped = "non-finite gradient norm"
            self.optimizer.zero_grad(set_to_none=True)
            return outcome
        if isinstance(self.optimizer, SignalAware):
            entropy = None
            if entropies:
                entropy = float(all_reduce_sum(torch.stack(entropies).mean().reshape(1), dist)) / dist.world_size
            self.optimizer.set_signals(mean_loss, normalized_entropy=entropy, vocab_size=self.vocab_size,
                                       grad_norm=norm)
        if isinstance(self.optimizer, ReportsMetrics):
            outcome.optimizer_metrics = self.optimizer.step_metrics()  # what this update applies
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return outcome


def _sync_grads(params, dist: DistInfo) -> None:
    """Average gradients over ranks for parameters outside the DDP/FSDP wrapper (the meta head)."""
    if not dist.enabled:
        return
    for p in params:
        if p.grad is not None:
            all_reduce_sum(p.grad, dist)
            p.grad.div_(dist.world_size)
