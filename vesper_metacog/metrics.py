"""Calibration and ranking metrics for the head's confidence.

* ``expected_calibration_error``: equal-width bins over [0, 1]; bin i holds confidences in
  (i/n, (i+1)/n] (0 goes to bin 0); ECE = sum over bins of (bin count / N) * |accuracy - mean confidence|.
* ``auroc``: Mann-Whitney U / (n_pos * n_neg) with average ranks for ties (a tie counts 1/2); nan when
  one class is missing.
* ``CalibrationMeter``: the same numbers streamed over batches in constant memory. ECE is exact; AUROC
  is computed from a ``auroc_bins``-bin histogram (scores in one bin count as ties), so it is exact up to
  a resolution of 1/auroc_bins.

Empty inputs give nan.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vesper_core.errors import ConfigError


def _flat(confidence: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    conf = torch.as_tensor(confidence).detach().reshape(-1).double()
    corr = torch.as_tensor(correct).detach().reshape(-1).double().to(conf.device)
    if conf.shape != corr.shape:
        raise ConfigError(f"confidence and correct differ in size: {conf.numel()} vs {corr.numel()}")
    return conf, corr


def _bin_index(conf: Tensor, num_bins: int) -> Tensor:
    """Bin of each confidence: (i/n, (i+1)/n] -> i, with 0 -> 0 and values clamped to [0, 1]."""
    if num_bins < 1:
        raise ConfigError(f"num_bins must be >= 1, got {num_bins}")
    idx = torch.ceil(conf.clamp(0.0, 1.0) * num_bins).long() - 1
    return idx.clamp(0, num_bins - 1)


def _bin_sums(conf: Tensor, corr: Tensor, num_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin: count, sum of confidence, sum of correctness (float64, on conf's device)."""
    idx = _bin_index(conf, num_bins)
    zeros = torch.zeros(num_bins, dtype=torch.float64, device=conf.device)
    count = zeros.index_add(0, idx, torch.ones_like(conf))
    conf_sum = zeros.index_add(0, idx, conf)
    corr_sum = zeros.index_add(0, idx, corr)
    return count, conf_sum, corr_sum


def _ece_from_sums(count: Tensor, conf_sum: Tensor, corr_sum: Tensor) -> float:
    total = float(count.sum())
    if total == 0:
        return math.nan
    gap = (corr_sum - conf_sum).abs()  # = count * |acc - conf| per bin
    return float(gap.sum()) / total


def expected_calibration_error(confidence: Tensor, correct: Tensor, num_bins: int = 15) -> float:
    """ECE of ``confidence`` (N,) in [0, 1] against ``correct`` (N,) bool or 0/1."""
    conf, corr = _flat(confidence, correct)
    return _ece_from_sums(*_bin_sums(conf, corr, num_bins))


def reliability_bins(confidence: Tensor, correct: Tensor, num_bins: int = 15) -> list[dict[str, Any]]:
    """One dict per bin for a reliability diagram: lower, upper, count, accuracy, confidence.

    ``accuracy`` and ``confidence`` (the bin's means) are nan for empty bins.
    """
    conf, corr = _flat(confidence, correct)
    count, conf_sum, corr_sum = _bin_sums(conf, corr, num_bins)
    rows = []
    for i in range(num_bins):
        n = int(count[i])
        rows.append({
            "lower": i / num_bins,
            "upper": (i + 1) / num_bins,
            "count": n,
            "accuracy": float(corr_sum[i]) / n if n else math.nan,
            "confidence": float(conf_sum[i]) / n if n else math.nan,
        })
    return rows


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``scores`` (N,) for binary ``labels`` (N,); ties count 1/2."""
    s, y = _flat(scores, labels)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = s.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of each group's last member
    average_rank = ends - (counts.double() - 1.0) / 2.0  # mean rank inside each tie group
    rank_sum = float(average_rank[inverse][pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


class CalibrationMeter:
    """Streams ``update(confidence, correct)`` over batches; ``compute()`` gives the summary dict.

    State lives on the device of the first update (no host sync until ``compute``).
    """

    def __init__(self, num_bins: int = 15, auroc_bins: int = 10_000):
        if num_bins < 1 or auroc_bins < 1:
            raise ConfigError(f"num_bins and auroc_bins must be >= 1, got {num_bins}, {auroc_bins}")
        self.num_bins = num_bins
        self.auroc_bins = auroc_bins
        self.reset()

    def reset(self) -> None:
        self._sums: tuple[Tensor, Tensor, Tensor] | None = None
        self._pos: Tensor | None = None  # (auroc_bins,) histogram of positives' scores
        self._neg: Tensor | None = None

    def update(self, confidence: Tensor, correct: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch; ``mask`` (same shape, bool) keeps only the True positions."""
        conf, corr = _flat(confidence, correct)
        if mask is not None:
            keep = torch.as_tensor(mask).reshape(-1).to(conf.device).bool()
            conf, corr = conf[keep], corr[keep]
        sums = _bin_sums(conf, corr, self.num_bins)
        idx = _bin_index(conf, self.auroc_bins)
        zeros = torch.zeros(self.auroc_bins, dtype=torch.float64, device=conf.device)
        pos = zeros.index_add(0, idx, (corr > 0.5).double())
        neg = zeros.index_add(0, idx, (corr <= 0.5).double())
        if self._sums is None:
            self._sums, self._pos, self._neg = sums, pos, neg
        else:
            self._sums = tuple(a + b.to(a.device) for a, b in zip(self._sums, sums))
            self._pos = self._pos + pos.to(self._pos.device)
            self._neg = self._neg + neg.to(self._neg.device)

    def compute(self) -> dict[str, float]:
        """``{"ece", "auroc", "accuracy", "mean_confidence", "count"}`` (nan when empty)."""
        if self._sums is None:
            return {"ece": math.nan, "auroc": math.nan, "accuracy": math.nan,
                    "mean_confidence": math.nan, "count": 0}
        count, conf_sum, corr_sum = (t.cpu() for t in self._sums)
        n = float(count.sum())
        pos, neg = self._pos.cpu(), self._neg.cpu()
        n_pos, n_neg = float(pos.sum()), float(neg.sum())
        if n_pos == 0 or n_neg == 0:
            area = math.nan
        else:
            below = torch.cumsum(neg, 0) - neg  # negatives in strictly lower bins
            area = float((pos * (below + 0.5 * neg)).sum()) / (n_pos * n_neg)
        return {
            "ece": _ece_from_sums(count, conf_sum, corr_sum),
            "auroc": area,
            "accuracy": float(corr_sum.sum()) / n if n else math.nan,
            "mean_confidence": float(conf_sum.sum()) / n if n else math.nan,
            "count": int(n),
        }
