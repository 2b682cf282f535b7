"""Learning-rate schedules: linear warm-up, then constant or cosine decay (UPSTREAM_SPEC §5.1)."""

from __future__ import annotations

import math

from vesper_core.errors import ConfigError

SCHEDULES = ("constant", "cosine")


def lr_at(
    step: int,
    *,
    base_lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    max_steps: int = 0,
    min_lr_ratio: float = 0.1,
) -> float:
    """LR for the optimizer step with 0-based index ``step`` (= number of completed steps).

    Warm-up is linear from ``base_lr / warmup_steps`` at step 0 to ``base_lr`` at step
    ``warmup_steps - 1`` (upstream started at exactly 0, wasting its first step). Then
    ``constant`` keeps ``base_lr``; ``cosine`` decays to ``min_lr_ratio * base_lr`` at
    ``max_steps`` and stays there. ``max_steps == 0`` means constant after warm-up.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown lr_schedule {schedule!r}; choices: {', '.join(SCHEDULES)}")
    if step < 0 or warmup_steps < 0 or max_steps < 0:
        raise ConfigError(
            f"step, warmup_steps and max_steps must be >= 0, got {step}, {warmup_steps}, {max_steps}"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant" or max_steps == 0:
        return base_lr
    min_lr = min_lr_ratio * base_lr
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(max_steps - warmup_steps, 1)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """Write ``lr`` into every param group (Velvet then applies its entropy scale once)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
