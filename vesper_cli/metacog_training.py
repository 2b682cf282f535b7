"""The meta head in the training loop (``--metacog`` / ``--metacog-only``) and its calibration on held-out text.

* ``--metacog``: a MetaHead (vesper_metacog) reads the model's final hidden states; per micro-batch the
  loss is ``LM loss + metacog_weight * metacog_loss`` with targets from ``compute_targets`` on the same
  batch's logits and labels (EOS = the tokenizer's). The head's parameters are extra optimizer groups
  (``param_names`` prefixed ``metacog.``), so its moments are part of the resume state.
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
from typing import Any, Callable

import torch
import torch.nn.functional as F

from vesper_cli.distributed import DistInfo, all_reduce_sum
from vesper_core.errors import CheckpointError
from vesper_core.model import METACOG_PREFIX
from vesper_data.loader import BatchLoader
from vesper_metacog import CalibrationMeter, MetacogConfig, MetaHead, compute_targets, metacog_loss

METACOG_CONFIG_KEY = "metacog_config"


def build_head(model_config, resume_ckpt, device: torch.device, weight: float) -> tuple[MetaHead, str]:
    """The head to train: the one saved in ``resume_ckpt`` when it has one, else a fresh one."""
    if resume_ckpt is not None and resume_ckpt.has_metacog:
        head = resume_ckpt.build_metacog_head()
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


def head_param_groups(head: MetaHead, weight_decay: float) -> list[dict[str, Any]]:
    """Decay (matrices) / no-decay (biases) groups for the head, names prefixed ``metacog.``."""
    decay = {"params": [], "param_names": [], "weight_decay": weight_decay}
    no_decay = {"params": [], "param_names": [], "weight_decay": 0.0}
    for name, p in head.named_parameters():
        group = decay if p.dim() >= 2 else no_decay
        group["params"].append(p)
        group["param_names"].append(METACOG_PREFIX + name)
    return [g for g in (decay, no_decay) if g["params"]]


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


def metacog_step_loss(head: MetaHead, hidden: torch.Tensor, logits: torch.Tensor | None, labels: torch.Tensor,
                      eos_id: int | None, stats: StepStats,
                      lm_head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The unweighted metacog loss of one micro-batch (hidden (B, T, H), labels (B, T))."""
    if logits is None:  # the fused CE path never built the logits: targets need them once, without grad
        with torch.no_grad():
            logits = lm_head(hidden.detach())  # (B, T, V)
    targets = compute_targets(logits.detach(), labels, eos_id=eos_id)
    meta = head(hidden)
    loss, _ = metacog_loss(meta, targets)
    stats.add(loss, meta.confidence, targets.confidence, targets.mask)
    return loss


def sync_head_grads(head: MetaHead, dist_info: DistInfo) -> None:
    """Average the head's gradients over ranks (DDP/FSDP wrap only the model)."""
    if not dist_info.enabled:
        return
    for p in head.parameters():
        if p.grad is not None:
            all_reduce_sum(p.grad, dist_info)
            p.grad.div_(dist_info.world_size)


@torch.no_grad()
def evaluate_calibration(model: torch.nn.Module, head: MetaHead, windows, *, batch_size: int, device: torch.device,
                         autocast=None, max_batches: int = 0, eos_id: int | None = None,
                         dist_info: DistInfo | None = None, num_bins: int = 15) -> dict[str, float]:
    """Calibration of the head's confidence over the first ``max_batches`` batches (all when 0), in order.

    Returns ``ece``, ``auroc``, ``accuracy`` (top-1 of the model), ``mean_confidence``, ``count``
    (positions), ``lm_loss`` and ``batches``.
    """
    dist_info = dist_info or DistInfo(device=device)
    loader = BatchLoader(windows, batch_size, shuffle=False, drop_last=False, rank=dist_info.rank,
                         world_size=dist_info.world_size)
    was_training, head_training = model.training, head.training
    model.eval()
    head.eval()
    meter = CalibrationMeter(num_bins=num_bins)
    loss_sums = torch.zeros(2, dtype=torch.float64, device=device)
    num_batches = min(loader.num_batches, max_batches) if max_batches > 0 else loader.num_batches
    for _, (input_ids, labels) in zip(range(num_batches), loader):
        input_ids, labels = input_ids.to(device), labels.to(device)
        with (autocast or contextlib.nullcontext)():
            out = model(input_ids, return_hidden=True)
            meta = head(out.hidden_states)
        targets = compute_targets(out.logits, labels, eos_id=eos_id)
        mask = targets.mask
        meter.update(meta.confidence.float()[mask], targets.confidence[mask])
        loss_sums[0] += F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(), reduction="sum").double()
        loss_sums[1] += labels.numel()
    if dist_info.enabled and meter._sums is not None:  # one meter over all ranks: sum the histograms
        for t in (*meter._sums, meter._pos, meter._neg):
            all_reduce_sum(t, dist_info)
    all_reduce_sum(loss_sums, dist_info)
    model.train(was_training)
    head.train(head_training)
    result = meter.compute()
    lm_loss = float(loss_sums[0] / loss_sums[1]) if loss_sums[1] > 0 else math.nan
    return {**result, "lm_loss": lm_loss, "batches": num_batches}


DEFAULT_EVAL_SEQ_LEN = 256


def _recorded_seq_len(checkpoint_path) -> int | None:
    """The --seq-len the checkpoint was trained with, from the resume state beside it (if any)."""
    import json

    from vesper_cli.resume_state import state_paths

    json_path = state_paths(checkpoint_path)[1]
    try:
        return int(json.loads(json_path.read_text(encoding="utf-8"))["run_config"]["data"]["seq_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def evaluate_checkpoint(model_path: str, dataset: str, *, seq_len: int | None = None, batch_size: int = 8,
                        max_batches: int = 0, data_format: str = "auto", tokenizer: str | None = None,
                        device: torch.device | str = "cpu",
                        on_warning: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``vesper metacog eval``: the saved head's calibration on ``dataset`` (see ``evaluate_calibration``).

    ``seq_len`` defaults to the training one when the checkpoint's resume state records it, else 256 (at
    most the model's context). CheckpointError when the checkpoint has no head.
    """
    from vesper_cli.datasets import load_tokens
    from vesper_cli.generation import load_generator
    from vesper_core.errors import ConfigError, DataError
    from vesper_data.config import DataConfig
    from vesper_data.loader import TokenWindows

    if batch_size <= 0 or max_batches < 0 or (seq_len is not None and seq_len <= 0):
        raise ConfigError(f"--batch-size and --seq-len must be positive and --max-batches >= 0, got "
                          f"{batch_size}, {seq_len}, {max_batches}")
    device = torch.device(device)
    gen = load_generator(model_path, tokenizer=tokenizer, device=device)
    ckpt, model = gen.checkpoint, gen.model
    head = ckpt.build_metacog_head(device)
    context = model.config.max_position_embeddings
    if seq_len is None:
        seq_len = min(_recorded_seq_len(ckpt.path) or DEFAULT_EVAL_SEQ_LEN, context)
    if seq_len > context:
        raise ConfigError(f"--seq-len {seq_len} is longer than the model's context ({context})")
    data_cfg = DataConfig(dataset=dataset, format=data_format, seq_len=seq_len, batch_size=batch_size)
    windows = TokenWindows(load_tokens(dataset, data_cfg, gen.tokenizer, on_warning=on_warning), seq_len)
    if len(windows) == 0:
        raise DataError(f"{dataset} is shorter than one window of --seq-len {seq_len} + 1 tokens; "
                        f"use a longer file or a smaller --seq-len")
    result = evaluate_calibration(model, head, windows, batch_size=batch_size, device=device,
                                  max_batches=max_batches, eos_id=gen.tokenizer.eos_id)
    return {**result, "checkpoint": str(ckpt.path), "dataset": dataset, "seq_len": seq_len}
