"""What a trainer may ask of an optimizer beyond ``torch.optim.Optimizer``: capabilities, not classes.

A training loop checks ``isinstance(opt, SignalAware)`` / ``isinstance(opt, ReportsMetrics)``
(runtime-checkable protocols: any optimizer with these methods qualifies, Velvet or a plugin)::

    wanted = opt.training_signals() if isinstance(opt, SignalAware) else frozenset()
    ...backward, unscale...
    norm = vesper_optim.clipping.clip_grad_norm_(params, max_norm)   # the one clipping path
    if isinstance(opt, SignalAware):
        opt.set_signals(loss, normalized_entropy=h if "entropy" in wanted else None,
                        vocab_size=V, grad_norm=norm)               # the optimizer will not clip again
    metrics = opt.step_metrics() if isinstance(opt, ReportsMetrics) else {}
    opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

#: Every signal a signal-aware optimizer may ask for: the step's mean loss, and the mean
#: normalised entropy of the logits (vesper_optim.signals.normalized_entropy).
SIGNALS = ("loss", "entropy")


@runtime_checkable
class SignalAware(Protocol):
    """An optimizer whose update depends on this step's training signals."""

    def training_signals(self) -> frozenset[str]:
        """The subset of :data:`SIGNALS` this optimizer wants this run (constant for a run)."""
        ...

    def set_signals(self, loss: float, *, normalized_entropy: float | None = None,
                    vocab_size: int | None = None, grad_norm: torch.Tensor | None = None) -> None:
        """This step's signals, before ``step()``. ``grad_norm``: the pre-clip norm of gradients the
        caller has already clipped (the optimizer must not clip them again)."""
        ...


@runtime_checkable
class ReportsMetrics(Protocol):
    """An optimizer with numbers worth logging each step."""

    def step_metrics(self) -> dict[str, float]:
        """Name -> value for param group 0 as the next ``step()`` applies it, e.g. Velvet's
        ``lr_effective``, ``entropy_scale``, ``ppl_scale``, ``beta1_effective``."""
        ...
