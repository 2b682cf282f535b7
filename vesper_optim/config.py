"""OptimConfig: every optimizer and LR-schedule setting, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vesper_core.errors import ConfigError, UnknownNameError
from vesper_optim import functional
from vesper_optim.schedules import SCHEDULES
from vesper_optim.signals import DEFAULT_BOUNDS
from vesper_optim.velvet import check_hyperparameters


@dataclass(kw_only=True, slots=True)
class OptimConfig:
    name: str = "velvet"
    """Optimizer name in ``vesper_optim.registry.OPTIMIZERS`` ("velvet", "adamw", plugins)."""
    lr: float = 3e-4
    """Peak learning rate (before Velvet's entropy scale)."""
    beta1: float = 0.9
    """First-moment decay (Velvet: before the perplexity scale)."""
    beta2: float = 0.999
    """Second-moment decay."""
    eps: float = 1e-8
    """Denominator epsilon."""
    weight_decay: float = 1e-3
    """Decoupled weight decay of the decay group."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    entropy_adaptive: bool = True
    """Velvet: scale the LR by the entropy scale s_e."""
    perplexity_guided: bool = True
    """Velvet: scale beta1 by the perplexity scale s_p."""
    sparse_aware: bool = False
    """Velvet: keep structural zeros of ``sparse=True`` groups at zero."""
    scale_bounds: tuple[float, float] = DEFAULT_BOUNDS
    """Clamp (lo, hi) of both Velvet scales."""
    backend: str = "auto"
    """Velvet kernel backend: "auto", "reference", "foreach" or a registered one."""
    lr_schedule: str = "constant"
    """"constant" or "cosine" (to ``min_lr_ratio * lr`` at the run's last step)."""
    warmup_steps: int = 0
    """Linear warm-up steps (the first step already has ``lr / warmup_steps``)."""
    min_lr_ratio: float = 0.1
    """Final LR of the cosine schedule as a fraction of ``lr``."""

    def __post_init__(self) -> None:
        if not isinstance(self.scale_bounds, tuple):
            try:
                self.scale_bounds = tuple(self.scale_bounds)
            except TypeError:
                raise ConfigError(f"OptimConfig.scale_bounds: expected (lo, hi), got {self.scale_bounds!r}") from None
        try:
            check_hyperparameters(
                lr=self.lr, betas=(self.beta1, self.beta2), eps=self.eps,
                weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
                entropy_adaptive=self.entropy_adaptive, perplexity_guided=self.perplexity_guided,
                sparse_aware=self.sparse_aware, scale_bounds=self.scale_bounds,
            )
        except ConfigError as exc:
            raise ConfigError(f"OptimConfig: {exc}") from None
        self._check_names()
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"OptimConfig.lr_schedule: unknown {self.lr_schedule!r}; choices: "
                              f"{', '.join(SCHEDULES)}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"OptimConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if isinstance(self.min_lr_ratio, bool) or not isinstance(self.min_lr_ratio, (int, float)) \
                or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"OptimConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")

    def _check_names(self) -> None:
        from vesper_optim.registry import OPTIMIZERS  # registry imports this module

        for field_name, registry in (("name", OPTIMIZERS), ("backend", functional.BACKENDS)):
            value = getattr(self, field_name)
            if field_name == "backend" and value == "auto":
                continue
            if not isinstance(value, str):
                raise ConfigError(f"OptimConfig.{field_name} must be a string, got {value!r}")
            try:
                registry.resolve(value)
            except UnknownNameError as exc:
                raise ConfigError(f"OptimConfig.{field_name}: {exc}") from None

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (tuples become lists)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["scale_bounds"] = list(self.scale_bounds)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OptimConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"unknown OptimConfig key(s) {unknown}; valid keys: {', '.join(valid)}")
        return cls(**data)
