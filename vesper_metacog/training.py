"""The meta head in the training loop (``--metacog`` / ``--metacog-only``) and its calibration on held-out text.

* ``--metacog``: a MetaHead (vesper_metacog) reads the model's final hidden states; per micro-batch the
  loss is ``LM loss + metacog_weight * metacog_loss`` with targets from the same forward pass (its
  logits, or the hidden states and the LM head chunk by chunk when the loss was chunked; EOS = the
  tokenizer's). The head's parameters are extra optimizer groups (``param_names`` prefixed
  ``metacog.``), so its moments are part of the resume state.
* ``--metacog-only``: the ``--resume`` model is frozen (``requires_grad`` False, forward under no_grad)
  and the optimizer holds only the head; the loss is the metacog loss alone (no weight, no LM loss; the
  logged ``loss`` is still the frozen model's cross-entropy).

The head is saved in the same checkpoint as ``metacog.*`` tensors with ``metacog_config`` in the
metadata. Calibration (``evaluate_calibration``) streams the head's confidence against "the model's
top-1 next token is right" through a CalibrationMeter: ECE, AUROC, accuracy, mean confidence, count.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable

import torch

from vesper_core.distributed import DistInfo, all_reduce_sum
from vesper_core.errors import CheckpointError
from vesper_core.model import METACOG_PREFIX
from vesper_metacog.config import MetacogConfig
from vesper_metacog.head import MetaHead
from vesper_metacog.losses import metacog_loss
from vesper_metacog.metrics import CalibrationMeter
from vesper_metacog.targets import compute_targets, compute_targets_from_hidden

METACOG_CONFIG_KEY = "metacog_config"


def build_head(model_config, resume_ckpt, device: torch.device, weight: float) -> tuple[MetaHead, str]:
    """The head to train: the one saved in ``resume_ckpt`` when it has one, else a fresh one."""
    if resume_ckpt is not None and resume_ckpt.has_metacog:
        head = load_head(resume_ckpt)
        if head.config.hidden_size != model_config.hidden_size:
            raise CheckpointError(f"{resume_ckpt.path}: its metacog head reads hidden size {head.config.hidden_size}, "
                                  f"the model has {model_config.hidden_size}")
        head.config = head.config.replace(loss_weight=float(weight))
        note = f"metacog: continuing the head saved in {resume_ckpt.path.name}"
    else:
        head = MetaHead(MetacogConfig.for_model(model_config, loss_weight=float(weight)))
        note = "metacog: a new meta head (confidence, 3 error types, termination)"
    num = sum(p.numel() for p in head.parameters())
    return head.to(device), f"{note}, {num:,} parameters, weight {head.config.loss_weight:g}"


def head_state(head: MetaHead) -> dict[str, torch.Tensor]:
    return {METACOG_PREFIX + k: v.detach() for k, v in head.state_dict().items()}


def _is_head_group(group: dict[str, Any]) -> bool:
    names = group.get("param_names") or []
    return bool(names) and all(str(n).startswith(METACOG_PREFIX) for n in names)


def adapt_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], str | None]:
    """Fit a saved optimizer state to this run's groups when only the head's presence differs.

    A checkpoint written with a head resumed without one drops the head's groups; one written without a
    head resumed with ``--metacog`` gets fresh head groups (no moments yet). Otherwise unchanged.
    """
    current = optimizer.state_dict()
    saved_groups, now_groups = saved["param_groups"], current["param_groups"]
    split = lambda groups: ([g for g in groups if not _is_head_group(g)], [g for g in groups if _is_head_group(g)])
    saved_lm, saved_head = split(saved_groups)
    now_lm, now_head = split(now_groups)
    if len(saved_head) == len(now_head) and len(saved_lm) == len(now_lm):
        return saved, None

    def pick(saved_part, now_part):
        if len(saved_part) == len(now_part):
            return [(g, True) for g in saved_part]
        if not saved_part:
            return [(g, False) for g in now_part]  # fresh: hyperparameters of this run, no state
        if not now_part:
            return []
        raise CheckpointError(f"optimizer state in the checkpoint has {len(saved_part)} groups where this run "
                              f"has {len(now_part)}; resume with the same options")

    chosen = pick(saved_lm, now_lm) + pick(saved_head, now_head)
    groups, state, next_index = [], {}, 0
    for group, from_saved in chosen:
        new_ids = list(range(next_index, next_index + len(group["params"])))
        next_index += len(new_ids)
        if from_saved:
            for old, new in zip(group["params"], new_ids):
                if old in saved["state"]:
                    state[new] = saved["state"][old]
        groups.append({**group, "params": new_ids})
    what = ("the checkpoint has no metacog head: its optimizer state is used for the model, the new head "
            "starts fresh" if len(now_head) > len(saved_head) else
            "the checkpoint's metacog head and its optimizer state are not used by this run")
    return {"state": state, "param_groups": groups}, what


class StepStats:
    """Metacog numbers of one optimizer step, summed over micro-batches without a host sync."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # loss, confidence sum, correct sum, positions, micro-batches

    def add(self, loss: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.float()
        row = torch.stack([loss.detach().float(), (confidence.detach().float() * m).sum(),
                           (correct.float() * m).sum(), m.sum(), torch.ones((), device=m.device)])
        self.sums = row if self.sums is None else self.sums + row

    def result(self) -> dict[str, float] | None:
        if self.sums is None:
            return None
        loss, conf, corr, count, micro = self.sums.double().tolist()
        n = max(count, 1.0)
        return {"loss": loss / max(micro, 1.0), "confidence": conf / n, "accuracy": corr / n}


def metacog_step_loss(head: MetaHead, hidden: torch.Tensor, labels: torch.Tensor, eos_id: int | None,
                      stats: StepStats, *, logits: torch.Tensor | None = None,
                      lm_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The unweighted metacog loss of one micro-batch (hidden (B, T, H), labels (B, T)).

    Targets come from the same forward pass: from ``logits`` when the loss built them, else from the
    hidden states and the LM head ``lm_weight`` one row chunk at a time (no full (B, T, V) logits).
    """
    if logits is not None:
        targets = compute_targets(logits.detach(), labels, eos_id=eos_id)
    else:
        targets = compute_targets_from_hidden(hidden.detach(), lm_weight.detach(), labels, eos_id=eos_id)
    meta = head(hidden)
    loss, _ = metacog_loss(meta, targets)
    stats.add(loss, meta.confidence, targets.confidence, targets.mask)
    return loss


@torch.no_grad()
def evaluate_calibration(model: torch.nn.Module, head: MetaHead, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         *, device: torch.device, autocast=None, eos_id: int | None = None,
                         dist_info: DistInfo | None = None, num_bins: int = 15) -> dict[str, float]:
    """Calibration of the head's confidence over ``batches`` of (input_ids, labels), in order.

    Returns ``ece``, ``auroc``, ``accuracy`` (top-1 of the model), ``mean_confidence``, ``count``
    (positions), ``lm_loss`` and ``batches``. With several ranks every rank passes its own batches
    and the histograms and losses are summed.
    """
    dist_info = dist_info or DistInfo(device=device)
    was_training, head_training = model.training, head.training
    model.eval()
    head.eval()
    meter = CalibrationMeter(num_bins=num_bins)
    loss_sums = torch.zeros(2, dtype=torch.float64, device=device)
    num_batches = 0
    for input_ids, labels in batches:
        input_ids, labels = input_ids.to(device), labels.to(device)
        with (autocast or contextlib.nullcontext)():
            out = model(input_ids, labels, loss_reduction="sum", return_hidden=True)
            meta = head(out.hidden_states)
        targets = (compute_targets(out.logits, labels, eos_id=eos_id) if out.logits is not None else
                   compute_targets_from_hidden(out.hidden_states, _lm_weight(model), labels, eos_id=eos_id))
        mask = targets.mask
        meter.update(meta.confidence.float()[mask], targets.confidence[mask])
        loss_sums[0] += out.loss.double()
        loss_sums[1] += mask.sum()
        num_batches += 1
    if dist_info.enabled and meter._sums is not None:  # one meter over all ranks: sum the histograms
        for t in (*meter._sums, meter._pos, meter._neg):
            all_reduce_sum(t, dist_info)
    all_reduce_sum(loss_sums, dist_info)
    model.train(was_training)
    head.train(head_training)
    result = meter.compute()
    lm_loss = float(loss_sums[0] / loss_sums[1]) if loss_sums[1] > 0 else math.nan
    return {**result, "lm_loss": lm_loss, "batches": num_batches}


def _lm_weight(model: torch.nn.Module) -> torch.Tensor:
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    return inner.lm_head.weight


def load_head(ckpt, device: torch.device | str = "cpu") -> MetaHead:
    """The MetaHead saved with a checkpoint (``vesper_core.checkpoint.LoadedCheckpoint``)."""
    from vesper_core.errors import ConfigError

    if not ckpt.metacog_state:
        raise CheckpointError(f"{ckpt.path} has no metacog head; train one with `vesper train --metacog` "
                              f"or `vesper train --metacog-only --resume {ckpt.path}`")
    raw = ckpt.meta(METACOG_CONFIG_KEY)
    try:
        config = MetacogConfig.from_dict(raw) if isinstance(raw, dict) else MetacogConfig.for_model(ckpt.config)
        head = MetaHead(config)
        head.load_state_dict(ckpt.metacog_state)
    except (ConfigError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt.path}: the saved metacog head does not load: {' '.join(str(exc).split())}") from exc
    return head.to(device)
