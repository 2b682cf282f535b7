"""Optional Weights & Biases logging (``--wandb``); a clear warning when wandb is not installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vesper_cli.engine.observer import StepMetrics


class ExperimentLogger:
    """No-op unless wandb and/or TensorBoard is requested, installed, and this is rank 0."""

    def __init__(self, run: Any = None, writer: Any = None):
        self._run = run
        self._writer = writer

    @classmethod
    def create(cls, cfg, is_main: bool, warn: Callable[[str], None]) -> "ExperimentLogger":
        if not is_main:
            return cls()
        run = writer = None
        if cfg.train.wandb:
            try:
                import wandb
            except ImportError:
                warn("warning: --wandb given but wandb is not installed (pip install 'vesper[wandb]'); "
                     "continuing without it")
            else:
                name = cfg.train.wandb_run or f"vesper-{cfg.model.model_size}-{cfg.train.dtype}"
                run = wandb.init(project=cfg.train.wandb_project, name=name, config=cfg.to_dict())
        if getattr(cfg.train, "tensorboard", False):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warn("warning: --tensorboard given but tensorboard is not installed (pip install "
                     "'vesper[tensorboard]'); continuing without it")
            else:
                writer = SummaryWriter(log_dir=str(Path(cfg.train.output_dir) / "tensorboard"))
        return cls(run, writer)

    def log_step(self, m: StepMetrics) -> None:
        values = {"train/loss": m.loss, "train/ppl": m.ppl, "train/lr": m.lr, "train/grad_norm": m.grad_norm,
                  "train/entropy_scale": m.entropy_scale, "train/ppl_scale": m.ppl_scale,
                  "train/tokens_per_sec": m.tokens_per_sec, "train/epoch": m.epoch}
        if m.step_time_s is not None:
            values["train/step_time_s"] = m.step_time_s
        if m.mfu is not None:
            values["train/mfu"] = m.mfu
        if self._run is not None:
            self._run.log(values, step=m.step)
        if self._writer is not None:
            for key, value in values.items():
                if value is not None:
                    self._writer.add_scalar(key, value, m.step)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        values = {f"val/{k.removeprefix('val_')}": v for k, v in metrics.items()}
        if self._run is not None:
            self._run.log(values, step=step)
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
        if self._writer is not None:
            self._writer.close()
