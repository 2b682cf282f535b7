"""Self-supervised targets for the meta head, computed from a batch and the LM's own logits.

Position t of ``logits`` (B, T, V) predicts ``labels[:, t]`` (the token t+1). Every target is 0/1:

* **confidence** = 1 when ``argmax(logits[t]) == labels[t]``: the head learns the probability that the
  LM's top-1 next token is right.
* **termination** = 1 when ``eos_id`` occurs in ``labels[t : t + horizon]``: the end of the document is
  at most ``horizon`` tokens ahead. All 0 when ``eos_id`` is None.
* **errors** (B, T, 3), multi-label, in the order of ``ERROR_TYPES``:

  0. *factual* - the true next token ranks outside the LM's top-``topk`` (default 10): the model did
     not even consider it, i.e. it lacks the fact. Tokens a trained LM ranks that low are mostly rare or
     content tokens (function words are predictable); pass ``content_mask`` (V,) bool to restrict the
     signal to an explicit set of content ids.
  1. *logical* - the LM is confident (max probability > ``LOGICAL_MIN_PROB`` = 0.5) yet its top-1 is
     wrong: a confidently wrong step.
  2. *incomplete* - the position lies in the last ``horizon`` positions of the window and no ``eos_id``
     follows it inside the window: the continuation is cut off by the window, not finished. (When
     ``eos_id`` is None no end is ever seen, so the last ``horizon`` positions are always incomplete.)
     This signal is positional; the head can learn it only as far as the hidden state carries it.

Positions whose label is ``ignore_index`` get all-zero targets and ``mask`` False. The logits are
read in row chunks (one float32 chunk at a time) with max / topk / logsumexp / gather, so no full-vocab
copy of the batch is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vesper_core.errors import ConfigError
from vesper_core.kernels.cross_entropy import CHUNK_LOGITS_ELEMENTS, IGNORE_INDEX

ERROR_TYPES = ("factual", "logical", "incomplete")
LOGICAL_MIN_PROB = 0.5


@dataclass
class MetaTargets:
    confidence: Tensor  # (B, T) float 0/1: top-1 is right
    termination: Tensor  # (B, T) float 0/1: eos within the horizon
    errors: Tensor  # (B, T, 3) float 0/1: factual, logical, incomplete
    mask: Tensor  # (B, T) bool: the label is real (not ignore_index)


@torch.no_grad()
def compute_targets(logits: Tensor, labels: Tensor, *, eos_id: int | None, horizon: int = 8,
                    topk: int = 10, content_mask: Tensor | None = None,
                    ignore_index: int = IGNORE_INDEX) -> MetaTargets:
    """Targets for every position of ``logits`` (B, T, V) against ``labels`` (B, T)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ConfigError(
            f"compute_targets needs logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    B, T, V = logits.shape
    rows = logits.reshape(B * T, V)
    return _targets(lambda start, end: rows[start:end], V, labels, eos_id=eos_id, horizon=horizon, topk=topk,
                    content_mask=content_mask, ignore_index=ignore_index)


@torch.no_grad()
def compute_targets_from_hidden(hidden: Tensor, weight: Tensor, labels: Tensor, *, eos_id: int | None,
                                horizon: int = 8, topk: int = 10, content_mask: Tensor | None = None,
                                ignore_index: int = IGNORE_INDEX) -> MetaTargets:
    """The same targets from the final hidden states (B, T, H) and the LM head ``weight`` (V, H).

    The logits are computed one row chunk at a time, so the (B*T, V) logits of a large vocabulary
    never exist at once (the training path with the chunked loss has no logits).
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2] or weight.shape[-1] != hidden.shape[-1]:
        raise ConfigError(f"compute_targets_from_hidden needs hidden (B, T, H), weight (V, H) and labels (B, T), "
                          f"got {tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(labels.shape)}")
    rows = hidden.reshape(-1, hidden.shape[-1])
    return _targets(lambda start, end: rows[start:end] @ weight.t(), weight.shape[0], labels, eos_id=eos_id,
                    horizon=horizon, topk=topk, content_mask=content_mask, ignore_index=ignore_index)


def _targets(row_logits, V: int, labels: Tensor, *, eos_id: int | None, horizon: int, topk: int,
             content_mask: Tensor | None, ignore_index: int) -> MetaTargets:
    if horizon < 1 or topk < 1:
        raise ConfigError(f"compute_targets: horizon and topk must be >= 1, got {horizon}, {topk}")
    B, T = labels.shape
    mask = labels != ignore_index  # (B, T)
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels)).long()  # (B, T)

    top1, max_prob, label_rank_ok = _row_stats(row_logits, B * T, V, safe_labels.reshape(-1), min(topk, V))
    top1, max_prob, in_topk = (x.view(B, T) for x in (top1, max_prob, label_rank_ok))

    correct = (top1 == safe_labels) & mask  # (B, T)
    factual = ~in_topk & mask
    if content_mask is not None:
        factual &= content_mask.to(labels.device)[safe_labels]
    logical = (max_prob > LOGICAL_MIN_PROB) & ~correct & mask

    # eos counts over label windows through a prefix sum: count(t, end) = c[end] - c[t]
    if eos_id is None:
        is_eos = torch.zeros_like(mask)
    else:
        is_eos = (labels == eos_id) & mask
    prefix = torch.nn.functional.pad(is_eos.long().cumsum(dim=1), (1, 0))  # (B, T + 1)
    pos = torch.arange(T, device=labels.device)  # (T,)
    ahead_end = (pos + horizon).clamp(max=T)
    eos_ahead = (prefix[:, ahead_end] - prefix[:, pos]) > 0  # (B, T)
    eos_until_end = (prefix[:, T:T + 1] - prefix[:, pos]) > 0  # (B, T)
    incomplete = (pos >= T - horizon)[None, :] & ~eos_until_end & mask

    errors = torch.stack([factual, logical, incomplete], dim=-1).float()  # (B, T, 3)
    return MetaTargets(confidence=correct.float(), termination=(eos_ahead & mask).float(),
                       errors=errors, mask=mask)


def _row_stats(row_logits, N: int, V: int, labels: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of the (N, V) logits that ``row_logits(start, end)`` gives a chunk of: top-1 id, its
    softmax probability, label within the top-k."""
    if N == 0:
        empty = labels.new_zeros(0)
        return empty.long(), empty.float(), empty.bool()
    chunk = max(1, CHUNK_LOGITS_ELEMENTS // max(V, 1))
    top1, max_prob, in_topk = [], [], []
    for start in range(0, N, chunk):
        part = row_logits(start, start + chunk).float()  # (n, V)
        lab = labels[start:start + chunk]  # (n,)
        values, ids = part.topk(k, dim=-1)  # (n, k), sorted descending
        max_prob.append(torch.exp(values[:, 0] - torch.logsumexp(part, dim=-1)))
        top1.append(ids[:, 0])
        # rank by value so that ties with the k-th value count as inside the top-k
        label_logit = part.gather(-1, lab[:, None]).squeeze(-1)
        in_topk.append(label_logit >= values[:, -1])
    return torch.cat(top1), torch.cat(max_prob), torch.cat(in_topk)
