"""Named model sizes (UPSTREAM_SPEC §2.2) in a registry that plugins can extend.

Each entry is a zero-argument factory returning a ModelConfig. Vocabulary defaults to 32000; the CLI
replaces it with the tokenizer's vocabulary size. A third-party package adds presets through the
``vesper.presets`` entry-point group.
"""

from __future__ import annotations

from typing import Any, Callable

from vesper_core.config import ModelConfig
from vesper_core.registry import Registry

PRESETS: Registry[Callable[[], ModelConfig]] = Registry("model preset", "vesper.presets")


def _shape(layers: int, heads: int, hidden: int, intermediate: int, **extra: Any):
    def factory() -> ModelConfig:
        return ModelConfig(num_layers=layers, num_heads=heads, hidden_size=hidden,
                           intermediate_size=intermediate, **extra)

    return factory


def _moe(experts: int, top_k: int = 2) -> dict[str, Any]:
    return {"moe_enabled": True, "moe_num_experts": experts, "moe_top_k": top_k}


# A toy size for tests and smoke runs (not upstream).
PRESETS.register("nano", _shape(2, 2, 64, 256, flylora_rank=8, max_position_embeddings=1024))
PRESETS.register("tiny", _shape(6, 4, 256, 1024))
PRESETS.register("small", _shape(8, 8, 512, 2048))
PRESETS.register("medium", _shape(12, 12, 768, 3072))
PRESETS.register("large", _shape(24, 16, 1024, 4096))
PRESETS.register("xlarge", _shape(24, 16, 2048, 5504), aliases=("1b",))
PRESETS.register("tiny-moe", _shape(6, 4, 256, 1024, **_moe(4)))
PRESETS.register("medium-moe", _shape(12, 12, 768, 3072, **_moe(8)))
PRESETS.register("large-moe", _shape(24, 16, 1024, 4096, **_moe(16)))


def model_config(preset: str, **overrides: Any) -> ModelConfig:
    """The preset's config with ``overrides`` applied; unknown names raise UnknownNameError."""
    config = PRESETS.get(preset)()
    return config.replace(**overrides) if overrides else config
