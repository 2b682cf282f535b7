"""What one micro-batch costs: the model's own loss (+ MoE aux) and, with a meta head, its loss.

The trainer's step function calls an objective once per micro-batch and only sees the result; it never
reaches into the model. ``LanguageModelObjective`` is the one every command uses:

* the LM loss is ``VesperLM(ids, labels=..., loss_reduction="sum")`` (standard or chunked CE, by
  ``loss_impl``), weighted by ``token_weight`` so that the accumulated (global) batch is normalised by
  its token count, not averaged per micro-batch;
* the MoE load-balancing loss is added with the model's ``moe_aux_loss_weight``, averaged over
  micro-batches;
* a meta head (``--metacog``) adds ``head_weight x metacog loss`` from the same pass (targets from the
  logits, or from the hidden states chunk by chunk when the chunked loss built none); with
  ``head_only`` (``--metacog-only``) the model runs without gradients and the head's loss is the whole
  loss.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from vesper_core.kernels.cross_entropy import IGNORE_INDEX
from vesper_core.model import VesperLM
from vesper_metacog.training import StepStats, metacog_step_loss


@dataclass
class MicroBatchLoss:
    loss: Tensor  # the weighted loss to backpropagate
    ce_sum: Tensor  # detached f64 sum of the token cross-entropies (for the logged mean)
    aux_loss: Tensor | None = None  # detached MoE aux loss of this micro-batch, already / micro-batches
    entropy: Tensor | None = None  # detached mean normalised entropy of the predictions


class LanguageModelObjective:
    """The loss of a VesperLM (optionally wrapped by DDP / torch.compile) plus an optional meta head."""

    def __init__(self, model: VesperLM, *, forward_model: torch.nn.Module | None = None, loss_impl: str = "auto",
                 head=None, head_only: bool = False, eos_id: int | None = None):
        self.model = model
        self.forward_model = forward_model or model
        self.loss_impl = loss_impl
        self.head = head
        self.head_only = head_only
        self.eos_id = eos_id
        self.metacog_stats = StepStats()

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The trainable parameters (the model's unless frozen, then the head's)."""
        yield from (p for p in self.model.parameters() if p.requires_grad)
        if self.head is not None:
            yield from (p for p in self.head.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        if self.head is not None:
            self.head.train(mode)

    @staticmethod
    def count_tokens(labels: Tensor) -> int:
        return int((labels != IGNORE_INDEX).sum())

    def __call__(self, input_ids: Tensor, labels: Tensor, *, token_weight: float, micro_weight: float,
                 want_entropy: bool) -> MicroBatchLoss:
        head = self.head
        grad = contextlib.nullcontext() if not self.head_only else torch.no_grad()
        with grad:
            out = self.forward_model(input_ids, labels, loss_impl=self.loss_impl, loss_reduction="sum",
                                     return_entropy=want_entropy, return_hidden=head is not None)
        ce = out.loss
        loss = ce * token_weight
        aux = None
        if out.aux_loss is not None:
            aux = out.aux_loss.float() * micro_weight
            loss = loss + self.model.config.moe_aux_loss_weight * aux
            aux = aux.detach()
        if head is not None:
            meta = metacog_step_loss(head, out.hidden_states, labels, self.eos_id, self.metacog_stats,
                                     logits=out.logits, lm_weight=self.model.lm_head.weight) * micro_weight
            # --metacog-only: the head's loss alone (the frozen model has no gradient to give)
            loss = meta if self.head_only else loss + head.config.loss_weight * meta
        return MicroBatchLoss(loss=loss, ce_sum=ce.detach().double(), aux_loss=aux, entropy=out.entropy)

    def pop_metacog_stats(self) -> dict[str, float] | None:
        """The head's loss / confidence / accuracy over the micro-batches since the last call."""
        stats, self.metacog_stats = self.metacog_stats, StepStats()
        return stats.result()
