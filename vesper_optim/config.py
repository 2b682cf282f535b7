"""OptimConfig: every optimizer and LR-schedule setting, validated on creation.

Errors name the command-line flag (``--entropy-target``), since that is what a user typed; a
YAML run file uses the same names (``entropy_target: 0.6``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vesper_core.errors import ConfigError, UnknownNameError
from vesper_optim import functional
from vesper_optim.schedules import SCHEDULES
from vesper_optim.signals import RULE_FIELDS, VELVET_RULES, VelvetRules, validate_rule_field

_FLAG_NAMES = {"name": "--optimizer"}
_PAIR_FIELDS = ("entropy_bounds", "perplexity_bounds", "beta1_range")
_LEGACY_KEYS = {"scale_bounds": ("entropy_bounds", "perplexity_bounds")}  # one clamp for both scales


def flag(field_name: str) -> str:
    """The command-line flag of an OptimConfig field."""
    return _FLAG_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


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
    """Velvet: keep the exact zeros of the sparse parameter groups (--sparse-params) at zero."""
    sparse_params: str = ""
    """Comma-separated shell patterns of parameter names that form the sparse group (e.g. 'layers.*.ffn.*.lora_*')."""
    backend: str = "auto"
    """Velvet kernel backend: "auto", "reference", "foreach", "fused", "triton", "cupy" or a plugin."""
    lr_schedule: str = "constant"
    """"constant" or "cosine" (to ``min_lr_ratio * lr`` at the run's last step)."""
    warmup_steps: int = 0
    """Linear warm-up steps (the first step already has ``lr / warmup_steps``)."""
    min_lr_ratio: float = 0.1
    """Final LR of the cosine schedule as a fraction of ``lr``."""

    # -- Velvet's adaptive rules: a preset, then per-field overrides (None: the preset's value) --
    velvet_rules: str = "default"
    """Preset of Velvet's rules (vesper_optim.signals.VELVET_RULES): default, upstream, upstream_rust, ..."""
    entropy_signal: str | None = None
    """What drives the entropy scale: "loss" or "logits" (the logits' mean normalised entropy)."""
    entropy_target: float | None = None
    """Normalised entropy at which the LR scale is 1 (upstream 0.5)."""
    entropy_bounds: tuple[float, float] | None = None
    """Clamp (lo, hi) of the LR scale s_e (upstream (0.7, 1.3))."""
    perplexity_target: float | None = None
    """Perplexity at which the beta1 scale is 1 (upstream 40)."""
    perplexity_bounds: tuple[float, float] | None = None
    """Clamp (lo, hi) of the beta1 scale s_p (upstream (0.7, 1.3))."""
    beta1_range: tuple[float, float] | None = None
    """Clamp (lo, hi) of the perplexity-guided beta1 (upstream (0.5, 0.999))."""
    max_log_perplexity: float | None = None
    """Cap on the loss inside exp() for the perplexity (upstream 20)."""
    lr_combine: str | None = None
    """How the LR scale combines with the schedule: "multiply" (upstream)."""
    hypergradient_rate: float | None = None
    """kappa of the hypergradient LR multiplier, 0 = off (default preset 0.05, upstream 0)."""
    hypergradient_bounds: tuple[float, float] | None = None
    """Clamp (lo, hi) of the hypergradient LR multiplier (default (0.25, 4))."""

    def __post_init__(self) -> None:
        _check(self.lr, "lr", lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0")
        for name in ("beta1", "beta2"):
            _check(getattr(self, name), name, lambda b: 0.0 <= b < 1.0, "a number in [0, 1)")
        _check(self.eps, "eps", lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0")
        _check(self.weight_decay, "weight_decay", lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0")
        _check(self.max_grad_norm, "max_grad_norm", lambda x: math.isfinite(x) and x >= 0,
               "a finite number >= 0 (0 disables clipping)")
        for name in ("entropy_adaptive", "perplexity_guided", "sparse_aware"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{flag(name)} must be true or false, got {getattr(self, name)!r}")
        self._check_names()
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"{flag('lr_schedule')}: unknown {self.lr_schedule!r}; choices: {', '.join(SCHEDULES)}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"{flag('warmup_steps')} must be an integer >= 0, got {self.warmup_steps!r}")
        _check(self.min_lr_ratio, "min_lr_ratio", lambda x: 0.0 <= x <= 1.0, "a number in [0, 1]")
        for name in RULE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                value = validate_rule_field(name, value, flag(name))
                setattr(self, name, value)  # pairs normalised to tuples

    def _check_names(self) -> None:
        from vesper_optim.registry import OPTIMIZERS  # registry imports this module

        for field_name, registry in (("name", OPTIMIZERS), ("backend", functional.BACKENDS),
                                     ("velvet_rules", VELVET_RULES)):
            value = getattr(self, field_name)
            if field_name == "backend" and value == "auto":
                continue
            if not isinstance(value, str):
                raise ConfigError(f"{flag(field_name)} must be a name, got {value!r}")
            try:
                registry.resolve(value)
            except UnknownNameError as exc:
                raise ConfigError(f"{flag(field_name)}: {exc}") from None

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def rules(self) -> VelvetRules:
        """Velvet's rules: the ``velvet_rules`` preset with every field set here (not None) replaced."""
        changes = {name: getattr(self, name) for name in RULE_FIELDS if getattr(self, name) is not None}
        return VelvetRules.preset(self.velvet_rules).replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (tuples become lists)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _PAIR_FIELDS:
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OptimConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error listing the valid ones.

        Reads older configs too: ``scale_bounds`` (one clamp for both scales) sets entropy_bounds
        and perplexity_bounds where those are not given.
        """
        data = dict(data)
        for old, new_names in _LEGACY_KEYS.items():
            if old in data:
                value = data.pop(old)
                for new in new_names:
                    if data.get(new) is None:
                        data[new] = value
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"unknown optimizer setting(s) {unknown}; valid: {', '.join(valid)}")
        return cls(**data)


def _check(value: Any, field_name: str, ok, need: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
        raise ConfigError(f"{flag(field_name)} must be {need}, got {value!r}")
