"""ModelConfig: the architecture of a VesperLM, validated on creation.

Field names follow the upstream config (UPSTREAM_SPEC §2.1). Three upstream fields are gone because
nothing ever read them: ``dropout`` (no dropout layer existed), ``use_flash_attn`` (we always call
``F.scaled_dot_product_attention``, which picks its own kernel) and ``flylora_sparsity`` (it only shaped
a random "sparse projection" that the forward pass never used, so we do not build it). ``from_dict``
accepts and ignores those three keys so that upstream config dicts still load.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from vesper_core.errors import ConfigError

#: Upstream keys that never had an effect; ``from_dict`` skips them instead of failing.
IGNORED_UPSTREAM_KEYS = frozenset({"dropout", "use_flash_attn", "flylora_sparsity"})

_INT_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
               "max_position_embeddings", "flylora_rank", "moe_num_experts", "moe_top_k")
_FLOAT_FIELDS = ("flylora_alpha", "era_gamma", "layer_norm_eps", "rope_theta",
                 "moe_aux_loss_weight", "init_std")
_BOOL_FIELDS = ("moe_enabled", "gradient_checkpointing")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture hyperparameters of VesperLM (defaults: the upstream ``medium`` shape)."""

    vocab_size: int = 32000
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 4096  # context window used by generation; RoPE has no hard limit
    flylora_rank: int = 16  # 0 = no LoRA branch (gate/up projections are plain linears)
    flylora_alpha: float = 32.0  # LoRA branch scaling = alpha / rank
    era_gamma: float = 0.1  # ERA(x) = GELU_tanh(x) + gamma * softplus(x)
    layer_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    moe_enabled: bool = False
    moe_num_experts: int = 8
    moe_top_k: int = 2
    moe_aux_loss_weight: float = 0.01
    gradient_checkpointing: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self._check_types()
        self._check_values()

    # -- validation --------------------------------------------------------------------
    def _check_types(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"model config: {name} must be an integer, got {value!r}")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"model config: {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"model config: {name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"model config: {name} must be true or false, got {value!r}")

    def _check_values(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings"):
            _require(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        for name in ("layer_norm_eps", "rope_theta", "init_std"):
            _require(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        _require(self.flylora_rank >= 0, "flylora_rank", self.flylora_rank,
                 "must be >= 0 (0 disables the LoRA branch)")
        _require(self.era_gamma >= 0, "era_gamma", self.era_gamma, "must be >= 0")
        _require(self.moe_aux_loss_weight >= 0, "moe_aux_loss_weight", self.moe_aux_loss_weight,
                 "must be >= 0")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model config: hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}; pick num_heads that divides hidden_size"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"model config: head_dim = hidden_size/num_heads = {self.head_dim} must be even "
                f"for RoPE; change hidden_size or num_heads"
            )
        if self.moe_enabled:
            _require(self.moe_num_experts >= 2, "moe_num_experts", self.moe_num_experts,
                     "must be >= 2 when moe_enabled")
            if not 1 <= self.moe_top_k <= self.moe_num_experts:
                raise ConfigError(
                    f"model config: moe_top_k={self.moe_top_k} must be between 1 and "
                    f"moe_num_experts={self.moe_num_experts}"
                )

    # -- derived values ----------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def num_params(self) -> int:
        """Exact trainable parameter count of VesperLM (tied LM head, no head bias; §2.11)."""
        V, H, L, I = self.vocab_size, self.hidden_size, self.num_layers, self.intermediate_size
        attention = 4 * (H * H + H)
        norms = 4 * H  # attention_norm + ffn_norm, weight and bias each
        ffn = 2 * _flylora_params(H, I, self.flylora_rank) + (I * H + H)
        if self.moe_enabled:
            N = self.moe_num_experts
            mixer = (H * N + N) + N * ffn
        else:
            mixer = ffn
        return V * H + L * (attention + norms + mixer) + 2 * H

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Build from a plain mapping; unknown keys are an error that lists the valid ones."""
        valid = cls.field_names()
        unknown = sorted(k for k in data if k not in valid and k not in IGNORED_UPSTREAM_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown model config key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(valid)}"
            )
        return cls(**{k: v for k, v in data.items() if k in valid})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes`` applied (validated again)."""
        valid = self.field_names()
        unknown = sorted(k for k in changes if k not in valid)
        if unknown:
            raise ConfigError(
                f"unknown model config key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(valid)}"
            )
        return dataclasses.replace(self, **changes)


def _flylora_params(in_features: int, out_features: int, rank: int) -> int:
    base = in_features * out_features + out_features
    if rank == 0:
        return base
    return base + (in_features * rank + rank) + (rank * out_features + out_features)


def _require(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"model config: {name}={value!r} {rule}")
