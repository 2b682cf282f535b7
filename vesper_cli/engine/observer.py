"""What the training loop reports, and the no-op observer libraries call (the CLI renders it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepMetrics:
    step: int
    epoch: int
    loss: float
    ppl: float
    lr: float
    grad_norm: float
    entropy_scale: float
    ppl_scale: float
    tokens_per_sec: float
    aux_loss: float | None = None
    metacog: dict[str, float] | None = None  # with --metacog: loss, confidence (mean), accuracy (top-1)
    beta1: float | None = None  # the beta1 the optimizer applied (Velvet's perplexity rule), when it reports one
    step_time_s: float | None = None  # wall time of this optimizer step
    elapsed_s: float | None = None  # since this session's first step
    total_steps: int | None = None  # the run's planned length (None: until the data runs out)
    eta_s: float | None = None  # estimated time to total_steps
    mfu: float | None = None  # model FLOPs utilisation, when the device's peak is known

    def log_entry(self) -> dict[str, Any]:
        """One ``training_log.json`` step entry (Rust keys first); non-finite numbers become null."""
        entry = {
            "step": self.step, "loss": self.loss, "ppl": self.ppl, "lr": self.lr,
            "tokens_per_sec": self.tokens_per_sec, "grad_norm": self.grad_norm,
            "entropy_scale": self.entropy_scale, "ppl_scale": self.ppl_scale,
        }
        if self.beta1 is not None:
            entry["beta1"] = self.beta1
        for key in ("step_time_s", "elapsed_s", "mfu"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        if self.aux_loss is not None:
            entry["aux_loss"] = self.aux_loss
        for key, value in (self.metacog or {}).items():
            entry[f"metacog_{key}"] = value
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}


@dataclass
class RunInfo:
    """Printed once before the first step."""

    model_size: str
    num_params: int
    vocab_size: int
    device: str
    dtype: str
    optimizer: str
    tokenizer: str
    num_train_tokens: int
    batches_per_epoch: int
    total_steps: int | None
    start_step: int
    notes: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    output_dir: Path | None  # None for runs that write nothing (benchmark arms)
    final_checkpoint: Path | None
    log_path: Path | None
    steps: int
    first_loss: float | None
    final_loss: float | None
    elapsed_s: float
    tokens_seen: int
    checkpoints: list[Path] = field(default_factory=list)
    stopped_by: str | None = None  # the signal (or request) that stopped the run early
    final_eval: dict[str, float] | None = None  # the held-out metrics at the last step, when evaluated there


class TrainObserver:
    """Override what you need; every hook is optional."""

    def on_start(self, info: RunInfo) -> None: ...

    def on_step(self, metrics: StepMetrics) -> None: ...

    def on_epoch_end(self, epoch: int, mean_loss: float) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, path: Path) -> None: ...

    def on_message(self, message: str) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...
