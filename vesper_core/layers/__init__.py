"""Building blocks of VesperLM: RoPE, attention, FlyLoRA, ERA, GLU FFN, Mixture of Experts."""

from vesper_core.layers.adapters import (AdapterConfig, AdapterLinear, AdapterReport, adapter_state_dict,
                                         attach_adapters, merge_adapters)
from vesper_core.layers.attention import Attention, LayerCache
from vesper_core.layers.era import ERA, ERA_BACKENDS, era_reference
from vesper_core.layers.ffn import GLUFeedForward
from vesper_core.layers.flylora import FlyLoRALinear
from vesper_core.layers.moe import MoEFeedForward
from vesper_core.layers.rope import RotaryEmbedding, apply_rotary

__all__ = [
    "AdapterConfig", "AdapterLinear", "AdapterReport", "adapter_state_dict", "attach_adapters", "merge_adapters",
    "Attention", "ERA", "ERA_BACKENDS", "FlyLoRALinear", "GLUFeedForward", "LayerCache",
    "MoEFeedForward", "RotaryEmbedding", "apply_rotary", "era_reference",
]
