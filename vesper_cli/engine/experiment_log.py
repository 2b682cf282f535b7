"""Optional Weights & Biases logging (``--wandb``); a clear warning when wandb is not installed."""

from __future__ import annotations

from typing import Any, Callable

from vesper_cli.engine.observer import StepMetrics


class ExperimentLogger:
    """No-op unless wandb is requested, installed, and this is rank 0."""

    def __init__(self, run: Any = None):
        self._run = run

    @classmethod
    def create(cls, cfg, is_main: bool, warn: Callable[[str], None]) -> "ExperimentLogger":
        if not cfg.train.wandb or not is_main:
            return cls()
        try:
            import wandb
        except ImportError:
            warn("warning: --wandb given but wandb is not installed (pip install 'vesper[wandb]'); "
                 "continuing without it")
            return cls()
        name = cfg.train.wandb_run or f"vesper-{cfg.model.model_size}-{cfg.train.dtype}"
        return cls(wandb.init(project=cfg.train.wandb_project, name=name, config=cfg.to_dict()))

    def log_step(self, m: StepMetrics) -> None:
        if self._run is not None:
            self._run.log({"train/loss": m.loss, "train/ppl": m.ppl, "train/lr": m.lr, "train/grad_norm": m.grad_norm,
                           "train/entropy_scale": m.entropy_scale, "train/ppl_scale": m.ppl_scale,
                           "train/tokens_per_sec": m.tokens_per_sec, "train/epoch": m.epoch}, step=m.step)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        if self._run is not None:
            self._run.log({f"val/{k.removeprefix('val_')}": v for k, v in metrics.items()}, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
