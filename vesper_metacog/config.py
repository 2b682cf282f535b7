"""MetacogConfig: the meta head's shape, its loss weight and the regulator's thresholds.

Defaults follow the upstream ``MetaHeadConfig`` / ``RegulatorConfig`` (UPSTREAM_SPEC §8) plus the fields
this edition adds: ``loss_weight`` (upstream defined no loss), ``regulation_threshold`` and
``planning_candidates`` (upstream's regulation and planning stages were no-ops) and ``detach_input``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from vesper_core.errors import ConfigError


@dataclass(kw_only=True)
class MetacogConfig:
    """Meta head and regulator settings; validated on creation."""

    hidden_size: int  # the LM's hidden size (ModelConfig.hidden_size)
    meta_hidden: int = 256  # width of the error branch
    num_error_types: int = 3  # factual, logical, incomplete (see targets.ERROR_TYPES)
    loss_weight: float = 0.1  # total loss = LM loss + loss_weight * metacog loss
    confidence_threshold: float = 0.85  # satisficing: mean span confidence above this may stop
    max_iterations: int = 3  # bound on refinement iterations (resamples of one span)
    enable_planning: bool = True
    enable_regulation: bool = True
    enable_termination: bool = True
    regulation_threshold: float = 0.3  # a position with confidence under this is re-sampled
    planning_candidates: int = 3  # continuations compared by the planning stage
    detach_input: bool = False  # head reads hidden states detached (no gradient into the LM)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "meta_hidden", "num_error_types", "max_iterations",
                     "planning_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"metacog config: {name} must be an integer, got {value!r}")
            if value < 1:
                raise ConfigError(f"metacog config: {name}={value} must be >= 1")
        for name in ("loss_weight", "confidence_threshold", "regulation_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"metacog config: {name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        if not self.loss_weight >= 0.0:  # also rejects nan
            raise ConfigError(f"metacog config: loss_weight={self.loss_weight} must be >= 0")
        for name in ("confidence_threshold", "regulation_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"metacog config: {name}={value} must be in [0, 1]")
        for name in ("enable_planning", "enable_regulation", "enable_termination", "detach_input"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"metacog config: {name} must be true or false, got {value!r}")

    @classmethod
    def for_model(cls, model_config: Any, **overrides: Any) -> "MetacogConfig":
        """A config sized for a model config (anything with ``hidden_size``)."""
        return cls(hidden_size=model_config.hidden_size, **overrides)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MetacogConfig":
        """Inverse of ``to_dict``; unknown keys raise ConfigError listing the valid ones."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"metacog config: unknown key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(cls.field_names())}"
            )
        if "hidden_size" not in data:
            raise ConfigError("metacog config: hidden_size is required")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "MetacogConfig":
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ConfigError(
                f"metacog config: unknown key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(self.field_names())}"
            )
        return dataclasses.replace(self, **changes)
