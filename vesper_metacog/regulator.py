"""MetacognitiveRegulator: the three stages of UPSTREAM_SPEC §8, each a pure function of its inputs.

1. **Planning** (``plan``): given candidate continuations with their mean confidence, pick the most
   confident (ties -> the first). Upstream's stage was a no-op. Disabled -> always candidate 0.
2. **Online regulation** (``regulate``): a span is *weak* when its mean confidence is below
   ``regulation_threshold`` or some error probability exceeds ``ERROR_THRESHOLD`` (0.5)
   (``has_errors``; the head's error types are independent sigmoids, so this means something, unlike
   upstream's softmax maximum). A weak span is re-sampled from its first flagged position (confidence
   under the threshold, or an error). The test is on the span's mean, not on single tokens, because a
   single low confidence is usually a choice point of the text (after "The", many nouns are right),
   not a mistake, and re-drawing it only makes the text worse. Disabled -> ``resample_from`` is always
   None; ``has_errors`` is still reported because termination uses it.
3. **Satisficing termination** (``should_terminate``): stop when ``iteration >= max_iterations``;
   otherwise, when enabled, stop when the mean confidence exceeds ``confidence_threshold`` (strictly)
   and there are no errors ("satisficed"), or when the head's own termination probability exceeds 0.5
   while the span is sound - mean confidence at least ``regulation_threshold`` and no errors
   ("termination": the end of the document is near and the model is not lost; upstream computed this
   output but never consulted it). Disabled -> only the iteration bound.

``step`` combines them for generation, one span at a time; see its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from vesper_core.errors import ConfigError
from vesper_metacog.config import MetacogConfig
from vesper_metacog.head import MetaOutput

ERROR_THRESHOLD = 0.5
TERMINATION_THRESHOLD = 0.5

CONTINUE, RESAMPLE, STOP = "continue", "resample", "stop"


@dataclass(frozen=True)
class CandidateScore:
    """One candidate continuation for planning."""

    mean_confidence: float

    @classmethod
    def from_confidences(cls, confidences: Tensor) -> "CandidateScore":
        return cls(mean_confidence=float(confidences.float().mean()))


@dataclass(frozen=True)
class RegulationDecision:
    resample_from: int | None  # first flagged position of the span, or None
    has_errors: bool


@dataclass(frozen=True)
class MetaWindow:
    """The head's outputs over one span of one sequence."""

    confidence: Tensor  # (T,)
    error_probs: Tensor  # (T, E)
    termination_prob: Tensor | None = None  # (T,)
    finished: bool = True  # the span ends a sentence; False when it was cut at its length limit

    @classmethod
    def from_output(cls, meta: MetaOutput, row: int = 0, start: int = 0,
                    end: int | None = None) -> "MetaWindow":
        """Positions ``start:end`` of batch row ``row`` of a MetaOutput."""
        return cls(confidence=meta.confidence[row, start:end].detach(),
                   error_probs=meta.error_probs[row, start:end].detach(),
                   termination_prob=meta.termination_prob[row, start:end].detach())


@dataclass(frozen=True)
class RegulatorStep:
    action: str  # "continue" | "resample" | "stop"
    resample_from: int | None  # span position to re-sample from when action == "resample"
    iteration: int  # resamples of this span so far, including this one
    confidence_mean: float
    has_errors: bool
    reason: str | None = None  # why it stops: "satisficed" or "termination"


class MetacognitiveRegulator:
    def __init__(self, config: MetacogConfig):
        self.config = config

    # -- stage 1 ---------------------------------------------------------------------
    def plan(self, candidates: Sequence[CandidateScore]) -> int:
        """Index of the candidate with the highest mean confidence (ties -> first)."""
        if not candidates:
            raise ConfigError("plan() needs at least one candidate continuation")
        if not self.config.enable_planning:
            return 0
        best = 0
        for i, candidate in enumerate(candidates):
            if candidate.mean_confidence > candidates[best].mean_confidence:
                best = i
        return best

    # -- stage 2 ---------------------------------------------------------------------
    def regulate(self, confidences: Tensor, errors: Tensor) -> RegulationDecision:
        """Decision for ``confidences`` (T,) and error probabilities ``errors`` (T, E)."""
        if confidences.dim() != 1 or errors.dim() != 2 or errors.shape[0] != confidences.shape[0]:
            raise ConfigError(
                f"regulate needs confidences (T,) and errors (T, E), got {tuple(confidences.shape)} "
                f"and {tuple(errors.shape)}"
            )
        erroneous = (errors > ERROR_THRESHOLD).any(dim=-1)  # (T,)
        has_errors = bool(erroneous.any())
        weak = confidences.numel() > 0 and (
            has_errors or self._mean(confidences) < self.config.regulation_threshold)
        if not self.config.enable_regulation or not weak:
            return RegulationDecision(resample_from=None, has_errors=has_errors)
        flagged = (confidences < self.config.regulation_threshold) | erroneous  # (T,)
        start = int(torch.nonzero(flagged).flatten()[0])  # a weak span has a flagged position
        return RegulationDecision(resample_from=start, has_errors=has_errors)

    @staticmethod
    def _mean(confidences: Tensor) -> float:
        return float(confidences.float().mean()) if confidences.numel() else 0.0

    # -- stage 3 ---------------------------------------------------------------------
    def is_satisficing(self, confidence_mean: float, has_errors: bool,
                       termination_prob: float | None = None) -> bool:
        """The termination rule without the iteration bound (False when termination is disabled)."""
        if not self.config.enable_termination:
            return False
        return self._satisfice_reason(confidence_mean, has_errors, termination_prob) is not None

    def should_terminate(self, confidence_mean: float, has_errors: bool, iteration: int,
                         termination_prob: float | None = None) -> bool:
        """Satisficing termination; see the module docstring."""
        if iteration >= self.config.max_iterations:
            return True
        return self.is_satisficing(confidence_mean, has_errors, termination_prob)

    def _satisfice_reason(self, confidence_mean: float, has_errors: bool,
                          termination_prob: float | None) -> str | None:
        if confidence_mean > self.config.confidence_threshold and not has_errors:
            return "satisficed"
        sound = not has_errors and confidence_mean >= self.config.regulation_threshold
        if sound and termination_prob is not None and termination_prob > TERMINATION_THRESHOLD:
            return "termination"
        return None

    # -- generation ------------------------------------------------------------------
    def step(self, window: MetaWindow, iteration: int = 0) -> RegulatorStep:
        """Decide what to do with the latest generated span.

        ``iteration`` is how many times this span was already re-sampled (the caller threads it:
        pass the returned ``iteration`` back, and 0 for a new span). In order:

        * ``resample`` from the first flagged position while ``iteration < max_iterations``
          (the returned iteration is one more);
        * ``stop`` when satisficing (mean confidence of the span, no errors) or, on a sound span, the
          termination probability at the span's last position exceeds 0.5 - but only for a
          ``finished`` span (a sentence, not a run cut at the length limit: a loop of commas can be
          very confident) accepted as first drawn (``iteration == 0``);
        * otherwise ``continue``. Running out of iterations means accepting the span and going on,
          not stopping, so a model that is never confident still writes ``max_new_tokens``.

        A re-drawn span is accepted but never ends the generation, however confident: its first
        draw was weak, so the model was lost there, and a confident repair (after a garbled prompt,
        the most confident re-draw is often a stock phrase) is not evidence that the text is done.
        The next span, drawn without help, decides.
        """
        decision = self.regulate(window.confidence, window.error_probs)
        mean = self._mean(window.confidence)
        if decision.resample_from is not None and iteration < self.config.max_iterations:
            return RegulatorStep(RESAMPLE, decision.resample_from, iteration + 1, mean,
                                 decision.has_errors)
        last_term = None
        if window.termination_prob is not None and window.termination_prob.numel():
            last_term = float(window.termination_prob[-1])
        reason = None
        if self.config.enable_termination and iteration == 0 and window.finished:
            reason = self._satisfice_reason(mean, decision.has_errors, last_term)
        action = STOP if reason is not None else CONTINUE
        return RegulatorStep(action, None, iteration, mean, decision.has_errors, reason)
